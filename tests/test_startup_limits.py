"""Start-up cannot be held open: the startup timeout, one negotiation per kind, refusals that say why.

The timeout is set to a second in these tests; every test waits for the
event that says what happened rather than for a fixed time.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from pgproxy.demo.embedded import EmbeddedPostgres, free_port
from pgproxy.protocol.build import startup_message, startup_packet
from pgproxy.protocol.decoding import GSSENC_REQUEST_CODE, SSL_REQUEST_CODE
from pgproxy.proxy.session import State
from pgproxy.tracker.options import TrackerOptions
from tests.harness import ProxyHarness

TIMEOUT = 1.0


def _read_to_eof(sock: socket.socket, limit: float = 20.0) -> bytes:
    sock.settimeout(limit)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _error_fields(data: bytes) -> dict[str, str]:
    """Fields of the first ErrorResponse in ``data`` (code letter -> value)."""
    at = data.index(b"E")
    (length,) = struct.unpack_from("!I", data, at + 1)
    body = data[at + 5 : at + 1 + length]
    return {part[:1].decode(): part[1:].decode() for part in body.split(b"\0") if part}


@pytest.fixture
def proxy(pg: EmbeddedPostgres) -> Iterator[ProxyHarness]:
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(), startup_timeout=TIMEOUT) as harness:
        yield harness


def test_silent_client_is_closed_with_a_server_style_error(proxy: ProxyHarness) -> None:
    silent = socket.create_connection((proxy.host, proxy.port))
    partial = socket.create_connection((proxy.host, proxy.port))
    partial.sendall(startup_message({"user": "postgres"})[:8])  # 8 bytes of a startup packet, then nothing
    for sock in (silent, partial):
        fields = _error_fields(_read_to_eof(sock))
        sock.close()
        assert fields["S"] == "FATAL" and fields["C"] == "57014"
        assert "the startup packet" in fields["D"] and "proxy.startup_timeout" in fields["D"]
    proxy.wait_idle()
    timed_out = proxy.events("session.timed_out")
    assert len(timed_out) == 2
    assert {t["reason"] for t in timed_out} == {"startup_timeout"}
    assert {t["waiting_for"] for t in timed_out} == {"client"}
    ended = proxy.events("session.ended")
    assert {e["reason"] for e in ended} == {"startup_timeout"}


def test_client_stalling_in_authentication_is_closed(proxy: ProxyHarness) -> None:
    sock = socket.create_connection((proxy.host, proxy.port))
    sock.sendall(startup_message({"user": "scram_user", "database": "postgres"}))
    data = _read_to_eof(sock)  # AuthenticationSASL, then (never answered) our error
    sock.close()
    assert data.startswith(b"R")
    fields = _error_fields(data)
    assert fields["C"] == "57014" and "SASL initial response" in fields["D"]
    proxy.wait_idle()
    (event,) = proxy.events("session.timed_out")
    assert event["awaiting"] == "the SASL initial response"
    (ended,) = proxy.events("session.ended")
    assert ended["reason"] == "startup_timeout"


def test_ready_session_is_not_timed(proxy: ProxyHarness) -> None:
    with psycopg.connect(proxy.dsn(sslmode="disable")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        (session,) = proxy.server.sessions
        assert session not in proxy.server.startup_deadlines  # stopped when ReadyForQuery passed
    proxy.wait_idle()
    assert not proxy.events("session.timed_out")


def test_unresponsive_upstream_is_named_to_the_client() -> None:
    """An upstream that accepts TCP and never answers: FATAL 08006 naming it, upstream.unresponsive."""
    with _mute_upstream() as address:
        upstream = f"{address[0]}:{address[1]}"
        with ProxyHarness(address, TrackerOptions(), startup_timeout=TIMEOUT) as proxy:
            with pytest.raises(psycopg.OperationalError) as err:
                psycopg.connect(proxy.dsn(sslmode="disable"), connect_timeout=20)
            assert upstream in str(err.value) and "did not answer the startup packet" in str(err.value)
            proxy.wait_idle()
            (event,) = proxy.events("upstream.unresponsive")
            assert event["upstream"] == upstream and event["awaiting"] == "the startup packet"
            (failed,) = proxy.events("session.startup_failed")
            assert failed["sqlstate"] == "08006"
            (ended,) = proxy.events("session.ended")
            assert ended["reason"] == "upstream_unresponsive"


def test_repeated_ssl_request_gets_the_server_error_and_is_closed(proxy: ProxyHarness) -> None:
    sock = socket.create_connection((proxy.host, proxy.port))
    sock.sendall(startup_packet(SSL_REQUEST_CODE))
    assert sock.recv(1) == b"N"
    sock.sendall(startup_packet(SSL_REQUEST_CODE) * 50)  # a stream of them, never read
    data = _read_to_eof(sock)
    sock.close()
    fields = _error_fields(data)
    assert fields["S"] == "FATAL" and fields["C"] == "0A000"
    assert fields["M"].startswith("unsupported frontend protocol 1234.5679")
    assert data.index(b"E") == 0  # no second 'N'
    proxy.wait_idle()
    (refused,) = proxy.events("session.refused")
    assert "second SSLRequest" in refused["reason"]
    (ended,) = proxy.events("session.ended")
    assert ended["reason"] == "repeated_negotiation"


def test_one_gssenc_and_one_ssl_negotiation_are_allowed(proxy: ProxyHarness) -> None:
    """libpq's gssencmode=prefer + sslmode=prefer sends both, once each: the session proceeds."""
    sock = socket.create_connection((proxy.host, proxy.port))
    sock.sendall(startup_packet(GSSENC_REQUEST_CODE))
    assert sock.recv(1) == b"N"
    sock.sendall(startup_packet(SSL_REQUEST_CODE))
    assert sock.recv(1) == b"N"
    sock.sendall(startup_message({"user": "postgres", "database": "postgres"}))
    data = b""
    sock.settimeout(10)
    while b"Z\x00\x00\x00\x05" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    sock.close()
    proxy.wait_idle()
    assert proxy.events("session.ready")
    assert not proxy.events("session.refused")


def test_client_requiring_tls_is_told_what_to_change(proxy: ProxyHarness) -> None:
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        psycopg.connect(proxy.dsn(sslmode="require", gssencmode="disable"), connect_timeout=10)
    proxy.wait_idle()
    (refused,) = proxy.events("session.refused")
    assert "requires encryption (SSL)" in refused["reason"] and "tls.client_mode is refuse" in refused["reason"]
    assert "passthrough" in refused["change"] and "sslmode=prefer" in refused["change"]
    (ended,) = proxy.events("session.ended")
    assert ended["reason"] == "tls_refused"


@pytest.mark.slow
def test_descriptor_limit_refuses_clearly_and_logs_once(pg: EmbeddedPostgres) -> None:
    """Near the fd limit pgproxy refuses with FATAL 53300 (not a reset), logs it once, and raised its soft limit."""
    port = free_port()

    # Soft 100, hard 120 (set before pgproxy starts, in its own process).
    launcher = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (100, 120)); "
        "from pgproxy.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.Popen(
        [
            *(sys.executable, "-c", launcher, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{pg.port}"),
            *("--max-sigterm-delay", "0"),  # the clients left waiting are closed at once when it stops
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=1))
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        received: dict[socket.socket, bytes] = {}
        for _ in range(80):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(sock)
            sock.settimeout(0.2)  # pace the clients: most refusals come back meanwhile
            with contextlib.suppress(TimeoutError):
                received[sock] = sock.recv(4096)
    finally:
        # Stop pgproxy before counting: once it has exited every client has all
        # it will ever get, so a refusal a loaded machine sent later than the
        # pause above is still counted (the log's count is compared below).
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
        for sock in held:
            if not received.get(sock):
                received[sock] = _read_to_eof(sock)
            sock.close()
    errors = [_error_fields(data) for data in received.values() if data]
    refusals = [e for e in errors if e["C"] == "53300"]
    assert refusals, "no client was refused"
    assert all("file descriptor limit (120)" in r["M"] for r in refusals)
    assert all(e["C"] == "57P01" for e in errors if e not in refusals)  # the admitted, at shutdown
    events = [json.loads(line) for line in stdout.splitlines()]
    limits = [e for e in events if e["event"] == "proxy.limit_reached"]
    assert len(limits) == 1 and limits[0]["limit"] == "file_descriptors"
    rejected = [e for e in events if e["event"] == "session.rejected"]
    assert len(rejected) == len(refusals)


@contextlib.contextmanager
def _mute_upstream() -> Iterator[tuple[str, int]]:
    """A server that accepts TCP connections and never reads or answers."""
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        mute.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = mute.accept()
            except TimeoutError:
                continue
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield mute.getsockname()
    finally:
        stop.set()
        thread.join(5)
        mute.close()
        for conn in accepted:
            conn.close()


def test_a_client_is_read_while_the_upstream_is_dialled_up_to_a_write_buffer() -> None:
    """While the dial runs, the client is still read (a client that leaves is seen), up to ``write_buffer_high``.

    The upstream never answers pgproxy's SSLRequest (tls.upstream_mode require),
    so the session stays in its dial for the whole test.
    """
    with (
        _mute_upstream() as upstream,
        ProxyHarness(upstream, TrackerOptions(), tls_upstream_mode="require", connect_timeout=60) as proxy,
    ):
        # A client that leaves while the dial runs: seen at once, not at the connect timeout.
        leaving = socket.create_connection((proxy.host, proxy.port))
        leaving.sendall(startup_message({"user": "postgres", "database": "postgres", "application_name": "leaves"}))
        (session,) = proxy.wait_for(lambda: proxy.server.sessions)
        proxy.wait_for(lambda: session.state is State.CONNECTING)
        leaving.close()
        proxy.wait_idle(timeout=20)
        (ended,) = proxy.events("session.ended")
        assert ended["reason"] == "client_closed"

        # A client that sends more than a write buffer before the server is there: paused, its bytes kept.
        eager = socket.create_connection((proxy.host, proxy.port))
        eager.sendall(startup_message({"user": "postgres", "database": "postgres", "application_name": "eager"}))
        (session,) = proxy.wait_for(lambda: proxy.server.sessions)
        proxy.wait_for(lambda: session.state is State.CONNECTING)
        assert not session.client_reads.reasons  # read while the dial runs
        flood = b"x" * (4 * proxy.server.write_buffer_high)
        eager.sendall(flood)
        proxy.wait_for(lambda: "connecting" in session.client_reads.reasons)
        held = len(session.pending)
        assert proxy.server.write_buffer_high < held <= len(flood) + 200
        eager.close()
