"""``proxy.workers``: several processes behind one port, one log, no interleaved lines."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from pgproxy.demo.embedded import EmbeddedPostgres, free_port
from tests.harness import PGPROXY, exited, wait_listening, wait_until

_WIRE_JSON = ["--log-detail", "wire", "--log-format", "json", "--log-file"]


def _wait_started(log_file: Path, workers: int, proc: subprocess.Popen[str]) -> None:
    wait_until(
        lambda: log_file.exists() and log_file.read_text().count('"proxy.started"') >= workers,
        30,
        lambda: "the workers did not all start",
        lambda: exited(proc),
    )


async def _clients(port: int, count: int) -> None:
    async def one(i: int) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres", ssl=False)
        try:
            for _ in range(3):
                # Rows and hex dumps far longer than PIPE_BUF (4096 bytes), from both workers at once.
                value = await conn.fetchval("SELECT repeat(md5($1::text), 200)", str(i))
                assert len(value) == 6400
        finally:
            await conn.close()

    await asyncio.gather(*(one(i) for i in range(count)))


@pytest.mark.slow
def test_two_workers_share_the_port_and_the_log(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    port = free_port()
    log_file = tmp_path / "pgproxy.jsonl"
    proc = subprocess.Popen(
        [*PGPROXY, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{pg.port}", *_WIRE_JSON, str(log_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PGPROXY_PROXY_WORKERS": "2"},
    )
    sessions = 32
    try:
        wait_listening(port, proc)
        _wait_started(log_file, 2, proc)  # both listening, or the kernel gives every client to the first
        asyncio.run(_clients(port, sessions))
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    for text in (stdout, log_file.read_text()):
        events = [json.loads(line) for line in text.splitlines()]  # a torn line would not parse
        kinds = Counter(e["event"] for e in events)
        started = [e for e in events if e["event"] == "proxy.started"]
        assert sorted(e["worker"] for e in started) == [0, 1] and {e["workers"] for e in started} == {2}
        assert kinds["proxy.stopped"] == 2
        ids = [e["session"] for e in events if e["event"] == "session.started"]
        assert len(ids) == len(set(ids)) == sessions
        # (the start-up probe's connection ends without starting a session)
        assert {e["session"] for e in events if e["event"] == "session.ended"} >= set(ids)
        # One random prefix for the proxy, then the worker's index: both workers served sessions.
        assert len({i[:4] for i in ids}) == 1 and {i[4:6] for i in ids} == {"00", "01"}
        assert max(len(line) for line in text.splitlines()) > 4096
        assert kinds["message"] > 0


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_a_dead_worker_stops_the_others(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    """A worker killed from outside: the parent stops the rest and exits with the worker's status."""
    port = free_port()
    log_file = tmp_path / "pgproxy.jsonl"
    proc = subprocess.Popen(
        [*PGPROXY, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{pg.port}", "--log-file", str(log_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PGPROXY_PROXY_WORKERS": "2"},
    )
    try:
        wait_listening(port, proc)
        _wait_started(log_file, 2, proc)
        workers = _children(proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        assert proc.wait(timeout=60) == 128 + signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [e["event"] for e in events].count("proxy.stopped") == 1  # the survivor stopped cleanly
    assert not _children(proc.pid)
