"""The suite's own servers: at least two PostgreSQL majors, started as a non-root user if need be."""

from __future__ import annotations

import os

from pgproxy.demo.embedded import EmbeddedPostgres
from tests.conftest import INSTALLS


def test_two_server_versions_are_available() -> None:
    assert len(INSTALLS) >= 2, f"only PostgreSQL {[i.major for i in INSTALLS]} found"
    assert len({i.major for i in INSTALLS}) == len(INSTALLS)


def test_server_answers_and_runs_unprivileged(any_pg: EmbeddedPostgres) -> None:
    version = any_pg.psql("SHOW server_version_num").strip()
    assert int(version) // 10000 == any_pg.major
    owner_uid = any_pg.datadir.stat().st_uid if any_pg.datadir else None
    if os.geteuid() == 0:
        assert owner_uid != 0, "PostgreSQL refuses to run as root; the data directory must belong to another user"
