"""The proxy changes nothing a client or server would notice: buffering as a plain forwarder, cancels only for vanished clients."""

from __future__ import annotations

import gc
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgproxy.demo.embedded import EmbeddedPostgres
from pgproxy.protocol.build import query as query_message
from pgproxy.protocol.build import startup_message
from pgproxy.proxy import session as session_module
from pgproxy.proxy.hangup import peer_hung_up
from pgproxy.proxy.server import ProxySettings
from pgproxy.proxy.session import OBSERVE_SLICE, ClientSession, UpstreamSide
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail
from pgproxy.tracker.session import SessionTracker
from tests.harness import ProxyHarness, recv_until_ready

COPY_OUT = "COPY (SELECT generate_series(1, 1000000)) TO STDOUT"


def _cancelled_copy_statuses(dsn: str, runs: int = 6) -> list[str]:
    """Start a big COPY OUT, read one chunk, leave the block with an exception (psycopg cancels)."""
    statuses = []
    with psycopg.connect(dsn) as conn:
        for _ in range(runs):
            cur = conn.cursor()
            with pytest.raises(RuntimeError), cur.copy(COPY_OUT) as copy:
                assert copy.read()
                raise RuntimeError("the application gives up after one row")
            statuses.append(conn.info.transaction_status.name)
            conn.rollback()
    return statuses


def test_buffers_default_to_what_a_plain_forwarder_holds() -> None:
    assert ProxySettings().write_buffer_high == 64 * 1024  # asyncio's defaults
    assert ProxySettings().write_buffer_low == 16 * 1024
    assert ProxySettings().socket_buffer == 128 * 1024


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_proxy_sockets_have_capped_kernel_buffers_and_nodelay(pg: EmbeddedPostgres, loop: str, tmp_path: Path) -> None:
    """TCP clients inherit the listener's caps, Unix-socket clients get their own; the loop sets TCP_NODELAY.

    32 KiB: below every kernel default (TCP's 128 KiB, Unix sockets' 208 KiB), so an uncapped socket shows.
    """
    unix_path = str(tmp_path / ".s.PGSQL.5432")
    cap = 32 * 1024
    with ProxyHarness(
        ("127.0.0.1", pg.port),
        TrackerOptions(),
        loop=loop,
        listen_addresses=(("127.0.0.1", 0), unix_path),
        socket_buffer=cap,
    ) as proxy:
        for dsn in (proxy.dsn(sslmode="disable"), f"host={tmp_path} port=5432 user=postgres dbname=postgres"):
            with psycopg.connect(dsn):
                (session,) = proxy.server.sessions
                assert session.client is not None and session.upstream is not None
                for transport in (session.client, session.upstream.transport):
                    sock = transport.get_extra_info("socket")
                    # Linux doubles the value set, for its bookkeeping
                    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) <= 2 * cap
                    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * cap
                    if sock.family != socket.AF_UNIX:
                        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            proxy.wait_idle()


@pytest.mark.slow
@pytest.mark.parametrize("detail", [Detail.CONNECTION, Detail.QUERY, Detail.MESSAGE], ids=lambda d: d.name.lower())
def test_cancelled_copy_out_behaves_as_direct(pg: EmbeddedPostgres, detail: Detail) -> None:
    """The cancel reaches the server while it is still copying, as it does direct: the transaction is in error."""
    direct = _cancelled_copy_statuses(pg.dsn())
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(detail=detail)) as proxy:
        proxied = _cancelled_copy_statuses(proxy.dsn(sslmode="disable"))
    # Direct, the cancel finds the server still copying (the scenario is meaningful)...
    assert direct.count("INERROR") >= 4, direct
    # ... and through pgproxy at least as often (before: the COPY often finished first).
    assert proxied.count("INERROR") >= direct.count("INERROR"), (proxied, direct)


@pytest.mark.parametrize("detail", [Detail.CONNECTION, Detail.QUERY], ids=["connection", "query"])
def test_server_dropping_a_busy_session_sends_no_cancel(pg: EmbeddedPostgres, detail: Detail) -> None:
    """pg_terminate_backend (or a restart) ends the session from the server's side: nothing to cancel."""
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(detail=detail)) as proxy:
        conn = psycopg.connect(proxy.dsn(sslmode="disable", application_name="dropped"), autocommit=True)
        pid = conn.info.backend_pid
        errors: list[BaseException] = []

        def sleep() -> None:
            try:
                conn.execute("SELECT pg_sleep(30)")
            except psycopg.Error as exc:
                errors.append(exc)

        thread = threading.Thread(target=sleep)
        thread.start()
        proxy.wait_for(
            lambda: (
                pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'active'").strip() == "1"
            )
        )
        pg.psql(f"SELECT pg_terminate_backend({pid})")
        thread.join(30)
        conn.close()
        assert errors  # the client saw the server's FATAL
        proxy.wait_idle()
        (ended,) = proxy.events("session.ended", application_name="dropped")
        assert ended["reason"] in ("server_closed", "server_error")
        assert not proxy.server._cancel_tasks  # scheduled before session.ended, had there been one
        assert not proxy.events("cancel.forwarded") and not proxy.events("cancel.failed")


def test_a_flood_is_shown_to_the_tracker_in_slices(pg: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read can bring 256 KiB of tiny messages: the tracker sees it a slice at a time, with every byte counted."""
    seen: list[int] = []
    original = SessionTracker.frontend

    def recording(self: SessionTracker, data: bytes, now: float | None = None) -> Any:
        seen.append(len(data))
        return original(self, data, now)

    monkeypatch.setattr(SessionTracker, "frontend", recording)
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions()) as proxy:
        with socket.create_connection((proxy.host, proxy.port)) as sock:
            sock.sendall(startup_message({"user": "postgres", "database": "postgres", "application_name": "flood"}))
            recv_until_ready(sock)
            flood = query_message("SELECT 1") * 40_000
            sock.sendall(flood)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(1 << 20):  # read every answer: the server runs all of them
                pass
        proxy.wait_idle(timeout=120)
        (ended,) = proxy.events("session.ended", application_name="flood")
    assert max(seen) <= OBSERVE_SLICE
    assert sum(seen) == ended["bytes_from_client"]
    assert ended.get("undecoded_bytes", 0) == 0


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("detail", [Detail.CONNECTION, Detail.QUERY])
def test_a_plaintext_session_past_start_up_relays_the_fast_way(pg: EmbeddedPostgres, detail: Detail, loop: str) -> None:
    """Every plaintext test then exercises ClientSession's fast way; the TLS tests, its general one.

    The server's chunks then reach the session straight from the transport
    (UpstreamSide.relay_directly), on either loop: the second query's answer
    came that way.
    """
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(detail=detail), loop=loop) as proxy:
        with psycopg.connect(proxy.dsn(sslmode="disable")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            (session,) = proxy.server.sessions
            assert session._relay_plain and session.tracker is not None and session.tracker.ready
            assert session.upstream is not None and session.upstream.direct
            assert session._stamped is (detail is not Detail.CONNECTION)  # connection detail only counts
            assert conn.execute("SELECT 2").fetchone() == (2,)
            proxy.wait_for(lambda: not session.tracker.request_outstanding)  # the answer is forwarded, then shown
            session.adopt(TrackerOptions(detail=Detail.MESSAGE))  # quiet: adopted at once, still plain
            assert session._relay_plain and session._stamped
        proxy.wait_idle()
        (ended,) = proxy.events("session.ended")
        assert ended["reason"] == "client_terminated"


def _no_backend(pg: EmbeddedPostgres, application_name: str) -> bool:
    """True once the server has no backend left for ``application_name`` (its connection was released)."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application_name,)
        ).fetchone()
        return row is not None and row[0] == 0


def test_a_client_that_leaves_without_reading_releases_its_server_connection(pg: EmbeddedPostgres) -> None:
    """The client stopped reading (the server's answers paused), then vanished: the server connection still ends.

    Closing the upstream waits for the requests queued towards the server to
    be written; the server only reads them once its answers are read, which
    nothing may hold back any more.
    """
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions()) as proxy:
        sock = socket.create_connection((proxy.host, proxy.port))
        sock.sendall(startup_message({"user": "postgres", "database": "postgres", "application_name": "gone"}))
        recv_until_ready(sock)
        (session,) = proxy.server.sessions
        # Large answers nobody reads, and more requests than the server reads meanwhile.
        sock.sendall(query_message("SELECT repeat('x', 200000) FROM generate_series(1, 20)") * 400)
        proxy.wait_for(lambda: "client_buffer_full" in session.upstream_reads.reasons)
        sock.close()

        proxy.wait_for(lambda: _no_backend(pg, "gone"), timeout=60)


@pytest.mark.slow  # a 5 s sleep, then 400 MB of answers read for nobody
def test_a_client_that_vanishes_with_requests_queued_releases_its_server_connection(pg: EmbeddedPostgres) -> None:
    """Requests queued towards a busy server when the client vanishes are delivered, then the connection closes.

    The queued requests have large answers: closing the upstream the plain
    way stops reading them, the server blocks writing its answers and never
    reads the rest, and the backend stays for ever. The session is only let
    go (wait_idle) once its server connection is.
    """
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions()) as proxy:
        sock = socket.create_connection((proxy.host, proxy.port))
        sock.sendall(startup_message({"user": "postgres", "database": "postgres", "application_name": "vanished"}))
        recv_until_ready(sock)
        (session,) = proxy.server.sessions
        upstream = session.upstream
        assert upstream is not None and upstream.transport is not None
        sock.sendall(query_message("SELECT pg_sleep(5)") + query_message("SELECT repeat('x', 20000)") * 20_000)
        # The server sleeps: the proxy holds the requests it cannot write yet.
        proxy.wait_for(lambda: upstream.transport is not None and upstream.transport.get_write_buffer_size() > 0)
        # The proxy stopped reading the client while the server's queue is full (flow control). It sees
        # the hang-up while the sleep runs if the FIN fits behind the rest in its socket buffer
        # (proxy/hangup.py), else once the sleep is over: either way requests are still queued then.
        sock.close()

        proxy.wait_for(lambda: _no_backend(pg, "vanished"), timeout=60)
        proxy.wait_idle()
        assert upstream.gone
        (ended,) = proxy.events("session.ended", application_name="vanished")
        assert ended["reason"] in ("client_closed", "client_error")


def _fill_the_servers_queue(proxy: ProxyHarness, session: ClientSession, sock: socket.socket, request: bytes) -> int:
    """Send ``request`` a chunk at a time until the proxy stops reading the client (the server's queue is full).

    Whatever the client sent before must already be counted in the session's
    ``bytes_from_client``. After each chunk, wait until the proxy forwarded all of it or paused: what
    was sent after the pause (at most a chunk) then sits in the proxy's own
    socket buffer, so a FIN that follows reaches the proxy's kernel. Returns
    the bytes sent.
    """
    chunk = request * (32 * 1024 // len(request))
    sent = 0
    before = session.bytes_from_client

    def paused() -> bool:
        return "server_buffer_full" in session.client_reads.reasons

    def paused_or_forwarded() -> bool:
        return paused() or session.bytes_from_client == before + sent

    while not paused():
        sock.sendall(chunk)
        sent += len(chunk)
        proxy.wait_for(paused_or_forwarded)
    return sent


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("leave", ["close", "reset"])
def test_a_client_that_hangs_up_while_not_read_has_its_statement_cancelled(
    pg: EmbeddedPostgres, leave: str, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy stopped reading the client (flow control) when it hung up: the hang-up is still seen, the statement cancelled.

    Before, the proxy saw the FIN or the reset only once the server's queue had
    room, i.e. after the statement ran to its end for nobody (proxy/hangup.py).
    While the client stays, the checks leave it paused. Its last requests (in
    the proxy's socket buffer) are forwarded, as from any client that closes:
    after a reset too, the bytes already received are read before the error.
    """
    checks: list[bool] = []

    def counted_check(transport: Any) -> bool:
        checks.append(peer_hung_up(transport))
        return checks[-1]

    monkeypatch.setattr(session_module, "peer_hung_up", counted_check)
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(detail=Detail.QUERY), loop=loop) as proxy:
        sock = socket.create_connection((proxy.host, proxy.port))
        hello = startup_message({"user": "postgres", "database": "postgres", "application_name": f"hangs-up-{leave}"})
        sock.sendall(hello)
        recv_until_ready(sock)
        (session,) = proxy.server.sessions
        sleep = query_message("SELECT pg_sleep(600)")
        start = session.bytes_from_client
        sock.sendall(sleep)
        proxy.wait_for(lambda: session.bytes_from_client == start + len(sleep))
        # Requests of a kilobyte, so that the queue fills with few statements to run after the cancel.
        sent = _fill_the_servers_queue(proxy, session, sock, query_message("SELECT 1 -- " + "x" * 1000))
        proxy.wait_for(lambda: len(checks) >= 2)  # a second apart: the client is there, still not read
        assert not any(checks) and "server_buffer_full" in session.client_reads.reasons
        assert not proxy.events("cancel.forwarded")
        if leave == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

        (cancel,) = proxy.wait_for(lambda: proxy.events("cancel.forwarded"))
        assert cancel["reason"] == "client_vanished" and cancel["target_session"] == session.session_id
        proxy.wait_for(lambda: _no_backend(pg, f"hangs-up-{leave}"), timeout=60)
        proxy.wait_idle()
        (ended,) = proxy.events("session.ended", application_name=f"hangs-up-{leave}")
        first = proxy.events("query", application_name=f"hangs-up-{leave}")[0]
        # Ended with the session, the server's answer unread by anyone (as when a client is killed mid-query).
        assert first["db.query.text"] == "SELECT pg_sleep(600)" and first["outcome"] == "interrupted"
        assert ended["reason"] == ("client_closed" if leave == "close" else "client_error")
        assert ended["bytes_from_client"] == len(hello) + len(sleep) + sent
        assert checks[-1] and not len(proxy.server.hangup_checks)  # the clock stopped with the session


@pytest.mark.slow
def test_a_client_that_floods_and_leaves_releases_its_server_connection(pg: EmbeddedPostgres) -> None:
    """Requests still queued towards the server when the client leaves are delivered, then the connection closes.

    The server answers while it reads: a proxy that stopped reading its
    answers on close would leave the server blocked writing them, never
    reading the requests still queued, and the connection open for ever.
    """
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions()) as proxy:
        sock = socket.create_connection((proxy.host, proxy.port))
        hello = startup_message({"user": "postgres", "database": "postgres", "application_name": "flooder"})
        sock.sendall(hello)
        recv_until_ready(sock)
        flood = query_message("SELECT 1") * 100_000  # far more than the socket buffers hold, answered by more again
        sock.sendall(flood)
        sock.shutdown(socket.SHUT_WR)  # no more requests: the proxy ends the session
        while sock.recv(1 << 20):
            pass
        sock.close()

        proxy.wait_for(lambda: _no_backend(pg, "flooder"), timeout=60)
        proxy.wait_idle()
        (ended,) = proxy.events("session.ended", application_name="flooder")
        assert ended["bytes_from_client"] == len(hello) + len(flood)


def _session_objects() -> list[object]:
    return [o for o in gc.get_objects() if isinstance(o, ClientSession | UpstreamSide)]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_an_ended_session_is_freed_without_the_cyclic_collector(pg: EmbeddedPostgres, loop: str) -> None:
    """A session over on both legs is freed at once by reference counting, whichever leg ended first.

    Its two protocols refer to each other; were that cycle left standing, the
    session and everything it holds (tracker, conversation, framers) would wait
    for the cyclic collector, which is switched off here: they would stay.
    """
    gc.collect()
    gc.disable()
    try:
        with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(), loop=loop) as proxy:
            # The client leaves first: a socket closed without a Terminate.
            sock = socket.create_connection((proxy.host, proxy.port))
            sock.sendall(startup_message({"user": "postgres", "database": "postgres", "application_name": "leaves"}))
            recv_until_ready(sock)
            sock.close()
            # The server ends it first: the backend terminates itself.
            with psycopg.connect(proxy.dsn(application_name="ended")) as conn, pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            proxy.wait_idle()
            assert {e["application_name"] for e in proxy.events("session.ended")} == {"leaves", "ended"}
            proxy.wait_for(lambda: not _session_objects(), timeout=10)
    finally:
        gc.enable()
