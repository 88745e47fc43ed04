"""Re-record the golden conversations under tests/data from a real PostgreSQL.

Run: ``python -m tests.record_golden`` (starts its own server). Each file holds
the chunks exactly as a relay between client and server received them, with
their direction, so tests can replay them through the decoder in any chunking.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import psycopg

from pgproxy.demo.embedded import EmbeddedPostgres, find_installation
from tests.conftest import _HBA, PASSWORDS, SETUP_SQL
from tests.harness import RecordingRelay

DATA = Path(__file__).parent / "data"


def _psql(pg: EmbeddedPostgres, port: int) -> None:
    script = """
SELECT id, username, email FROM users WHERE username = 'Demo';
CREATE TEMP TABLE t (a int, b text);
INSERT INTO t VALUES (1, 'one'), (2, NULL);
SELECT * FROM t; SELECT 1/0;
"""
    subprocess.run(
        [pg.tool("psql"), "-X", "-d", f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _asyncpg(pg: EmbeddedPostgres, port: int) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", ssl=False)
        await conn.fetch("SELECT id, username, email FROM users WHERE id = $1", 1)
        await conn.fetch("SELECT 1.5::numeric AS n, now()::date AS d, ARRAY[1,NULL,3] AS a, '{\"k\": 1}'::jsonb AS j")
        await conn.close()

    asyncio.run(run())


def _psycopg(pg: EmbeddedPostgres, port: int) -> None:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable") as conn:
        conn.execute("SELECT id, username, email FROM users WHERE username = %s", ("Demo",)).fetchall()
        with conn.cursor(binary=True) as cur:
            cur.execute("SELECT id, username, email, 2.25::float8 AS f FROM users WHERE id = %s", (1,))
            cur.fetchall()


def _pgbench(pg: EmbeddedPostgres, port: int) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable"
    subprocess.run(
        [pg.tool("pgbench"), "-n", "-M", "extended", "-S", "-t", "5", "-d", dsn],
        capture_output=True,
        check=True,
        timeout=60,
    )


def _copy(pg: EmbeddedPostgres, port: int) -> None:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable") as conn:
        conn.execute("CREATE TEMP TABLE c (a int, b text)")
        with conn.cursor() as cur:
            with cur.copy("COPY c FROM STDIN") as copy:
                for i in range(50):
                    copy.write_row((i, f"row {i}"))
            with cur.copy("COPY c TO STDOUT") as copy:
                for _ in copy:
                    pass


def _notify(pg: EmbeddedPostgres, port: int) -> None:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable", autocommit=True) as conn:
        conn.execute("LISTEN chan")
        conn.execute("NOTIFY chan, 'payload 1'")
        conn.execute("DO $$ BEGIN RAISE NOTICE 'a notice'; END $$")


def _scram(pg: EmbeddedPostgres, port: int) -> None:
    pw = PASSWORDS["scram_user"]
    with psycopg.connect(f"postgresql://scram_user:{pw}@127.0.0.1:{port}/postgres?sslmode=disable") as conn:
        conn.execute("SELECT current_user").fetchall()


def _outcomes(pg: EmbeddedPostgres, port: int) -> None:
    """What the server did, told apart: Bind failures, suspended portals, multi-statement Queries."""
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    async def run() -> None:
        conn = await asyncpg.connect(dsn, ssl=False)
        try:
            await conn.fetchval("select 1/$1::int", 0)
        except asyncpg.DivisionByZeroError:
            pass
        await conn.fetchrow("select g from generate_series(1, 3) g")
        async with conn.transaction():
            await conn.fetchrow("select g from generate_series(1, 3) g")
            await conn.fetchval("select 2")
        await conn.execute("select 1; select 2")
        await conn.close()

    asyncio.run(run())
    for script in (
        "create temp table rb (i int); insert into rb values (1); select 1/0; select 3",
        "select 1 as s1; selec 2; select 3 as s3",
        "begin; select 1; commit; select 1/0",
    ):
        subprocess.run(
            [pg.tool("psql"), "-X", "-d", f"{dsn}?sslmode=disable", "-c", script],
            capture_output=True,
            check=False,
            timeout=60,
        )
    with psycopg.connect(f"{dsn}?sslmode=disable", autocommit=True) as conn:
        try:
            conn.execute("select %s::int", ("abc",))
        except psycopg.errors.InvalidTextRepresentation:
            pass
        try:
            with conn.pipeline():
                for i in range(3):
                    conn.execute("select %s::int", (i,))
                conn.execute("select 1 / %s::int", (0,))
                conn.execute("select %s::int + 100", (1,))
        except psycopg.errors.DivisionByZero:
            pass


SCENARIOS: dict[str, Callable[[EmbeddedPostgres, int], None]] = {
    "psql": _psql,
    "asyncpg": _asyncpg,
    "psycopg": _psycopg,
    "pgbench_extended": _pgbench,
    "copy": _copy,
    "notify": _notify,
    "scram": _scram,
    "outcomes": _outcomes,
}


def record(pg: EmbeddedPostgres, name: str) -> Path:
    relay = RecordingRelay(("127.0.0.1", pg.port), keep_chunks=True)
    try:
        SCENARIOS[name](pg, relay.port)
        relay.wait_idle()
        time.sleep(0.1)
    finally:
        relay.close()
    connections = [[{"dir": d, "hex": data.hex()} for d, data in r.chunks] for r in relay.recordings if r.chunks]
    path = DATA / f"{name}.json"
    path.write_text(json.dumps({"scenario": name, "server_major": pg.major, "connections": connections}, indent=0))
    return path


def main() -> None:
    """Record every scenario, or those named on the command line."""
    names = sys.argv[1:] or list(SCENARIOS)
    DATA.mkdir(exist_ok=True)
    with EmbeddedPostgres(find_installation(), hba=list(_HBA)) as pg:
        pg.psql(SETUP_SQL)
        subprocess.run([pg.tool("pgbench"), "-i", "-q", "-s", "1", "-d", pg.dsn()], capture_output=True, check=True)
        for name in names:
            print(record(pg, name))


if __name__ == "__main__":
    main()
