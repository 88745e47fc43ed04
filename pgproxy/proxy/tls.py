"""TLS for both legs of a session: contexts from configuration, and a memory-BIO channel.

pgproxy runs TLS itself on top of its plain transports instead of handing a
transport to ``loop.start_tls``: a PostgreSQL 17 direct-TLS client's
ClientHello has already been read (to see its first byte 0x16) before pgproxy
knows TLS is wanted, and ``start_tls`` cannot be given bytes already read.
One :class:`TLSChannel` (an :class:`ssl.SSLObject` between two
:class:`ssl.MemoryBIO`) serves the client leg (server side) and the upstream
leg (client side) alike, and it lets the session bound the handshake by its own
timer and see the negotiated ALPN protocol.

The upstream modes follow libpq's ``sslmode`` ("SSL Support" in the libpq
documentation): ``disable`` never asks, ``prefer`` asks and falls back to
plaintext when the server answers ``N``, ``require`` insists on encryption
(and, as libpq does when a root certificate file exists, verifies the chain
when ``tls.upstream_ca_file`` is set), ``verify-ca`` verifies the chain,
``verify-full`` the chain and the host name.
"""

from __future__ import annotations

import asyncio
import enum
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgproxy.protocol.build import SSL_REQUEST

#: ALPN protocol PostgreSQL 17+ requires for direct TLS ("Protocol Flow: SSL Session Encryption").
ALPN_POSTGRESQL = "postgresql"


class UpstreamMode(enum.Enum):
    """``tls.upstream_mode``: libpq's sslmode values that make sense for a proxy."""

    DISABLE = "disable"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"

    @property
    def asks(self) -> bool:
        """Whether pgproxy sends an SSLRequest to the server."""
        return self is not UpstreamMode.DISABLE

    @property
    def insists(self) -> bool:
        """Whether a server answering ``N`` fails the session."""
        return self not in (UpstreamMode.DISABLE, UpstreamMode.PREFER)


class ClientMode(enum.Enum):
    """``tls.client_mode``: what pgproxy does with a client's SSLRequest or direct TLS."""

    REFUSE = "refuse"
    PASSTHROUGH = "passthrough"
    TERMINATE = "terminate"


class TLSConfigError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file and why."""


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """What pgproxy needs to open TLS towards the server.

    Attributes:
        mode: libpq sslmode meaning.
        context: the client-side context (None when mode is ``disable``).
        server_name: sent as SNI and checked by ``verify-full``; None sends no SNI
            (an IP address literal is never sent as SNI, as RFC 6066 forbids).
    """

    mode: UpstreamMode
    context: ssl.SSLContext | None
    server_name: str | None


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def upstream_tls(
    mode: str,
    host: str,
    ca_file: str = "",
    cert_file: str = "",
    key_file: str = "",
    server_name: str = "",
) -> UpstreamTLS:
    """Build the upstream leg's TLS settings.

    Args:
        mode: one of :class:`UpstreamMode`'s values.
        host: the upstream host as configured (the default server name).
        ca_file: PEM bundle of trusted CAs; empty means the system's store.
        cert_file, key_file: a client certificate for servers that authenticate by certificate.
        server_name: overrides ``host`` for SNI and host-name verification.

    Raises:
        TLSConfigError: a file cannot be read or does not hold what it should.
    """
    upstream_mode = UpstreamMode(mode)
    name = server_name or host
    if not upstream_mode.asks:
        return UpstreamTLS(upstream_mode, None, None)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # PostgreSQL's ssl_min_protocol_version default
    verify = upstream_mode in (UpstreamMode.VERIFY_CA, UpstreamMode.VERIFY_FULL) or bool(ca_file)
    if verify:
        ctx.check_hostname = upstream_mode is UpstreamMode.VERIFY_FULL
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if ca_file:
                ctx.load_verify_locations(cafile=ca_file)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"tls.upstream_ca_file {ca_file!r}: {_reason(exc)}") from None
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file or key_file:
        _load_chain(ctx, cert_file, key_file, "tls.upstream_cert_file", "tls.upstream_key_file")
    sni = None if _is_ip(name) else name
    if upstream_mode is UpstreamMode.VERIFY_FULL and sni is None:
        # Verify an IP literal against the certificate's IP SANs; no SNI is sent.
        return UpstreamTLS(upstream_mode, ctx, name.strip("[]"))
    return UpstreamTLS(upstream_mode, ctx, sni)


def client_tls_context(cert_file: str, key_file: str, ca_file: str = "") -> ssl.SSLContext:
    """The server-side context pgproxy presents to clients in ``terminate`` mode.

    ALPN offers ``postgresql`` (required for direct TLS, accepted for SSLRequest
    negotiation); with ``ca_file`` set, clients must present a certificate
    signed by it, as with PostgreSQL's ``clientcert=verify-ca``.

    Raises:
        TLSConfigError: a file is missing, unreadable, or the key does not match.
    """
    if not cert_file or not key_file:
        raise TLSConfigError("tls.client_mode = terminate needs tls.client_cert_file and tls.client_key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([ALPN_POSTGRESQL])
    ctx.sni_callback = _remember_sni
    _load_chain(ctx, cert_file, key_file, "tls.client_cert_file", "tls.client_key_file")
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"tls.client_ca_file {ca_file!r}: {_reason(exc)}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _remember_sni(obj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
    """Keep the client's SNI on its SSLObject, for the ``tls.established`` record."""
    obj.sni = server_name


def certificate_der(cert_file: str) -> bytes | None:
    """DER of the first certificate in a PEM file (what tls-server-end-point hashes), if readable."""
    try:
        text = Path(cert_file).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        return None
    try:
        return ssl.PEM_cert_to_DER_cert(text[start : stop + len(end)] + "\n")
    except ValueError:
        return None


def _load_chain(ctx: ssl.SSLContext, cert_file: str, key_file: str, cert_key: str, key_key: str) -> None:
    if not cert_file or not key_file:
        raise TLSConfigError(f"{cert_key} and {key_key} must be given together")
    for key, path in ((cert_key, cert_file), (key_key, key_file)):
        if not Path(path).is_file():
            raise TLSConfigError(f"{key} {path!r}: file not found")
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"{cert_key} {cert_file!r} / {key_key} {key_file!r}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.strerror or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a failed handshake, in OpenSSL's words where they exist.

    ``certificate verify failed: Hostname mismatch, certificate is not valid for 'x'``
    rather than the bare class name.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        if exc.reason:  # OpenSSL's reason code, e.g. PEER_DID_NOT_RETURN_A_CERTIFICATE
            return exc.reason.replace("_", " ").lower()
        return str(exc)
    return str(exc) or type(exc).__name__


def _distinguished_name(subject: Any) -> str:
    """``CN=cert_user,O=...`` from the nested tuples :meth:`ssl.SSLObject.getpeercert` returns."""
    names = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C"}
    parts = [f"{names.get(key, key)}={value}" for rdn in subject for key, value in rdn]
    return ",".join(parts)


class HandshakeState(enum.Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"


class TLSChannel:
    """TLS over an existing transport, driven by the bytes the transport delivers.

    Args:
        context: client or server context.
        server_side: True on the client leg (pgproxy is the TLS server).
        write: sends ciphertext to the peer (the transport's ``write``).
        server_hostname: SNI / verification name on the upstream leg.
        on_established: called once when the handshake completes.

    :meth:`receive` takes ciphertext and returns the plaintext it held;
    :meth:`send` takes plaintext. Errors (:class:`ssl.SSLError`) propagate
    to the caller, which ends the session with a reason from
    :func:`describe_error`.
    """

    __slots__ = ("_in", "_obj", "_out", "_write", "on_established", "state")

    def __init__(
        self,
        context: ssl.SSLContext,
        server_side: bool,
        write: Callable[[bytes], Any],
        server_hostname: str | None = None,
        on_established: Callable[[], None] | None = None,
    ) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=server_hostname)
        self._write = write
        self.on_established = on_established
        self.state = HandshakeState.HANDSHAKING

    def start(self) -> None:
        """Begin the handshake (sends the ClientHello on the upstream leg)."""
        self._handshake()

    def receive(self, data: bytes) -> bytes:
        """Feed ciphertext; return whatever plaintext it completes (may be empty)."""
        self._in.write(data)
        if self.state is HandshakeState.HANDSHAKING and not self._handshake():
            return b""
        chunks: list[bytes] = []
        obj = self._obj
        while True:
            try:
                chunk = obj.read(262144)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.state = HandshakeState.CLOSED
                break
            if not chunk:  # close_notify (no data would raise SSLWantReadError): the transport's EOF follows
                self.state = HandshakeState.CLOSED
                break
            chunks.append(chunk)
        self._flush()  # TLS 1.3 key updates and the like may want to answer
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt plaintext and write it to the peer."""
        if self.state is HandshakeState.CLOSED:
            return
        self._obj.write(data)
        self._flush()

    def close(self) -> None:
        """Send close_notify, best effort (the transport closes right after)."""
        if self.state is not HandshakeState.ESTABLISHED:
            return
        self.state = HandshakeState.CLOSED
        try:
            self._obj.unwrap()
        except ssl.SSLError:
            pass
        self._flush()

    @property
    def buffered(self) -> int:
        """Ciphertext received but not yet consumed (bytes sent after the handshake's end)."""
        return self._in.pending

    def info(self) -> dict[str, Any]:
        """What was negotiated, with OpenTelemetry's ``tls.*`` attribute names."""
        obj = self._obj
        cipher = obj.cipher()
        version = obj.version() or ""
        fields: dict[str, Any] = {
            "tls.protocol.version": version.removeprefix("TLSv"),
            "tls.cipher": cipher[0] if cipher else None,
        }
        alpn = obj.selected_alpn_protocol()
        if alpn:
            fields["tls.next_protocol"] = alpn
        if obj.server_side:
            sni = getattr(obj, "sni", None)
            if sni:
                fields["tls.client.server_name"] = sni
            peer = obj.getpeercert()  # verified client certificates only (tls.client_ca_file)
            if peer:
                fields["tls.client.subject"] = _distinguished_name(peer.get("subject", ()))
        return fields

    def selected_alpn(self) -> str | None:
        return self._obj.selected_alpn_protocol()

    def peer_certificate_der(self) -> bytes | None:
        return self._obj.getpeercert(binary_form=True)

    def _handshake(self) -> bool:
        """Advance the handshake; True once it is complete."""
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except ssl.SSLError:
            self._flush()  # the alert, so the peer learns why
            self.state = HandshakeState.CLOSED
            raise
        self._flush()
        self.state = HandshakeState.ESTABLISHED
        if self.on_established is not None:
            self.on_established()
        return self.state is HandshakeState.ESTABLISHED

    def _flush(self) -> None:
        out = self._out
        if out.pending:
            self._write(out.read())


class UpstreamRefusedTLS(ConnectionError):
    """The server answered the SSLRequest with something other than ``S`` while the mode insists."""


async def open_upstream_stream(
    host: str, port: int, tls: UpstreamTLS
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str | None]:
    """A stream connection to the server with the upstream leg's TLS (for CancelRequests).

    Returns the streams and the TLS version in use (None when plaintext,
    e.g. ``prefer`` against a server without TLS).

    Raises:
        OSError, ssl.SSLError: the connection or the handshake failed.
        UpstreamRefusedTLS: the server refused TLS and the mode insists.
    """
    reader, writer = await asyncio.open_connection(host, port)
    if not tls.mode.asks or tls.context is None:
        return reader, writer, None
    try:
        writer.write(SSL_REQUEST)
        await writer.drain()
        answer = await reader.readexactly(1)
        if answer != b"S":
            if tls.mode.insists:
                raise UpstreamRefusedTLS(
                    f"the server answered {answer!r} to SSLRequest and tls.upstream_mode is {tls.mode.value}"
                )
            return reader, writer, None
        await writer.start_tls(tls.context, server_hostname=tls.server_name)
    except BaseException:
        writer.close()
        raise
    ssl_object = writer.get_extra_info("ssl_object")
    version = ssl_object.version() if ssl_object is not None else None
    return reader, writer, (version or "").removeprefix("TLSv") or None
