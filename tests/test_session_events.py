"""session.started, session.ready and session.ended: the usual session's fast way gives the general way's fields.

Every connection builds these three records; a session with the usual shape
(both addresses known, user, database and application name in its start-up,
nothing unusual at its end) builds them as copies of a layout, which the log
sink checks once (tracker/session.py _STARTED_LAYOUT). These tests hold each
to the general way's fields, in their order, and their lines to the general
path's, byte for byte.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from pgproxy.protocol import build as b
from pgproxy.protocol.build import startup_message
from pgproxy.tracker import session as tracker_session
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail, Record
from pgproxy.tracker.session import SessionTracker
from tests.test_sink import _emitted_lines, _general_lines, _untimed


def _login(pid: int) -> bytes:
    return (
        b.authentication_ok()
        + b.parameter_status("client_encoding", "UTF8")
        + b.parameter_status("server_version", "15.8")
        + b.parameter_status("TimeZone", "Etc/UTC")
        + b.backend_key_data(pid)
        + b.ready_for_query("I")
    )


_LOGIN = _login(4242)
_ANSWER = b.row_description([("n", 23)]) + b.data_row([b"1"]) + b.command_complete("SELECT 1") + b.ready_for_query("I")


def _items(fields: dict[str, Any]) -> list[tuple[str, Any]]:
    return list(fields.items())  # the order too: it is the line's


def _session(
    detail: Detail, parameters: dict[str, str], n: int = 1, server: str = "10.0.0.5"
) -> tuple[SessionTracker, list[Record], dict[str, Any]]:
    """A whole usual session (the ``n``-th: its own id, client port and backend); its records, and its context."""
    t = SessionTracker(
        f"ab12000{n}",
        TrackerOptions(detail=detail),
        client=("127.0.0.1" if n < 4 else "127.0.0.2", 50122 + n),
        server=(server, 5432),
        clock=lambda: 0.25,
    )
    records = t.frontend(startup_message(parameters), now=0.5)
    context = dict(t.context)
    for _ in range(3):  # the second and later logins take the known answer's way
        records += t.backend(_login(4241 + n), now=0.75)
        if t.ready:
            break
    records += t.frontend(b.query("SELECT 1"), now=1.0)
    records += t.backend(_ANSWER, now=1.25)
    records += t.frontend(b.message(b"X"), now=1.5)
    records += t.closed("client_closed", 2.0, {"bytes_from_client": 133, "bytes_from_server": 457})
    return t, records, context


@pytest.mark.parametrize("detail", [Detail.CONNECTION, Detail.QUERY, Detail.MESSAGE])
@pytest.mark.parametrize(
    "parameters",
    [
        {"user": "alice", "database": "app", "application_name": "web"},
        {"user": "alice", "database": "app", "application_name": "web", "client_encoding": "UTF8"},
    ],
)
def test_the_usual_sessions_records_are_the_general_ways(detail: Detail, parameters: dict[str, str]) -> None:
    # The second session meets the login answer and start-up packet known, and the first's records
    # as the layouts of its own (tracker/session.py _StartupFacts); the third another upstream, the
    # fourth another client address.
    for n, server in ((1, "10.0.0.5"), (2, "10.0.0.5"), (3, "10.0.0.6"), (4, "10.0.0.5")):
        t, records, context = _session(detail, parameters, n, server)
        by_event = {r.event: r for r in records if r.event.startswith("session.")}
        started, ready, ended = by_event["session.started"], by_event["session.ready"], by_event["session.ended"]
        assert started.layout is not None and ready.layout is not None and ended.layout is not None
        extra = {k: v for k, v in parameters.items() if k not in ("user", "database", "application_name")}
        assert _items(started.fields) == _items(tracker_session._started_record_fields(context, "3.0", extra))
        assert _items(ready.fields) == _items(t._ready_fields(0.75, ready["parameters"]))
        assert _items(ended.fields) == _items(
            t._ended_fields("client_terminated", 2.0, {"bytes_from_client": 133, "bytes_from_server": 457})
        )
        for record in (started, ready, ended):
            assert list(record.fields) == list(record.layout or ())[: len(record.fields)]
        assert ended["reason"] == "client_terminated" and ended["bytes_from_server"] == 457
        for record in (started, ready, ended):  # each session's own values, not a layout's
            assert record["session"] == f"ab12000{n}"
        assert (started["client.port"], ended["client.port"]) == (50122 + n, 50122 + n)
        assert started["client.address"] == ended["client.address"] == context["client.address"]
        assert (ready["backend_pid"], ended["backend_pid"], started["server.address"]) == (4241 + n, 4241 + n, server)
        lines = [_untimed(x) for x in _emitted_lines(records)]
        assert lines == [_untimed(x) for x in _general_lines(records)]


def test_an_unusual_session_takes_the_general_way() -> None:
    """A Unix-socket client (no address), a start-up without application_name, an end with more to say."""
    t = SessionTracker("ab120002", TrackerOptions(detail=Detail.QUERY), server=("10.0.0.5", 5432), clock=lambda: 0.25)
    records = t.frontend(startup_message({"user": "alice", "database": "app"}), now=0.5)
    records += t.backend(_LOGIN, now=0.75)
    records += t.closed("client_closed", 2.0, {"bytes_from_client": 1, "bytes_from_server": 2, "error": "E: x"})
    assert [r.event for r in records] == ["session.started", "session.ready", "session.ended"]
    assert all(r.layout is None for r in records)
    assert records[2]["error"] == "E: x" and "client.address" not in records[2]
    assert [_untimed(x) for x in _emitted_lines(records)] == [_untimed(x) for x in _general_lines(records)]


def test_the_recent_value_contexts_are_the_ones_asked_for() -> None:
    """_value_context compares the last two it returned first: any run of settings still gets its own context."""
    from pgproxy.protocol.values import ValueContext

    settings = [("utf-8", "UTC", None), ("utf-8", "Etc/UTC", None), ("latin-1", "UTC", 7), ("utf-8", "UTC", 7)]
    for encoding, timezone, chars in settings * 3 + settings[::-1] * 2 + [settings[1], settings[0]] * 3:
        context = tracker_session._value_context(encoding, timezone, chars)
        assert context == ValueContext(encoding, timezone, chars)
        assert tracker_session._value_context(encoding, timezone, chars) is context


def _query_tracker(session_id: str, client_port: int) -> SessionTracker:
    """A query-detail tracker for a client on 127.0.0.1 and the upstream 10.0.0.5:5432."""
    return SessionTracker(
        session_id, TrackerOptions(detail=Detail.QUERY), client=("127.0.0.1", client_port), server=("10.0.0.5", 5432)
    )


def test_sessions_sharing_a_login_answer_keep_their_own_authentication_method() -> None:
    """The same start-up and login answer after a password, then without: each session.ready names its own method."""
    parameters = {"user": "alice", "database": "app", "application_name": "web"}
    methods = []
    for n, password in ((1, True), (2, False), (3, True), (4, False)):
        t = _query_tracker(f"ab13000{n}", 50200 + n)
        records = t.frontend(startup_message(parameters), now=0.5)
        if password:  # AuthenticationCleartextPassword, then the client's PasswordMessage
            records += t.backend(b.message(b"R", struct.pack("!I", 3)), now=0.6)
            records += t.frontend(b.message(b"p", b"secret\x00"), now=0.7)
        records += t.backend(_login(5000 + n), now=0.75)
        (ready,) = [r for r in records if r.event == "session.ready"]
        assert _items(ready.fields) == _items(t._ready_fields(0.75, ready["parameters"]))
        assert ready["backend_pid"] == 5000 + n and ready["session"] == f"ab13000{n}"
        methods.append(ready["auth_method"])
    assert methods[0] == methods[2] != methods[1] == methods[3] == "trust"


def test_a_session_whose_start_up_was_forgotten_meanwhile_still_gets_the_general_ways_fields() -> None:
    """Start-up facts are kept for 64 messages: one forgotten before the login answer or the end is not needed."""
    parameters = {"user": "alice", "database": "app", "application_name": "web"}
    for n in range(2):
        t = _query_tracker(f"ab14000{n}", 50300 + n)
        records = t.frontend(startup_message(parameters), now=0.5)
        tracker_session._started_fields.clear()  # as 64 other start-ups would
        records += t.backend(_login(6000 + n), now=0.75)
        tracker_session._started_fields.clear()
        records += t.closed("client_closed", 2.0, {"bytes_from_client": 133, "bytes_from_server": 457})
        ready, ended = records[-2], records[-1]
        assert _items(ready.fields) == _items(t._ready_fields(0.75, ready["parameters"]))
        assert _items(ended.fields) == _items(
            t._ended_fields("client_closed", 2.0, {"bytes_from_client": 133, "bytes_from_server": 457})
        )
        assert ended.layout is None and ended["backend_pid"] == 6000 + n
