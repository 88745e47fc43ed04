"""The sink's direct JSON rendering writes exactly what structlog's general path writes.

``query`` and ``message`` events skip structlog's processor chain on JSON
destinations (issue 11); these tests hold the two paths to the same lines for
real records: every recorded conversation under tests/data run through the
tracker at wire detail, with slow statements, failed ones, parameters shown,
hashed and hidden, and literals masked.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path

import pytest

from pgproxy.sink import LogSink
from pgproxy.sink.render import JsonLines, Stamp
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail, Record
from pgproxy.tracker.redaction import ParameterMode, RedactionPolicy
from pgproxy.tracker.session import SessionTracker
from tests.golden import recordings

_TIMESTAMP = re.compile(r'"timestamp":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)"')


def _records(options: TrackerOptions) -> list[Record]:
    out: list[Record] = []
    for conns in recordings().values():
        for conn in conns:
            clock = itertools.count(0.0, 0.0007).__next__  # every statement takes a few "ms": some are slow
            tracker = SessionTracker(
                "a1b20001", options, client=("127.0.0.1", 50123), server=("127.0.0.1", 5432), clock=clock
            )
            for frontend, data in conn:
                out += tracker.frontend(data) if frontend else tracker.backend(data)
            out += tracker.closed("client_terminated")
    return out


def real_records() -> list[Record]:
    records = _records(TrackerOptions(detail=Detail.WIRE, slow_query_ms=2.0))
    records += _records(
        TrackerOptions(
            detail=Detail.QUERY,
            redaction=RedactionPolicy(parameters=ParameterMode.HASH, mask_sql_literals=True),
        )
    )
    records += _records(TrackerOptions(detail=Detail.MESSAGE, redaction=RedactionPolicy(parameters=ParameterMode.HIDE)))
    return records


def _general_lines(records: list[Record]) -> list[str]:
    """Every record through structlog's processor chain (``LogSink.log``)."""
    stream = io.StringIO()
    sink = LogSink(stream=stream, fmt="json")
    for record in records:
        sink.log(record.level, record.event, **record.fields)
    sink.close()
    return stream.getvalue().splitlines()


def _emitted_lines(records: list[Record], file: Path | None = None) -> list[str]:
    stream = io.StringIO()
    sink = LogSink(stream=stream, fmt="json", file=str(file) if file else None)
    sink.emit_all(records)
    sink.close()
    return stream.getvalue().splitlines()


def _untimed(line: str) -> str:
    assert _TIMESTAMP.search(line), line
    return _TIMESTAMP.sub('"timestamp":"T"', line)


def test_real_records_cover_every_kind_of_query_event() -> None:
    records = real_records()
    queries = [r for r in records if r.event == "query"]
    assert {r["outcome"] for r in queries} >= {"ok", "error"}
    assert {r.level for r in queries} == {"info", "warning", "error"}  # ok, slow, failed
    assert any(r.get("slow") for r in queries)
    assert any(r.get("parameters") for r in queries)
    assert any(r.get("parameters") and "[redacted]" in r["parameters"] for r in queries)  # hidden
    assert any(r.get("parameters") and str(r["parameters"][0]).startswith("hmac-sha256:") for r in queries)  # hashed
    assert any("?" in (r.get("db.query.text") or "") for r in queries)  # masked literals
    assert any(r.event == "message" and "[redacted]" in json.dumps(r.fields) for r in records)
    # The direct rendering is actually taken, not the fallback, except for a
    # record naming a secret key (BackendKeyData's secret_key), whose value the
    # general path withholds once more.
    render = JsonLines(Stamp())
    fallbacks = [r for r in records if render(r.event, r.level, r.fields) is None]
    assert {(r.event, r["type"]) for r in fallbacks} == {("message", "BackendKeyData")}
    assert len(records) - len(fallbacks) > 500
    # The session's own events (one of each per connection) take it too.
    assert {r.event for r in records} >= {"session.started", "session.ready", "session.ended", "notice"}


def test_direct_rendering_writes_the_general_paths_lines() -> None:
    records = real_records()
    # query records carry their session's fields apart (SessionContext): the sink splices them in
    assert sum(r.context is not None for r in records) > 100
    fast, general = _emitted_lines(records), _general_lines(records)
    assert len(fast) == len(general) == len(records)
    for a, b in zip(fast, general, strict=True):
        assert json.loads(_untimed(a)) == json.loads(_untimed(b))
        assert _untimed(a) == _untimed(b)  # byte for byte, key order included


@pytest.mark.parametrize("formatted", [False, True])
def test_a_lines_pieces_formatted_or_joined_make_the_general_paths_line(
    monkeypatch: pytest.MonkeyPatch, formatted: bool
) -> None:
    """The compiled build puts a line together by ``b"%b" %``, the pure one by a join: the same line either way."""
    from pgproxy.sink import render

    if not render.__file__.endswith(".py"):  # compiled: the module reads its own flag natively
        pytest.skip("the compiled build's choice is fixed; tests/test_compiled.py holds its lines to these")
    monkeypatch.setattr(render, "_FORMAT_PIECES", formatted)
    records = [r for r in real_records() if r.event in ("query", "session.started", "session.ended")][:200]
    assert sum(r.context is not None for r in records) > 20  # the session's fields spliced in, too
    assert [_untimed(x) for x in _emitted_lines(records)] == [_untimed(x) for x in _general_lines(records)]


def test_both_json_destinations_get_the_same_lines(tmp_path: Path) -> None:
    records = [r for r in real_records() if r.event == "query"][:20]
    stdout = _emitted_lines(records, tmp_path / "log.jsonl")
    assert [_untimed(x) for x in stdout] == [_untimed(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "fields",
    [
        {"session": "s", "password": "hunter2", "direction": "frontend"},  # a secret key: withheld
        {"session": "s", "n": 1 << 70},  # beyond orjson's 64-bit integers
        {"session": "s", "raw": b"\x00\xff", "kinds": {"a"}, "pair": (1, 2)},  # values only `default` renders
        {},
    ],
)
def test_odd_fields_render_as_on_the_general_path(fields: dict[str, object]) -> None:
    records = [Record("query", "info", dict(fields)), Record("message", "debug", dict(fields))]
    fast, general = _emitted_lines(records), _general_lines(records)
    assert [_untimed(x) for x in fast] == [_untimed(x) for x in general]
    assert "hunter2" not in "".join(fast)


def test_console_destination_beside_a_json_file(tmp_path: Path) -> None:
    records = [r for r in real_records() if r.event == "query"][:5]
    stream = io.StringIO()
    sink = LogSink(stream=stream, fmt="console", file=str(tmp_path / "log.jsonl"))
    sink.emit_all(records)
    sink.close()
    assert len([x for x in stream.getvalue().splitlines() if "query" in x]) == len(records)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [_untimed(x) for x in lines] == [_untimed(x) for x in _general_lines(records)]


def test_the_timestamp_is_the_clock_in_iso_8601_utc() -> None:
    """The per-second prefix and the microseconds from the table read as datetime formats the same instant."""
    import datetime

    clock = [0]
    stamp = Stamp(lambda: clock[0])
    for ns in (0, 999_999_999, 1_000_000_000, 1_795_000_000_000_000_000, 1_795_000_000_123_456_789):
        for offset in (0, 1_000, 999_999_000, 1_000_000_000, 59_999_999_999):
            now = clock[0] = ns + offset
            seconds, micros = divmod(now // 1000, 1_000_000)
            expected = datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(microsecond=micros)
            assert stamp.timestamp() == expected.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_the_records_of_one_chunk_share_one_timestamp() -> None:
    # (not BackendKeyData: its secret_key sends it the general way, which stamps its own)
    records = [r for r in real_records() if r.event == "message" and r["type"] != "BackendKeyData"][:50]
    first, second = _emitted_lines(records[:25]), _emitted_lines(records[25:])
    stamps = {json.loads(line)["timestamp"] for line in first}
    assert len(stamps) == 1 and len(first) == 25
    assert stamps != {json.loads(line)["timestamp"] for line in second}  # another call, another instant


def test_records_that_take_structlogs_way_keep_their_place_among_direct_lines(tmp_path: Path) -> None:
    """A chunk's direct lines are queued together, but never after a later record rendered by structlog."""
    odd = [{"session": "s", "password": "hunter2"}, {"session": "s", "n": 1 << 70}]  # structlog's way, both
    records = [Record("message", "debug", {"session": "s", "n": i}) for i in range(6)]
    records[1:1] = [Record("message", "debug", dict(odd[0]))]
    records[4:4] = [Record("query", "info", dict(odd[1]))]
    fast, general = _emitted_lines(records, tmp_path / "log.jsonl"), _general_lines(records)
    assert [_untimed(x) for x in fast] == [_untimed(x) for x in general]
    assert [_untimed(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [_untimed(x) for x in fast]
    assert [json.loads(x).get("n") for x in fast] == [0, None, 1, 2, 1 << 70, 3, 4, 5]


def test_session_ready_parameters_shared_by_sessions_render_as_on_the_general_path() -> None:
    """A parameters dict that comes back (sessions with one known login answer share it) is rendered once and reused.

    Runs of records sharing a dict, dicts that alternate, an equal dict of its
    own, one that only a ``default`` renders, and records without parameters:
    each line the general path's, byte for byte.
    """
    shared = {"application_name": "pgbench", "client_encoding": "UTF8", "server_version": "18.4", "TimeZone": "UTC"}
    other = {"client_encoding": "LATIN1", "DateStyle": "ISO, DMY"}
    odd = {"raw": b"\x00\xff"}

    def ready(session: str, parameters: dict[str, object] | None) -> Record:
        fields: dict[str, object] = {"session": session, "user": "bench", "backend_pid": 7, "auth_method": "trust"}
        if parameters is not None:
            fields["parameters"] = parameters
        fields["protocol_version"] = "3.0"
        fields["setup_ms"] = 1.25
        return Record("session.ready", "info", fields)

    order = [shared, shared, shared, other, other, shared, shared, dict(shared), dict(shared), odd, odd, odd, None]
    records = [ready(f"s{i}", parameters) for i, parameters in enumerate(order)]
    records.insert(3, Record("session.started", "info", {"session": "s", "parameters": shared}))
    fast, general = _emitted_lines(records), _general_lines(records)
    assert len(fast) == len(records)
    assert [_untimed(x) for x in fast] == [_untimed(x) for x in general]
    assert '"parameters":{"client_encoding":"LATIN1","DateStyle":"ISO, DMY"}' in fast[5]


def test_log_level_drops_the_records_below_it_and_a_reload_moves_it() -> None:
    """``log.level``: the direct rendering writes the records at or above it, as the general path does."""
    records = real_records()  # message detail's debug events, info, warning (slow) and error records
    assert {r.level for r in records} >= {"debug", "info", "warning", "error"}
    stream = io.StringIO()
    sink = LogSink(stream=stream, fmt="json", min_level="warning")
    sink.emit_all(records)
    sink.set_level("info")  # a configuration reload
    sink.emit_all(records)
    sink.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    warnings = [r for r in records if r.logged and r.level in ("warning", "error")]
    informed = [r for r in records if r.logged and r.level != "debug"]
    assert [(x["event"], x["level"]) for x in lines] == [(r.event, r.level) for r in warnings + informed]
    assert len(warnings) > 5 and len(informed) > len(warnings) + 100
