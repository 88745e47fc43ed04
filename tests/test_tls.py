"""TLS: refused and decoded in plaintext, or passed through opaquely (SSLRequest and direct TLS)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import trustme

from pgproxy.demo.embedded import EmbeddedPostgres, Installation, installations
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail
from tests.harness import ProxyHarness


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
