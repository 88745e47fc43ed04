"""Message-detail events of a ready session (tracker/message_events.py and the message-detail loops), exact records.

What is computed once per session, class or result (an event's first fields,
a row decoder's redacted columns) must follow what changes: a reload's
redaction, an encoding switched in the middle of a chunk, the same message
type arriving with another tag.
"""

from __future__ import annotations

from typing import Any

from pgproxy.protocol import build as b
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail, Record
from pgproxy.tracker.redaction import RedactionPolicy
from tests.test_tracker import session


def messages(records: list[Record]) -> list[dict[str, Any]]:
    return [r.fields for r in records if r.event == "message"]


def _select(columns: list[tuple[str, int]], row: list[bytes | None]) -> bytes:
    return b.row_description(columns) + b.data_row(row) + b.command_complete("SELECT 1") + b.ready_for_query()


def test_one_prepared_round_trip_gives_these_events() -> None:
    t = session(detail=Detail.MESSAGE)
    t.frontend(b.parse("s", "SELECT $1::int4 AS n", (23,)) + b.sync(), now=1.0)
    t.backend(b.message(b"1") + b.ready_for_query(), now=1.1)
    sent = t.frontend(b.bind("", "s", (b"7",)) + b.describe("P", "") + b.execute() + b.sync(), now=2.0)
    answered = t.backend(b.message(b"2") + _select([("n", 23)], [b"7"]), now=2.5)
    head = {"session": "s1"}
    assert messages(sent) == [
        {
            **head,
            "direction": "frontend",
            "type": "Bind",
            "tag": "B",
            "length": 18,
            "portal": "",
            "statement": "s",
            "parameters": [7],
            "parameter_formats": [],
            "result_formats": [],
        },
        {**head, "direction": "frontend", "type": "Describe", "tag": "D", "length": 6, "kind": "P", "name": ""},
        {**head, "direction": "frontend", "type": "Execute", "tag": "E", "length": 9, "portal": "", "max_rows": 0},
        {**head, "direction": "frontend", "type": "Sync", "tag": "S", "length": 4},
    ]
    assert [r.event for r in answered] == ["message"] * 5 + ["query"]
    assert messages(answered) == [
        {**head, "direction": "backend", "type": "BindComplete", "tag": "2", "length": 4},
        {
            **head,
            "direction": "backend",
            "type": "RowDescription",
            "tag": "T",
            "length": 26,
            "columns": [
                {
                    "name": "n",
                    "type": "int4",
                    "type_oid": 23,
                    "table_oid": 0,
                    "column_number": 0,
                    "type_size": -1,
                    "type_modifier": -1,
                    "format": "text",
                }
            ],
        },
        {**head, "direction": "backend", "type": "DataRow", "length": 11, "row_number": 1, "row": {"n": 7}},
        {
            **head,
            "direction": "backend",
            "type": "CommandComplete",
            "tag": "C",
            "length": 13,
            "command_tag": "SELECT 1",
            "command": "SELECT",
            "rows": 1,
        },
        {
            **head,
            "direction": "backend",
            "type": "ReadyForQuery",
            "tag": "Z",
            "length": 5,
            "status": "I",
            "transaction_status": "idle",
        },
    ]


def test_a_reload_redacts_the_columns_its_policy_names_from_the_next_row_on() -> None:
    t = session(detail=Detail.MESSAGE)
    t.frontend(b.query("SELECT 'a' AS pin, 'b' AS note"), now=1.0)
    (row,) = [f for f in messages(t.backend(_select([("pin", 25), ("note", 25)], [b"a", b"b"]), now=1.1)) if "row" in f]
    assert row["row"] == {"pin": "a", "note": "b"}
    assert t.reconfigure(TrackerOptions(detail=Detail.WIRE, redaction=RedactionPolicy(sensitive_names="^pin$")))
    t.frontend(b.query("SELECT 'a' AS pin, 'b' AS note"), now=2.0)
    (row,) = [f for f in messages(t.backend(_select([("pin", 25), ("note", 25)], [b"a", b"b"]), now=2.1)) if "row" in f]
    assert row["row"] == {"pin": "[redacted]", "note": "b"}
    # The dump masks the value's byte (0x61, "a") with "*" (0x2a).
    assert row["hex"] == (
        "0000  44 00 00 00 10 00 02 00  00 00 01 2a 00 00 00 01  D..........*....\n"
        "0010  62                                                b"
    )


def test_an_encoding_switched_within_a_chunk_decodes_the_rest_of_that_chunk() -> None:
    t = session(detail=Detail.MESSAGE)
    t.frontend(b.query("SET client_encoding TO LATIN1; SELECT 'é' AS e"), now=1.0)
    records = t.backend(
        b.command_complete("SET")
        + b.parameter_status("client_encoding", "LATIN1")
        + b.row_description([("e", 25)])
        + b.data_row(["é".encode("latin-1")])
        + b.command_complete("SELECT 1")
        + b.ready_for_query(),
        now=1.1,
    )
    shown = messages(records)
    assert [f["type"] for f in shown] == [
        "CommandComplete",
        "ParameterStatus",
        "RowDescription",
        "DataRow",
        "CommandComplete",
        "ReadyForQuery",
    ]
    assert shown[1]["name"] == "client_encoding" and shown[1]["value"] == "LATIN1"
    assert shown[3]["row"] == {"e": "é"}


def test_a_terminate_and_an_unknown_tag_still_take_the_general_path() -> None:
    t = session(detail=Detail.MESSAGE)
    records = t.frontend(b.message(b"?", b"xy") + b.message(b"X"), now=1.0)
    assert t.terminated
    assert [r.event for r in records][-1] == "message"
    assert messages(records)[-1] == {
        "session": "s1",
        "direction": "frontend",
        "type": "Terminate",
        "tag": "X",
        "length": 4,
    }


def test_a_row_description_seen_again_is_decoded_under_the_encoding_in_force() -> None:
    t = session(detail=Detail.MESSAGE)
    described = b.row_description([("X", 25)]).replace(b"X", b"\xe9")  # a column name in Latin-1 bytes

    def column_name() -> str:
        t.frontend(b.query("SELECT 1"), now=1.0)
        records = t.backend(described + b.command_complete("SELECT 0") + b.ready_for_query(), now=1.1)
        (shown,) = [f for f in messages(records) if f["type"] == "RowDescription"]
        return str(shown["columns"][0]["name"])

    assert column_name() == column_name() == "\\xe9"  # not UTF-8: shown escaped
    t.frontend(b.query("SET client_encoding TO LATIN1"), now=2.0)
    t.backend(
        b.command_complete("SET") + b.parameter_status("client_encoding", "LATIN1") + b.ready_for_query(), now=2.1
    )
    assert column_name() == "é"
