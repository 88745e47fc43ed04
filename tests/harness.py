"""Test harnesses: the proxy in a thread of its own, and a byte-recording relay.

Both run a private event loop in a background thread, so synchronous clients
(psycopg, psql and pgbench subprocesses) and asynchronous ones (asyncpg, in
the test's own loop) can use them alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgproxy.protocol import build
from pgproxy.proxy.loop import loop_factory
from pgproxy.proxy.observations import Observing
from pgproxy.proxy.server import ProxyServer, ProxySettings
from pgproxy.sink import Fanout, LogSink, RecordConsumer, Sink
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail, Record
from pgproxy.tracker.session import SessionTracker

if TYPE_CHECKING:
    from pgproxy.demo.embedded import EmbeddedPostgres

#: The ``pgproxy`` command as a subprocess runs it, from this interpreter's environment.
PGPROXY = [sys.executable, "-m", "pgproxy"]


class _LoopThread:
    """A background thread running one event loop."""

    def __init__(self, kind: str = "uvloop") -> None:
        factory, _ = loop_factory(kind)
        self.loop = factory()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(asyncio.sleep(0.05), timeout=5)  # pending close callbacks run before the loop stops
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class ProxyHarness:
    """pgproxy in front of ``upstream``, logging JSON lines into memory.

    Args:
        upstream: (host, port) of the real server.
        options: tracker options (detail level, caps, redaction...).
        loop: "uvloop" or "asyncio".
        consumers: sinks beside the log that get the same records (metrics).
        observing: when relayed chunks are shown to their trackers (proxy/observations.py).
        settings: overrides for :class:`ProxySettings` fields.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        options: TrackerOptions | None = None,
        loop: str = "uvloop",
        consumers: Sequence[RecordConsumer] = (),
        observing: Observing = Observing.ADAPTIVE,
        **settings: Any,
    ) -> None:
        self.stream = io.StringIO()
        self.sink = LogSink(stream=self.stream, fmt="json")
        settings.setdefault("shutdown_grace", 1.0)
        self.settings = ProxySettings(
            listen_host="127.0.0.1", listen_port=0, upstream_host=upstream[0], upstream_port=upstream[1], **settings
        )
        sink: Sink = Fanout(self.sink, consumers) if consumers else self.sink
        self.server = ProxyServer(self.settings, options or TrackerOptions(), sink, observing)
        self._loop = _LoopThread(loop)
        self._loop.call(self.server.start())
        self.host, self.port = self.server.sockets[0]

    def dsn(
        self, user: str = "postgres", database: str = "postgres", password: str | None = None, **params: str
    ) -> str:
        auth = user + (f":{password}" if password else "")
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}" + (f"?{query}" if query else "")

    def text(self) -> str:
        self.sink.flush()
        return self.stream.getvalue()

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Logged events, optionally only those named ``event`` whose fields equal ``match``."""
        return select_events(self.text(), event, match)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Poll until ``predicate()`` is truthy (events are written asynchronously)."""
        return wait_until(
            predicate, timeout, lambda: f"condition not met within {timeout}s; log tail:\n{self.text()[-3000:]}"
        )

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until every proxied session has ended and been logged."""
        self.wait_for(lambda: not self.server.sessions, timeout)
        self.sink.flush()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.call(self.server.close())
        self._loop.stop()
        self.sink.close()

    def __enter__(self) -> ProxyHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Recording:
    """Bytes of one relayed connection, per direction, and the chunks as they came."""

    client_sent: bytearray = field(default_factory=bytearray)
    server_sent: bytearray = field(default_factory=bytearray)
    chunks: list[tuple[str, bytes]] = field(default_factory=list)


class RecordingRelay:
    """A dumb TCP relay that records every byte it passes, for transparency proofs."""

    def __init__(self, target: tuple[str, int], keep_chunks: bool = False) -> None:
        self.target = target
        self.keep_chunks = keep_chunks
        self.recordings: list[Recording] = []
        self._loop = _LoopThread("asyncio")
        self._server: asyncio.AbstractServer = self._loop.call(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self.active = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rec = Recording()
        self.recordings.append(rec)
        self.active += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self.active -= 1
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, sink: bytearray, tag: str) -> None:
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    sink += data
                    if self.keep_chunks:
                        rec.chunks.append((tag, data))
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(
            pump(reader, up_writer, rec.client_sent, "F"), pump(up_reader, writer, rec.server_sent, "B")
        )
        self.active -= 1

    def wait_idle(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.active and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self._server.close()
        self._loop.stop()


@contextlib.contextmanager
def chain(
    upstream: tuple[str, int], options: TrackerOptions | None = None, **settings: Any
) -> Iterator[tuple[RecordingRelay, ProxyHarness, RecordingRelay]]:
    """client -> relay A -> pgproxy -> relay B -> server: A and B must record the same bytes."""
    near_server = RecordingRelay(upstream)
    proxy = ProxyHarness(("127.0.0.1", near_server.port), options, **settings)
    near_client = RecordingRelay((proxy.host, proxy.port))
    try:
        yield near_client, proxy, near_server
    finally:
        near_client.close()
        proxy.close()
        near_server.close()


def select_events(
    text: str, event: str | None, match: dict[str, Any], still_writing: bool = False
) -> list[dict[str, Any]]:
    """The JSON lines of ``text`` named ``event`` (any, if None) whose fields equal ``match``.

    ``still_writing``: the log belongs to a running process, so a line that is
    not (yet) whole JSON is passed over instead of failing the test.
    """
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if still_writing:
                continue
            raise
        if (event is None or record.get("event") == event) and all(record.get(k) == v for k, v in match.items()):
            out.append(record)
    return out


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    timed_out: Callable[[], str],
    gone: Callable[[], str | None] = lambda: None,
) -> Any:
    """Poll ``predicate`` every 20 ms until it is truthy, and return its value.

    Args:
        predicate: what is waited for (events are written asynchronously).
        timeout: seconds before failing with ``timed_out()``'s text.
        timed_out: the failure message, built only when it is needed (a log tail).
        gone: a reason when what is waited on can no longer change (its process
            exited); after one last look at ``predicate`` the wait fails with it.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        reason = gone()
        if reason is not None:
            result = predicate()
            if result:
                return result
            raise AssertionError(reason)
        if time.monotonic() > deadline:
            raise AssertionError(timed_out())
        time.sleep(0.02)


def wait_listening(port: int, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    """Wait until a ``pgproxy`` subprocess accepts TCP connections on ``port``; fail with its stderr if it exits."""

    def accepting() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_until(accepting, timeout, lambda: "pgproxy did not start listening", lambda: exited(proc))


def exited(proc: subprocess.Popen[str]) -> str | None:
    """None while ``proc`` runs; once it has exited, its status and stderr (for :func:`wait_until`'s ``gone``)."""
    if proc.poll() is None:
        return None
    return f"pgproxy exited ({proc.returncode}): " + (proc.stderr.read() if proc.stderr else "")


def wait_until_running(pg: EmbeddedPostgres, sql: str, wait_event: str | None = None) -> None:
    """Wait until the server runs ``sql`` (and, if given, waits on ``wait_event``), as pg_stat_activity shows."""
    condition = f"query = '{sql}' AND state = 'active'" + (f" AND wait_event = '{wait_event}'" if wait_event else "")
    deadline = time.monotonic() + 60
    while pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE {condition}").strip() == "0":
        assert time.monotonic() < deadline, f"the server never showed {condition}"
        time.sleep(0.05)


def recv_until_ready(sock: socket.socket) -> bytes:
    """What the server sends up to its ReadyForQuery (idle) ending a start-up; fails if the peer closes first."""
    data = b""
    while not data.endswith(b"Z\x00\x00\x00\x05I"):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


_TIMESTAMP = re.compile(r'"timestamp":"[^"]*"')


def json_lines(records: Sequence[Record], general: bool) -> list[str]:
    """``records`` as one JSON log sink writes them, timestamps blanked.

    ``general``: each through structlog's general path (``LogSink.log`` with
    the joined fields), the reference every fast path of the sink is held to;
    else through ``emit_all``, one sink for them all (so what it keeps between
    records, such as checked layouts and the last line's head, is exercised).
    """
    stream = io.StringIO()
    sink = LogSink(stream=stream, fmt="json")
    for record in records:
        if general:
            sink.log(record.level, record.event, **record.fields)
        else:
            sink.emit_all([record])
    sink.close()
    return [_TIMESTAMP.sub('"timestamp":"T"', line) for line in stream.getvalue().splitlines()]


def logged_in_tracker() -> SessionTracker:
    """A query-detail tracker of a session past its login (pgbench's start-up, a steady clock)."""
    tracker = SessionTracker(
        "s1",
        TrackerOptions(detail=Detail.QUERY),
        client=("127.0.0.1", 40000),
        server=("127.0.0.1", 5432),
        clock=itertools.count(0.0, 0.0007).__next__,
    )
    tracker.frontend(build.startup_message({"user": "bench", "database": "bench", "application_name": "pgbench"}))
    tracker.backend(build.authentication_ok() + build.backend_key_data(4242) + build.ready_for_query())
    return tracker
