"""Server-wide state: the listeners, the set of sessions, counters, the drain.

One object owns everything that outlives a session (uvicorn's ``ServerState``
habit): the connection limit, cancel forwarding, the graceful drain. When to
drain (signals, delays, exit codes) is :mod:`pgproxy.proxy.lifecycle`'s call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import ssl
import stat
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

from pgproxy.protocol.build import error_response
from pgproxy.proxy.address import host_port, socket_address
from pgproxy.proxy.deadlines import Deadlines
from pgproxy.proxy.hangup import HANGUP_CHECK_INTERVAL
from pgproxy.proxy.observations import Observations, Observing
from pgproxy.proxy.session import ClientSession, limit_socket_buffers
from pgproxy.proxy.tls import (
    certificate_der,
    client_tls_context,
    describe_error,
    open_upstream_stream,
    upstream_tls,
)
from pgproxy.proxy.workers import current_worker
from pgproxy.sink import Sink
from pgproxy.tracker.options import TrackerOptions

#: A listening address: (host, port) for TCP, or the path of a Unix-domain socket.
ListenAddress = tuple[str, int] | str


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """What the I/O layer needs to know (built from :class:`pgproxy.config.Config`)."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 6432
    upstream_host: str = "127.0.0.1"
    upstream_port: int = 5432
    connect_timeout: float = 5.0
    startup_timeout: float = 60.0
    tls_client_mode: str = "refuse"
    tls_client_cert_file: str = ""
    tls_client_key_file: str = ""
    tls_client_ca_file: str = ""
    tls_upstream_mode: str = "disable"
    tls_upstream_ca_file: str = ""
    tls_upstream_cert_file: str = ""
    tls_upstream_key_file: str = ""
    tls_upstream_server_name: str = ""
    max_connections: int = 0
    shutdown_grace: float = 10.0
    #: asyncio's own default (64 KiB, resuming at 16 KiB): a transparent proxy
    #: must not let the server run further ahead of a slow client than a
    #: direct connection would (a COPY cancelled after one row, issue 7).
    write_buffer_high: int = 64 << 10
    #: SO_SNDBUF/SO_RCVBUF of the proxy's sockets (0 = the kernel's autotuning).
    socket_buffer: int = 128 << 10
    #: Every address to listen on; empty means (listen_host, listen_port) alone.
    listen_addresses: tuple[ListenAddress, ...] = ()

    @property
    def addresses(self) -> tuple[ListenAddress, ...]:
        return self.listen_addresses or ((self.listen_host, self.listen_port),)

    @property
    def write_buffer_low(self) -> int:
        return self.write_buffer_high // 4


#: Descriptors kept free for everything that is not a session: the listening
#: sockets, the log file, cancel connections in flight, the loop's own.
_FD_RESERVE: Final = 32

#: "00" to "ff": a session id's counter as two table lookups (see ProxyServer.new_session_id).
_HEX2: Final = tuple(f"{n:02x}" for n in range(256))


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as PgBouncer advises); returns the soft limit now in force.

    Each session holds two descriptors (client and upstream); the soft limit
    is often 1,024 while the hard one allows far more.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


class ProxyServer:
    """Accepts clients, dials the upstream for each, and tracks every session.

    Args:
        config: listening and upstream settings.
        tracker_options: what each session's tracker logs.
        sink: where records go.
        observing: when relayed chunks are shown to their trackers (proxy/observations.py); tests change it.

    Raises:
        TLSConfigError: a TLS certificate, key or CA file cannot be used.
    """

    def __init__(
        self,
        config: ProxySettings,
        tracker_options: TrackerOptions,
        sink: Sink,
        observing: Observing = Observing.ADAPTIVE,
    ) -> None:
        self.config = config
        self.tracker_options = tracker_options
        self.sink = sink
        #: The relayed chunks of this turn of the loop, shown to their trackers at its end (proxy/observations.py).
        self.observations = Observations(sink, observing)
        self.sessions: set[ClientSession] = set()
        self.counters: Counter[str] = Counter()
        self.started = time.monotonic()
        #: Set once the listeners are closed: sessions end as soon as they are idle.
        self.draining = False
        self._servers: list[asyncio.Server] = []
        self._unix_paths: list[str] = []
        self._last_id = 0  # the counter of the last session id handed out
        worker = current_worker()  # several processes: ids unique across them, and a shared port
        self._id_prefix = worker.session_prefix if worker is not None else secrets.token_hex(2)
        self._reuse_port = worker is not None
        self._worker_index = worker.index if worker is not None else 0
        self._cancel_tasks: set[asyncio.Task[None]] = set()
        #: Sessions logging in (``proxy.startup_timeout``) and dialling the upstream (``proxy.connect_timeout``).
        self.startup_deadlines: Deadlines[ClientSession] = Deadlines(
            config.startup_timeout, ClientSession.startup_timed_out
        )
        self.connect_deadlines: Deadlines[ClientSession] = Deadlines(
            config.connect_timeout, ClientSession.connect_timed_out
        )
        #: Sessions whose client is not read while the server's queue is full: is it still there? (proxy/hangup.py)
        self.hangup_checks: Deadlines[ClientSession] = Deadlines(HANGUP_CHECK_INTERVAL, ClientSession.check_hangup)
        #: The loop serving the listeners (set by start()), so that sessions need not look it up.
        self.loop: asyncio.AbstractEventLoop
        self._idle = asyncio.Event()
        self._idle.set()
        self.fd_limit = 0
        self._fd_session_cap = 0  # sessions that fit in the descriptor limit (0 = unknown)
        self._saturated: str | None = None  # the limit refusing clients now, logged once per episode
        self._refused_while_saturated = 0
        self.upstream_tls = upstream_tls(
            config.tls_upstream_mode,
            config.upstream_host,
            ca_file=config.tls_upstream_ca_file,
            cert_file=config.tls_upstream_cert_file,
            key_file=config.tls_upstream_key_file,
            server_name=config.tls_upstream_server_name,
        )
        # Asked on every new connection: plain attributes, where the settings' and the
        # mode's properties cost a Python call each (cProfile, pgbench -C).
        self.upstream_tls_asks = self.upstream_tls.mode.asks
        self.write_buffer_high = config.write_buffer_high
        self.write_buffer_low = config.write_buffer_low
        self.client_tls_context: ssl.SSLContext | None = None
        self.client_certificate_der: bytes | None = None
        self.reload_tls()

    def reload_tls(self) -> None:
        """(Re)load pgproxy's own certificate and key for ``terminate`` mode (call on SIGHUP).

        New sessions use the new files; sessions already encrypted keep theirs.
        On error the previous certificate stays in use and the error is raised.

        Raises:
            TLSConfigError: the files cannot be used.
        """
        cfg = self.config
        if cfg.tls_client_mode != "terminate":
            return
        self.client_tls_context = client_tls_context(
            cfg.tls_client_cert_file, cfg.tls_client_key_file, cfg.tls_client_ca_file
        )
        self.client_certificate_der = certificate_der(cfg.tls_client_cert_file)

    def new_session_id(self) -> str:
        """Short, unique within this process, and not guessable across restarts.

        The counter in four hex digits (more past 65535) is the prefix and two
        table lookups: formatted (``f"{n:04x}"`` of ``next(itertools.count)``) it
        cost ~5k instructions a connection compiled, against ~1k (callgrind).
        """
        n = self._last_id = self._last_id + 1
        if n < 0x10000:
            return self._id_prefix + _HEX2[n >> 8] + _HEX2[n & 0xFF]
        return f"{self._id_prefix}{n:04x}"

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """(host, port) of every TCP listening socket (port 0 resolved)."""
        return [
            s.getsockname()[:2]
            for server in self._servers
            for s in _sockets(server)
            if isinstance(s.getsockname(), tuple)
        ]

    @property
    def addresses(self) -> list[str]:
        """Every listening address as text: ``host:port`` (``[v6]:port``) or a socket path."""
        return [socket_address(sock.getsockname()) for server in self._servers for sock in _sockets(server)]

    @property
    def at_connection_limit(self) -> bool:
        """A new client would be refused now (max_connections, or the file-descriptor cap)."""
        held, limit = len(self.sessions), self.config.max_connections
        return bool(limit and held >= limit) or bool(self._fd_session_cap and held >= self._fd_session_cap)

    async def start(self) -> None:
        """Listen on every configured address; OSError names the address that failed."""
        loop = self.loop = asyncio.get_running_loop()
        self.fd_limit = raise_fd_limit()
        if self.fd_limit != resource.RLIM_INFINITY:
            self._fd_session_cap = max(1, (self.fd_limit - _open_fds() - _FD_RESERVE) // 2)
        try:
            for address in self.config.addresses:
                if isinstance(address, str):
                    if self._worker_index:
                        continue  # a Unix socket is one file: with proxy.workers, the first worker serves it
                    _remove_stale_socket(address)
                    # Unix-domain sockets do not inherit the listener's buffer sizes: each session caps its own.
                    server = await loop.create_unix_server(
                        lambda: ClientSession(self, cap_buffers=True), address, backlog=1024
                    )
                    self._unix_paths.append(address)
                    # Access is governed by the directory (a shared volume), as for
                    # PostgreSQL's default unix_socket_permissions = 0777.
                    os.chmod(address, 0o777)
                else:
                    host, port = address
                    server = await loop.create_server(
                        lambda: ClientSession(self),
                        host,
                        port,
                        reuse_address=True,
                        reuse_port=self._reuse_port or None,
                        backlog=1024,
                        start_serving=False,
                    )
                    # Accepted TCP sockets inherit the listener's buffer sizes: capped
                    # here once, before listen(), rather than twice per session.
                    for sock in _sockets(server):
                        limit_socket_buffers(sock, self.config.socket_buffer)
                    await server.start_serving()
                self._servers.append(server)
        except OSError as exc:
            self.stop_accepting()
            where = address if isinstance(address, str) else host_port(*address)
            raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror or exc}") from exc

    async def serve_forever(self) -> None:
        await asyncio.gather(*(server.serve_forever() for server in self._servers))

    # ------------------------------------------------------------------ sessions

    def session_opened(self, session: ClientSession) -> None:
        self.counters["sessions_accepted"] += 1
        limit = self.config.max_connections
        held = len(self.sessions)
        if limit and held >= limit:
            self._reject(session, "max_connections", limit, f"max_connections = {limit}")
            return
        if self._fd_session_cap and held >= self._fd_session_cap:
            # Refuse with an error while a descriptor is still at hand: past the
            # limit, accept() itself fails and the client only sees a reset.
            self._reject(
                session,
                "file_descriptors",
                self._fd_session_cap,
                f"the file descriptor limit ({self.fd_limit}) allows {self._fd_session_cap} sessions",
            )
            return
        if self._saturated is not None:
            self.sink.log("info", "proxy.limit_cleared", limit=self._saturated, refused=self._refused_while_saturated)
            self._saturated = None
        if not self.sessions:  # else cleared already (Event.clear is a Python call)
            self._idle.clear()
        self.sessions.add(session)

    def _reject(self, session: ClientSession, kind: str, value: int, why: str) -> None:
        """Refuse a client over a limit: FATAL 53300 to it, and one ``proxy.limit_reached`` per episode."""
        self.counters["sessions_rejected"] += 1
        if self._saturated != kind:
            self._saturated = kind
            self._refused_while_saturated = 0
            self.sink.log(
                "warning", "proxy.limit_reached", limit=kind, value=value, sessions=len(self.sessions), reason=why
            )
        self._refused_while_saturated += 1
        self.sink.log("warning", "session.rejected", session=session.session_id, reason=kind, limit=value)
        session.refuse(error_response("FATAL", "53300", f"pgproxy: too many connections ({why})"), kind)

    def session_closed(self, session: ClientSession) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._idle.set()

    def forward_cancel(self, session: ClientSession, packet: bytes, reason: str = "client_request") -> None:
        """Send a CancelRequest to the upstream on a connection of its own."""
        pid = int.from_bytes(packet[8:12], "big") if len(packet) >= 12 else None
        target = next(
            (s.session_id for s in self.sessions if s.tracker is not None and s.tracker.backend_pid == pid),
            None,
        )
        if reason != "client_request":
            target = session.session_id
        task = asyncio.get_running_loop().create_task(self._send_cancel(packet, pid, target, session.peer, reason))
        self._cancel_tasks.add(task)
        task.add_done_callback(self._cancel_tasks.discard)

    async def _send_cancel(
        self, packet: bytes, pid: int | None, target: str | None, peer: tuple[str, int] | None, reason: str
    ) -> None:
        cfg = self.config
        fields = {
            "backend_pid": pid,
            "target_session": target,
            "client.address": peer[0] if peer else None,
            "reason": reason,
        }
        try:
            _reader, writer, tls_version = await asyncio.wait_for(
                open_upstream_stream(cfg.upstream_host, cfg.upstream_port, self.upstream_tls), cfg.connect_timeout
            )
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:  # ssl.SSLError is an OSError
            reason = describe_error(exc) if isinstance(exc, ssl.SSLError) else str(exc) or type(exc).__name__
            self.sink.log("error", "cancel.failed", reason=reason, **fields)
            return
        if tls_version is not None:
            fields["tls.protocol.version"] = tls_version
        try:
            writer.write(packet)  # the secret key travels, unlogged
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        self.counters["cancels_forwarded"] += 1
        self.sink.log("info", "cancel.forwarded", **fields)

    # ------------------------------------------------------------------ shutdown

    def reconfigure(self, tracker_options: TrackerOptions) -> None:
        """New options for what sessions log (a reload): sessions to come, and open ones at a quiet point."""
        self.tracker_options = tracker_options
        for session in self.sessions:
            session.adopt(tracker_options)

    def stop_accepting(self) -> None:
        """Close every listener (and remove Unix sockets); sessions carry on."""
        for server in self._servers:
            server.close()
        for path in self._unix_paths:
            _remove_stale_socket(path)
        self._unix_paths.clear()

    def begin_drain(self) -> None:
        """From now on sessions end as soon as they are idle; the idle ones end now."""
        self.draining = True
        for session in list(self.sessions):
            if session.idle:
                session.shut_down()

    async def wait_empty(self, timeout: float) -> bool:
        """Wait until every session has ended, at most ``timeout`` seconds; True if none is left."""
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), max(timeout, 0.0))
        return not self.sessions

    def shut_down_all(self) -> None:
        """Time is up: every remaining session gets the administrator-shutdown error and is closed."""
        self.draining = True
        for session in list(self.sessions):
            session.shut_down()

    def abort_all(self) -> None:
        """End every session at once, without goodbyes (a second signal)."""
        for session in list(self.sessions):
            session.abort()

    async def finish(self) -> None:
        """Let closing transports run their callbacks, cancels go out and listeners wind down."""
        # connection_lost callbacks log session.ended; the loop must not be closed under them.
        for _ in range(3):
            await asyncio.sleep(0)
        if self._cancel_tasks:
            await asyncio.gather(*self._cancel_tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self.startup_deadlines.close()
        self.connect_deadlines.close()
        self.hangup_checks.close()
        self.observations.flush()  # every session ended flushed them; nothing relayed goes unshown

    async def close(self, grace: float | None = None) -> None:
        """The whole graceful stop in one call: stop accepting, drain, end the rest.

        Idle sessions end at once, busy ones (a statement running, a
        transaction open) get up to ``grace`` seconds (default: the
        configured ``shutdown_grace``) and then the same treatment; sessions
        that still do not close (a client not reading) are aborted.
        """
        grace = self.config.shutdown_grace if grace is None else grace
        self.stop_accepting()
        self.begin_drain()
        if not await self.wait_empty(grace):
            self.shut_down_all()
            if not await self.wait_empty(_CLOSE_TIMEOUT):
                self.abort_all()
        await self.finish()


#: Seconds closing sessions get to flush their last bytes before they are aborted.
_CLOSE_TIMEOUT: Final = 2.0


def _sockets(server: Any) -> list[Any]:
    """A listener's sockets: uvloop's ``Server.sockets`` is a list where typeshed declares a tuple,
    which the compiled build (mypyc) would check, and refuse."""
    return list(server.sockets)


def _remove_stale_socket(path: str) -> None:
    """Remove a Unix socket left by an earlier run (never any other kind of file)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
