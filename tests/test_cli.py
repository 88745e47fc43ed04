"""Configuration and the command line: clear errors, exit code 2, documented defaults."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tomllib
from pathlib import Path

import psycopg
import pytest

from pgproxy.config import OPTIONS, ConfigError, env_name, load, parse_hostport
from pgproxy.demo.embedded import EmbeddedPostgres, free_port
from tests.golden import recordings
from tests.harness import PGPROXY, wait_listening

ROOT = Path(__file__).resolve().parent.parent
#: proxy.started's fields, as the README's table lists them.
PROXY_STARTED_FIELDS = {"listen", "upstream", "loop", "detail", "tls_client_mode", "version"}


def _flatten(table: dict, prefix: str = "") -> dict:  # type: ignore[type-arg]
    out = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_example_config_documents_every_option_with_its_default() -> None:
    example = _flatten(tomllib.loads((ROOT / "config.example.toml").read_text()))
    options = {o.key: o.default for o in OPTIONS}
    assert set(example) == set(options)
    for key, default in options.items():
        assert example[key] == (list(default) if isinstance(default, tuple) else default), key
    assert load(ROOT / "config.example.toml", env={}).values == load(env={}).values


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[log]\ndetail = "message"\n[proxy]\nupstream = "db:5433"\n')
    config = load(cfg, env={"PGPROXY_LOG_DETAIL": "wire"}, overrides={"proxy.upstream": "postgres://u:p@other:6000/db"})
    assert config["log.detail"] == "wire"
    assert config.upstream == ("other", 6000)
    assert config.sources["log.detail"] == "environment PGPROXY_LOG_DETAIL"
    assert env_name("query.filter.sample_rate") == "PGPROXY_QUERY_FILTER_SAMPLE_RATE"


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ('[log]\ndetail = "verbose"\n', "log.detail", "choose one of connection, query, message, wire"),
        ("[limits]\nmax_frame = 12\n", "limits.max_frame", "at least 1024"),
        ('[proxy]\nlisten = "host:99999"\n', "proxy.listen", "outside 1..65535"),
        ("[log]\nunknown_key = 1\n", "log.unknown_key", "unknown option"),
        ("[proxy\n", "config", "invalid TOML"),
        ('[query.filter]\nsql_pattern = "("\n', "query.filter.sql_pattern", "regular expression"),
    ],
)
def test_bad_config_names_key_and_value(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(cfg, env={})
    assert err.value.key == key and fragment in str(err.value)
    out = subprocess.run([*PGPROXY, "--config", str(cfg)], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2
    assert out.stderr.startswith("pgproxy: invalid configuration:") and key in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bad_environment_value_and_flag() -> None:
    env = {**os.environ, "PGPROXY_QUERY_FILTER_SAMPLE_RATE": "2"}
    out = subprocess.run(PGPROXY, capture_output=True, text=True, env=env, timeout=30, check=False)
    assert out.returncode == 2 and "PGPROXY_QUERY_FILTER_SAMPLE_RATE" in out.stderr and "at most 1" in out.stderr
    out = subprocess.run([*PGPROXY, "--upstream", "ftp://x"], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2 and "proxy.upstream" in out.stderr
    out = subprocess.run([*PGPROXY, "--log-detail", "loud"], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2


def test_missing_config_file() -> None:
    out = subprocess.run(
        [*PGPROXY, "--config", "/nonexistent/x.toml"], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 2 and "file not found" in out.stderr


def test_hostport_forms() -> None:
    assert parse_hostport("db", 5432) == ("db", 5432)
    assert parse_hostport(":7000", 5432) == ("127.0.0.1", 7000)
    assert parse_hostport("[::1]:6000", 5432) == ("::1", 6000)
    assert parse_hostport("postgresql://app@db.internal/app", 5432) == ("db.internal", 5432)


def test_version_and_help() -> None:
    out = subprocess.run([*PGPROXY, "--version"], capture_output=True, text=True, timeout=30, check=True)
    assert re.match(r"pgproxy \d+\.\d+\.\d+", out.stdout)
    out = subprocess.run([*PGPROXY, "--help"], capture_output=True, text=True, timeout=30, check=True)
    assert "--upstream" in out.stdout and "--log-detail" in out.stdout


def test_run_proxy_process_end_to_end(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    """`pgproxy --listen --upstream` with no subcommand: JSON lines on stdout, clean SIGTERM exit."""
    port = free_port()
    log_file = tmp_path / "pgproxy.jsonl"
    proc = subprocess.Popen(
        [
            *PGPROXY,
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"127.0.0.1:{pg.port}",
            "--log-detail",
            "query",
            "--log-file",
            str(log_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(port, proc, timeout=20)
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres") as conn:
            assert conn.execute("SELECT email FROM users WHERE username = 'Demo'").fetchone() == ("demo@aa.io",)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "proxy.started" and names[-1] == "proxy.stopped"
    assert events[0]["loop"] == "uvloop"
    (query,) = [e for e in events if e["event"] == "query" and "Demo" in e["db.query.text"]]
    assert query["rows"] == 1 and query["db.namespace"] == "postgres"
    assert "session.ended" in names
    assert [json.loads(line)["event"] for line in log_file.read_text().splitlines()] == names


def test_decode_raw_bytes_and_hexdumps(tmp_path: Path) -> None:
    (conn,) = recordings()["psql"]
    frontend = b"".join(d for f, d in conn if f)
    backend = b"".join(d for f, d in conn if not f)
    raw = tmp_path / "backend.bin"
    raw.write_bytes(backend)
    out = subprocess.run(
        [*PGPROXY, "decode", str(raw), "--direction", "backend"], capture_output=True, text=True, timeout=60, check=True
    )
    types = [json.loads(line).get("type") for line in out.stdout.splitlines()]
    assert "RowDescription" in types and "DataRow" in types and "ErrorResponse" in types
    # A whole conversation as a hex dump of bare protocol bytes, in xxd's format when xxd exists.
    both = tmp_path / "frontend.bin"
    both.write_bytes(frontend)
    dump = _xxd(frontend)
    (tmp_path / "f.txt").write_text(dump)
    out = subprocess.run(
        [*PGPROXY, "decode", str(tmp_path / "f.txt")], capture_output=True, text=True, timeout=60, check=True
    )
    queries = [json.loads(line) for line in out.stdout.splitlines()]
    assert any("username = 'Demo'" in (e.get("query") or "") for e in queries)


def _xxd(data: bytes) -> str:
    if shutil.which("xxd"):
        return subprocess.run(["xxd", "-"], input=data, capture_output=True, check=True).stdout.decode()
    lines = []
    for off in range(0, len(data), 16):
        row = data[off : off + 16]
        groups = " ".join(row[i : i + 2].hex() for i in range(0, len(row), 2))
        lines.append(f"{off:08x}: {groups:<39}  " + "".join(chr(b) if 32 <= b < 127 else "." for b in row))
    return "\n".join(lines) + "\n"


def test_decode_missing_file_is_a_clear_error() -> None:
    out = subprocess.run(
        [*PGPROXY, "decode", "/nonexistent.bin"], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 2 and "cannot read /nonexistent.bin" in out.stderr


@pytest.mark.slow
def test_demo_command_shows_the_decoded_conversation() -> None:
    """The README's first command: the Wireshark view of the ORM's SELECT, then cleanup."""
    out = subprocess.run(
        [*PGPROXY, "demo", "--log-format", "json"], capture_output=True, text=True, timeout=300, check=True
    )
    events = [json.loads(line) for line in out.stdout.splitlines()]
    columns = ["users_id", "users_username", "users_email", "users_hashed_password"]
    (i,) = [
        n
        for n, e in enumerate(events)
        if e.get("type") == "RowDescription" and [c["name"] for c in e["columns"]] == columns
    ]
    row, complete, ready = events[i + 1], events[i + 2], events[i + 3]
    assert row["type"] == "DataRow"
    assert row["row"] == {
        "users_id": 1,
        "users_username": "Demo",
        "users_email": "demo@aa.io",
        "users_hashed_password": "[redacted]",
    }
    assert (complete["type"], complete["command_tag"]) == ("CommandComplete", "SELECT 1")
    assert ready["type"] == "ReadyForQuery"
    assert "pbkdf2" not in out.stdout
    assert events[-1]["event"] == "demo.finished"
    (started,) = [e for e in events if e["event"] == "proxy.started"]
    assert set(started) - {"event", "level", "timestamp"} == PROXY_STARTED_FIELDS  # the README's table
    assert started["listen"] == [f"127.0.0.1:{started['listen'][0].rsplit(':', 1)[1]}"]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_started_event_names_addresses_as_configured_and_the_hash_key_source(pg: EmbeddedPostgres) -> None:
    """proxy.started: the README's fields, IPv6 in brackets, and which hash key is in use (never the key)."""
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine: bracketed IPv6 addresses NOT tested")
    port = free_port()
    key = "k3y-that-must-never-be-logged"
    env = {**os.environ, "PGPROXY_REDACTION_PARAMETERS": "hash", "PGPROXY_REDACTION_HASH_KEY": key}
    proc = subprocess.Popen(
        [*PGPROXY, "--listen", f"[::1]:{port}", "--upstream", f"127.0.0.1:{pg.port}", "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        assert started["event"] == "proxy.started", started
        with psycopg.connect(f"postgresql://postgres@[::1]:{port}/postgres?sslmode=disable") as conn:
            conn.execute("SELECT email FROM users WHERE username = %s", ("Demo",)).fetchall()
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert set(started) >= PROXY_STARTED_FIELDS
    assert started["listen"] == [f"[::1]:{port}"]
    assert started["upstream"] == f"127.0.0.1:{pg.port}"
    assert started["redaction.hash_key"] == "configured"
    (query,) = [
        e for e in map(json.loads, stdout.splitlines()) if e["event"] == "query" and "users" in e["db.query.text"]
    ]
    assert query["parameters"] == ["hmac-sha256:" + hmac.new(key.encode(), b"Demo", hashlib.sha256).hexdigest()[:16]]
    assert query["client.address"] == "::1"
    assert key not in stdout + stderr + json.dumps(started)
    # The README's rule: events about a connection carry its session, the proxy's own do not.
    events = [started, *(json.loads(line) for line in stdout.splitlines())]
    per_connection = {"session", "query", "message", "notice", "notification", "tls", "upstream", "auth"}
    assert {e["event"] for e in events} >= {"proxy.started", "session.started", "query", "session.ended"}
    for e in events:
        assert ("session" in e) == (e["event"].split(".")[0] in per_connection), e


def test_sink_stamps_levels_timestamps_and_withholds_secret_keys() -> None:
    import io

    from pgproxy.sink import LogSink

    stream = io.StringIO()
    sink = LogSink(stream=stream, fmt="json")
    sink.log("warning", "custom.event", password="hunter2", token="abc", note="kept")
    sink.close()
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert event["level"] == "warning" and event["event"] == "custom.event" and event["note"] == "kept"
    assert event["password"] == "[redacted]" and event["token"] == "[redacted]"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["timestamp"])
    assert "hunter2" not in line
