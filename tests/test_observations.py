"""Chunks shown to their trackers at the end of the loop's turn (proxy/observations.py).

Queued or shown at once, the records must be the same; a question asked of a
tracker in the same turn as a relayed chunk must be answered after that chunk;
and the adaptive policy must queue exactly while turns bring several chunks.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgproxy.demo.embedded import EmbeddedPostgres
from pgproxy.protocol import build
from pgproxy.proxy.loop import loop_factory
from pgproxy.proxy.observations import LONE_TURNS, PROBE_EVERY, Observations, Observing
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Record
from tests.harness import ProxyHarness, recv_until_ready

#: Fields that differ from one run to the next whatever the proxy does.
_VOLATILE = {
    "timestamp",
    "session",
    "client.port",
    "backend_pid",
    "duration_ms",
    "batch_duration_ms",
    "setup_ms",
}
CLIENTS = 4
ROUNDS = 25


def _client(dsn: str, name: str, errors: list[BaseException]) -> None:
    """One application's statements: extended and simple protocol, a batch, an error, a transaction, COPY."""
    try:
        with psycopg.connect(dsn + f"&application_name={name}", autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE t (x int)")
            simple = psycopg.ClientCursor(conn)  # the simple query protocol
            for _ in range(ROUNDS):
                conn.execute("SELECT id, username FROM users WHERE id = %s", (1,)).fetchall()
                simple.execute("SELECT %s::int + 1", (41,))
                simple.fetchall()
                simple.execute("SELECT 1; SELECT 2")
                with pytest.raises(psycopg.errors.DivisionByZero):
                    simple.execute("SELECT 1/0")
                with conn.transaction():
                    conn.execute("INSERT INTO t VALUES (%s)", (7,))
                with conn.cursor().copy("COPY (SELECT generate_series(1, 5)) TO STDOUT") as copy:
                    for _row in copy:
                        pass
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def run_clients(
    upstream: tuple[str, int], observing: Observing, connect: dict[str, str] | None = None, **settings: Any
) -> dict[str, list[dict[str, Any]]]:
    """Every client's events (but the proxy's own), in its session's order; the fields that vary by run shown as present.

    ``connect``: the clients' connection parameters (default: no TLS); ``settings``: the proxy's (ProxySettings).
    """
    with ProxyHarness(upstream, TrackerOptions(), observing=observing, **settings) as proxy:
        errors: list[BaseException] = []
        dsn = proxy.dsn(**(connect or {"sslmode": "disable"}))
        threads = [threading.Thread(target=_client, args=(dsn, f"client{i}", errors)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        proxy.wait_idle()
        by_client: dict[str, list[dict[str, Any]]] = {}
        for event in proxy.events():
            name = event.get("application_name")
            if name is not None and name.startswith("client"):
                by_client.setdefault(name, []).append(
                    {k: "<varies>" if k in _VOLATILE else v for k, v in event.items()}
                )
        return by_client


def assert_same_records(at_once: dict[str, list[dict[str, Any]]], queued: dict[str, list[dict[str, Any]]]) -> None:
    """The two runs of :func:`run_clients` logged the same events for every client."""
    assert sorted(at_once) == sorted(queued) == [f"client{i}" for i in range(CLIENTS)]
    for name, events in at_once.items():
        queries = [e for e in queued[name] if e["event"] == "query"]
        # create, then per round: 1 + 1 + 2 + 1 + (BEGIN, INSERT, COMMIT) + COPY
        assert len(queries) == 1 + ROUNDS * 9, name
        assert {e["outcome"] for e in queries} == {"ok", "error"}
        assert queued[name] == events, name


def test_queued_chunks_give_the_records_shown_at_once_give(pg: EmbeddedPostgres) -> None:
    """Four clients at once, every chunk queued to its turn's end, against every chunk shown at once."""
    upstream = ("127.0.0.1", pg.port)
    assert_same_records(run_clients(upstream, Observing.AT_ONCE), run_clients(upstream, Observing.QUEUED))


class _Session:
    """Stands in for a ClientSession: its tracker answers each chunk with one record (or fails on b"bad")."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def track(self, data: bytes, frontend: bool, now: float | None) -> list[Record] | None:
        if data == b"bad":
            raise ValueError("undecodable")
        return [Record("query", "info", {"session": self.name, "chunk": data.decode(), "frontend": frontend})]

    def decoding_failed(self, exc: Exception) -> None:
        self.calls.append(f"{self.name} failed: {exc}")


class _Sink:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def emit_all(self, records: list[Record]) -> None:
        self.calls.append(" ".join(f"{r.fields['session']}:{r.fields['chunk']}" for r in records))


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One real loop for a test: the queue keeps the loop of its first chunk."""
    factory, _ = loop_factory("uvloop")
    running = factory()
    yield running
    running.close()


def _turn(
    loop: asyncio.AbstractEventLoop, observations: Observations, chunks: list[tuple[_Session, bytes]]
) -> list[bool]:
    """Add ``chunks`` in one turn of ``loop``, let the turn end; what add() answered for each."""

    async def run() -> list[bool]:
        answers = [observations.add(session, data, True, 1.0) for session, data in chunks]  # type: ignore[arg-type]
        await asyncio.sleep(0)  # the end-of-turn callback, scheduled before this task's wake-up, runs first
        return answers

    return loop.run_until_complete(run())


def test_the_adaptive_policy_queues_while_turns_bring_several_chunks(loop: asyncio.AbstractEventLoop) -> None:
    calls: list[str] = []
    observations = Observations(_Sink(calls), Observing.ADAPTIVE)  # type: ignore[arg-type]
    a, b = _Session("a", calls), _Session("b", calls)
    # The first chunk is a probe; its turn brings two: from then on every chunk is queued,
    # and a turn's records go to the sink together, in arrival order.
    assert _turn(loop, observations, [(a, b"1"), (b, b"2")]) == [True, True]
    assert observations.queueing
    assert calls == ["a:1 b:2"]
    # A failure among them: the records before it first, then the anomaly, then the rest.
    calls.clear()
    assert _turn(loop, observations, [(a, b"3"), (b, b"bad"), (a, b"4")]) == [True, True, True]
    assert calls == ["a:3", "b failed: undecodable", "a:4"]
    # Turns of one chunk: queued still, until LONE_TURNS of them in a row.
    for _ in range(LONE_TURNS - 1):
        assert _turn(loop, observations, [(a, b"5")]) == [True]
        assert observations.queueing
    assert _turn(loop, observations, [(a, b"6")]) == [True]
    assert not observations.queueing
    # Then chunks are declined (the session shows them at once), but one in PROBE_EVERY.
    calls.clear()
    answers = [answer for _ in range(PROBE_EVERY - 1) for answer in _turn(loop, observations, [(a, b"7")])]
    assert answers == [False] * (PROBE_EVERY - 1) and calls == []
    assert _turn(loop, observations, [(a, b"8")]) == [True]  # the probe: one chunk, so still not queueing
    assert not observations.queueing and calls == ["a:8"]
    assert _turn(loop, observations, [(a, b"9")]) == [False]


@pytest.mark.parametrize("observing", [Observing.QUEUED, Observing.AT_ONCE], ids=lambda o: o.value)
def test_the_fixed_policies_never_change(loop: asyncio.AbstractEventLoop, observing: Observing) -> None:
    calls: list[str] = []
    observations = Observations(_Sink(calls), observing)  # type: ignore[arg-type]
    a, b = _Session("a", calls), _Session("b", calls)
    for _ in range(PROBE_EVERY + LONE_TURNS + 1):
        expected = observing is Observing.QUEUED
        assert _turn(loop, observations, [(a, b"1")]) == [expected]
        assert _turn(loop, observations, [(a, b"1"), (b, b"2")]) == [expected, expected]
        assert observations.queueing is expected


def test_a_question_in_the_same_turn_sees_the_chunk_just_relayed(pg: EmbeddedPostgres) -> None:
    """A Query relayed and queued: asked at once whether the session is idle, the tracker has seen it."""
    with (
        ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(), observing=Observing.QUEUED) as proxy,
        socket.create_connection((proxy.host, proxy.port)) as sock,
    ):
        sock.sendall(build.startup_message({"user": "postgres", "database": "postgres"}))
        recv_until_ready(sock)
        (session,) = proxy.server.sessions

        async def relay_and_ask() -> tuple[int, bool, int]:
            # As if the client's read had brought the Query: relayed to the server, queued for the turn's end.
            session.data_received(build.query("SELECT pg_sleep(0.1)"))
            queued = len(proxy.server.observations)
            return queued, session.idle, len(proxy.server.observations)

        queued, idle, left = proxy._loop.call(relay_and_ask())
        assert (queued, idle, left) == (1, False, 0)
        answer = b""
        while not answer.endswith(b"Z\x00\x00\x00\x05I"):
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
        proxy.wait_for(lambda: proxy.events("query", **{"db.query.text": "SELECT pg_sleep(0.1)"}))
        assert session.idle
