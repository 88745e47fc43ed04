"""The memory-BIO TLS channel on its own: two channels wired back to back, any chunking."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from pgproxy.proxy.tls import (
    ALPN_POSTGRESQL,
    HandshakeState,
    TLSChannel,
    TLSConfigError,
    certificate_der,
    client_tls_context,
    describe_error,
    upstream_tls,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path, Path, Path]:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    base = tmp_path_factory.mktemp("pki")
    cert, key, ca_file = base / "leaf.crt", base / "leaf.key", base / "ca.pem"
    cert.write_bytes(leaf.cert_chain_pems[0].bytes())
    key.write_bytes(leaf.private_key_pem.bytes())
    ca_file.write_bytes(ca.cert_pem.bytes())
    return ca, cert, key, ca_file


def _pair(pki: tuple[trustme.CA, Path, Path, Path], mode: str = "verify-full", name: str = "localhost"):  # type: ignore[no-untyped-def]
    _ca, cert, key, ca_file = pki
    server_out: list[bytes] = []
    client_out: list[bytes] = []
    server = TLSChannel(client_tls_context(str(cert), str(key)), True, server_out.append)
    upstream = upstream_tls(mode, name, ca_file=str(ca_file))
    assert upstream.context is not None
    upstream.context.set_alpn_protocols([ALPN_POSTGRESQL])
    client = TLSChannel(upstream.context, False, client_out.append, server_hostname=upstream.server_name)
    return server, server_out, client, client_out


def _pump(src: list[bytes], dst: TLSChannel, step: int) -> bytes:
    data = b"".join(src)
    src.clear()
    plain = b""
    for i in range(0, len(data), step):
        plain += dst.receive(data[i : i + step])
    return plain


@pytest.mark.parametrize("step", [1, 7, 65536])
def test_handshake_and_data_whatever_the_chunking(pki, step: int) -> None:  # type: ignore[no-untyped-def]
    server, server_out, client, client_out = _pair(pki)
    client.start()
    for _ in range(10):
        _pump(client_out, server, step)
        _pump(server_out, client, step)
        if server.state is client.state is HandshakeState.ESTABLISHED:
            break
    assert server.state is client.state is HandshakeState.ESTABLISHED
    assert server.selected_alpn() == ALPN_POSTGRESQL and server.info()["tls.protocol.version"] == "1.3"
    message = b"Q\x00\x00\x00\x0dSELECT 1\x00" * 1000
    client.send(message)
    assert _pump(client_out, server, step) == message
    server.send(b"Z\x00\x00\x00\x05I")
    assert _pump(server_out, client, step) == b"Z\x00\x00\x00\x05I"
    assert client.peer_certificate_der() == certificate_der(str(pki[1]))
    client.close()
    _pump(client_out, server, step)
    assert server.state is HandshakeState.CLOSED  # close_notify seen


def test_a_wrong_name_fails_with_openssls_words(pki) -> None:  # type: ignore[no-untyped-def]
    server, server_out, client, client_out = _pair(pki, name="db.example")
    client.start()
    _pump(client_out, server, 65536)
    with pytest.raises(ssl.SSLCertVerificationError) as failure:
        _pump(server_out, client, 65536)
    reason = describe_error(failure.value)
    assert reason.startswith("certificate verify failed: Hostname mismatch") and "db.example" in reason


def test_configuration_errors_name_the_option(pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _ca, cert, key, _ca_file = pki
    with pytest.raises(TLSConfigError, match=r"tls.client_key_file"):
        client_tls_context(str(cert), str(tmp_path / "missing.key"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TLSConfigError, match=r"tls.client_cert_file"):
        client_tls_context(str(garbage), str(key))
    with pytest.raises(TLSConfigError, match=r"tls.upstream_ca_file"):
        upstream_tls("verify-ca", "db", ca_file=str(garbage))
    assert upstream_tls("disable", "db").context is None
    assert upstream_tls("require", "10.0.0.1").server_name is None  # no SNI for an IP address
    assert upstream_tls("verify-full", "10.0.0.1").server_name == "10.0.0.1"  # but verified against it
    assert upstream_tls("require", "db", server_name="db.internal").server_name == "db.internal"
