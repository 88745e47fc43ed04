"""Metrics are folded from the records the log shows: exact values after known workloads."""

from __future__ import annotations

import re
import socket
from collections import Counter

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgproxy.demo.embedded import EmbeddedPostgres
from pgproxy.protocol.build import startup_packet
from pgproxy.protocol.decoding import SSL_REQUEST_CODE
from pgproxy.sink.metrics import DURATION_BUCKETS, MAX_OPERATION_NAMES, MAX_REASONS, MetricsSink, _Bounded
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Record
from tests.harness import ProxyHarness


def samples(metrics: MetricsSink) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, by name and sorted labels (parsed back from the text)."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _refused_startup(host: str, port: int) -> bytes:
    """What a client beyond the connection limit gets (raw bytes until EOF).

    The proxy answers as soon as the connection is accepted, so nothing is sent
    (bytes arriving at the closed socket would reset it before the answer is read).
    """
    with socket.create_connection((host, port), timeout=10) as sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data[:1] == b"E", data
    return data


def _query(operation: str, ms: float, outcome: str = "ok", sqlstate: str | None = None) -> Record:
    fields = {"db.operation.name": operation, "outcome": outcome, "duration_ms": ms}
    if sqlstate:
        fields["db.response.status_code"] = sqlstate
    return Record("query", "error" if sqlstate else "info", fields)


def test_histogram_buckets_are_otel_bounds_and_inclusive() -> None:
    metrics = MetricsSink("asyncio")
    metrics.emit_all([_query("SELECT", ms) for ms in (0.5, 1.0, 1.2, 5.0, 70.0, 999.0, 10_000.0, 12_000.0)])
    metrics.emit_all([_query("SELECT", 3.0, outcome="skipped")])  # never ran: counted, not timed
    got = samples(metrics)
    labels = (("db_operation_name", "SELECT"), ("db_system_name", "postgresql"))
    buckets = [
        got[("db_client_operation_duration_seconds_bucket", (*labels, ("le", repr(b))))] for b in DURATION_BUCKETS
    ]
    # le is "less than or equal": 1 ms falls in le=0.001, 5 ms in le=0.005, 10 s in le=10.
    assert buckets == [2, 4, 4, 4, 5, 5, 6, 6, 7]
    assert got[("db_client_operation_duration_seconds_bucket", (*labels, ("le", "+Inf")))] == 8
    assert got[("db_client_operation_duration_seconds_count", labels)] == 8
    assert got[("db_client_operation_duration_seconds_sum", labels)] == pytest.approx(23.0767)
    assert got[("pgproxy_statements_total", (("db_operation_name", "SELECT"), ("outcome", "ok")))] == 8
    assert got[("pgproxy_statements_total", (("db_operation_name", "SELECT"), ("outcome", "skipped")))] == 1


def test_label_values_are_bounded() -> None:
    metrics = MetricsSink()
    for n in range(MAX_OPERATION_NAMES + 10):
        metrics.emit_all([_query(f"VERB{chr(65 + n % 26)}{chr(65 + n // 26)}", 1.0)])
    metrics.emit_all([_query("select * from t where secret = 'x'", 1.0), _query("", 1.0, sqlstate="XX000")])
    metrics.emit_all([Record("query", "error", {"outcome": "error", "db.response.status_code": "'; drop"})])
    names = {labels[0][1] for name, labels in samples(metrics) if name == "pgproxy_statements_total"}
    assert len(names) == MAX_OPERATION_NAMES + 1 and "OTHER" in names
    assert not any("secret" in name for name in names)
    errors = {labels: v for (name, labels), v in samples(metrics).items() if name == "pgproxy_errors_total"}
    assert errors == {(("sqlstate_class", "XX"),): 1, (("sqlstate_class", "OTHER"),): 1}


def test_labels_of_names_seen_before_are_what_the_bounded_mapping_gives() -> None:
    """``_query`` skips the shape check and the mapping for a name already kept: same counts as the general way."""
    metrics = MetricsSink()
    names = [f"VERB{chr(65 + n % 26)}{chr(65 + n // 26)}" for n in range(MAX_OPERATION_NAMES + 10)]
    names += ["select lower", "SELECT", "", "X" * 40]
    operation, reason = _Bounded(MAX_OPERATION_NAMES), _Bounded(MAX_REASONS)
    expected: Counter[tuple[str, str]] = Counter()
    for round_ in range(3):
        for n, name in enumerate(names):
            outcome = ("ok", "error", "skipped", f"odd{n}")[(n + round_) % 4]
            metrics.emit_all([_query(name, 1.0, outcome=outcome)])
            label = operation(name) if re.fullmatch(r"[A-Z][A-Z ]{0,31}", name) else "OTHER"
            expected[(label, reason(outcome))] += 1
    assert metrics.statements == expected


def test_proxy_events_are_counted_from_their_records() -> None:
    metrics = MetricsSink()
    metrics.emit_all(
        [
            Record("upstream.unreachable", "error", {"session": "a", "upstream": "db:5432", "reason": "refused"}),
            Record("session.ended", "info", {"session": "a", "reason": "upstream_unreachable", "bytes_from_client": 8}),
            Record("log.dropped", "warning", {"dropped_total": 7, "dropped_since_last_report": 7}),
            Record("log.dropped", "warning", {"dropped_total": 9, "dropped_since_last_report": 2}),
            Record("session.anomaly", "warning", {"session": "b", "kind": "desynchronized"}),
            Record("cancel.forwarded", "info", {"reason": "client_request"}),
            Record("session.auth_failed", "warning", {"session": "c", "sqlstate": "28P01"}),
        ]
    )
    got = samples(metrics)
    assert got[("pgproxy_upstream_connect_failures_total", ())] == 1
    assert got[("pgproxy_log_lines_dropped_total", ())] == 9
    assert got[("pgproxy_anomalies_total", (("kind", "desynchronized"),))] == 1
    assert got[("pgproxy_cancels_total", (("outcome", "forwarded"), ("reason", "client_request")))] == 1
    assert got[("pgproxy_errors_total", (("sqlstate_class", "28"),))] == 1
    # A session that never started (refused before its StartupMessage) is not a session.
    assert (
        got[("pgproxy_sessions_total", ())] == 0
        and got[("pgproxy_bytes_total", (("direction", "client_to_server"),))] == 0
    )


def test_refusals_are_labelled_by_their_kind(pg: EmbeddedPostgres) -> None:
    """session.refused's own refusal field is the label: not one catch-all for every refusal."""
    metrics = MetricsSink("uvloop")
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(), consumers=[metrics]) as proxy:
        # tls.client_mode is refuse: a client that insists on TLS hangs up after 'N'.
        with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
            psycopg.connect(proxy.dsn(sslmode="require", gssencmode="disable"), connect_timeout=10)
        # A second SSLRequest on one connection: FATAL 0A000.
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
            sock.sendall(startup_packet(SSL_REQUEST_CODE))
            assert sock.recv(1) == b"N"
            sock.sendall(startup_packet(SSL_REQUEST_CODE))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert b"C0A000\x00" in data
        proxy.wait_idle()
        refusals = sorted(r["refusal"] for r in proxy.events("session.refused"))
        got = samples(metrics)
    assert refusals == ["repeated_negotiation", "tls_refused"]
    rejected = {labels: v for (name, labels), v in got.items() if name == "pgproxy_sessions_rejected_total"}
    assert rejected == {(("reason", "repeated_negotiation"),): 1, (("reason", "tls_refused"),): 1}


def test_a_refusal_without_a_word_for_its_kind_is_other() -> None:
    """A session.refused record without a refusal kind is counted as OTHER, never labelled with its sentence."""
    metrics = MetricsSink("asyncio")
    metrics.emit_all([Record("session.refused", "warning", {"session": "s1", "reason": "a sentence, not a label"})])
    assert samples(metrics)[("pgproxy_sessions_rejected_total", (("reason", "OTHER"),))] == 1


def test_metric_values_after_a_known_workload(pg: EmbeddedPostgres) -> None:
    metrics = MetricsSink("uvloop")
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(), consumers=[metrics], max_connections=2) as proxy:
        with psycopg.connect(proxy.dsn(sslmode="disable"), autocommit=True) as a:
            a.execute("SELECT 1")
            a.execute("SELECT pg_sleep(0.6)")
            with pytest.raises(psycopg.errors.DivisionByZero):
                a.execute("SELECT 1/0")
            with psycopg.connect(proxy.dsn(sslmode="disable"), autocommit=True) as b:
                b.execute("INSERT INTO users (username) VALUES ('metrics') RETURNING id")
                b.execute("DELETE FROM users WHERE username = 'metrics'")
                assert b"C53300\x00" in _refused_startup(proxy.host, proxy.port)
        proxy.wait_idle()
        ended = proxy.events("session.ended")
        got = samples(metrics)
    assert got[("pgproxy_sessions_total", ())] == 2
    assert got[("pgproxy_sessions_open", ())] == 0
    assert got[("pgproxy_sessions_rejected_total", (("reason", "max_connections"),))] == 1
    assert got[("pgproxy_sessions_ended_total", (("reason", "client_terminated"),))] == 2
    statements = {labels: v for (name, labels), v in got.items() if name == "pgproxy_statements_total"}
    assert statements == {
        (("db_operation_name", "SELECT"), ("outcome", "ok")): 2,
        (("db_operation_name", "SELECT"), ("outcome", "error")): 1,
        (("db_operation_name", "INSERT"), ("outcome", "ok")): 1,
        (("db_operation_name", "DELETE"), ("outcome", "ok")): 1,
    }
    assert got[("pgproxy_errors_total", (("sqlstate_class", "22"),))] == 1
    select = (("db_operation_name", "SELECT"), ("db_system_name", "postgresql"))
    assert got[("db_client_operation_duration_seconds_count", select)] == 3
    # pg_sleep(0.6) cannot be faster than 0.6 s: it is above le=0.5 whatever the machine.
    assert got[("db_client_operation_duration_seconds_bucket", (*select, ("le", "0.5")))] == 2
    assert got[("db_client_operation_duration_seconds_bucket", (*select, ("le", "+Inf")))] == 3
    # Bytes and messages are the sums of what session.ended reported, to the byte.
    started = [e for e in ended if "user" in e]
    for key, direction in (("client", "client_to_server"), ("server", "server_to_client")):
        assert got[("pgproxy_bytes_total", (("direction", direction),))] == sum(e[f"bytes_from_{key}"] for e in started)
        assert got[("pgproxy_messages_total", (("direction", direction),))] == sum(
            e[f"messages_from_{key}"] for e in started
        )
