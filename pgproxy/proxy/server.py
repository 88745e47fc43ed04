"""Server-wide state: the listener, the set of sessions, counters, shutdown.

One object owns everything that outlives a session (uvicorn's ``ServerState``
habit): the connection limit, cancel forwarding, the graceful drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import resource
import secrets
import ssl
import time
from collections import Counter
from dataclasses import dataclass

from pgproxy.protocol.build import error_response
from pgproxy.proxy.session import ClientSession
from pgproxy.proxy.tls import certificate_der, client_tls_context, upstream_tls
from pgproxy.sink import LogSink
from pgproxy.tracker.options import TrackerOptions


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
    write_buffer_high: int = 1 << 20

    @property
    def write_buffer_low(self) -> int:
        return self.write_buffer_high // 4


#: Descriptors kept free for everything that is not a session: the listening
#: sockets, the log file, cancel connections in flight, the loop's own.
_FD_RESERVE = 32


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

    Raises:
        TLSConfigError: a TLS certificate, key or CA file cannot be used.
    """

    def __init__(self, config: ProxySettings, tracker_options: TrackerOptions, sink: LogSink) -> None:
        self.config = config
        self.tracker_options = tracker_options
        self.sink = sink
        self.sessions: set[ClientSession] = set()
        self.counters: Counter[str] = Counter()
        self.started = time.monotonic()
        self._server: asyncio.Server | None = None
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(2)
        self._cancel_tasks: set[asyncio.Task[None]] = set()
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
        """Short, unique within this process, and not guessable across restarts."""
        return f"{self._id_prefix}{next(self._ids):04x}"

    @property
    def sockets(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        self.fd_limit = raise_fd_limit()
        if self.fd_limit != resource.RLIM_INFINITY:
            self._fd_session_cap = max(1, (self.fd_limit - _open_fds() - _FD_RESERVE) // 2)
        self._server = await loop.create_server(
            lambda: ClientSession(self),
            cfg.listen_host,
            cfg.listen_port,
            reuse_address=True,
            backlog=1024,
        )

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

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
        self.sessions.add(session)
        self._idle.clear()

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
        assert session.client is not None
        session.client.write(error_response("FATAL", "53300", f"pgproxy: too many connections ({why})"))
        session._close_client(kind)

    def session_closed(self, session: ClientSession) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._idle.set()

    def forward_cancel(self, session: ClientSession, packet: bytes, reason: str = "client_request") -> None:
        """Send a CancelRequest to the upstream on a connection of its own."""
        pid = int.from_bytes(packet[8:12], "big") if len(packet) >= 12 else None
        target = next(
            (
                s.session_id
                for s in self.sessions
                if s.tracker is not None and s.tracker.context.get("backend_pid") == pid
            ),
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
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(cfg.upstream_host, cfg.upstream_port), cfg.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            self.sink.log("error", "cancel.failed", reason=str(exc) or type(exc).__name__, **fields)
            return
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

    async def close(self) -> None:
        """Stop accepting, let busy sessions finish (up to the grace period), abort the rest."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + self.config.shutdown_grace
        while self.sessions and time.monotonic() < deadline:
            for session in list(self.sessions):
                if session.idle:
                    session.abort()
            if not self.sessions:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 0.05)
        for session in list(self.sessions):
            session.abort()
        # Let the aborted transports run their connection_lost callbacks (and
        # log session.ended) before the loop may be closed under them.
        for _ in range(3):
            await asyncio.sleep(0)
        if self._cancel_tasks:
            await asyncio.gather(*self._cancel_tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
