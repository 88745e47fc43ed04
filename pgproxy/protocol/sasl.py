"""SASL mechanism negotiation seen from the middle (sans-IO).

SCRAM channel binding (``SCRAM-SHA-256-PLUS``, RFC 5802 and RFC 5929
``tls-server-end-point``) binds the exchange to the TLS certificate of the
connection the client sees. Across pgproxy the client's connection is not the
server's, so:

* a plaintext client must not be offered ``-PLUS`` by a server reached over
  TLS: libpq aborts ("server offered SCRAM-SHA-256-PLUS authentication over a
  non-SSL connection"). :class:`SaslOfferFilter` removes it from the one
  AuthenticationSASL message, length corrected; the exchange that follows is
  untouched (the mechanism list is not part of what SCRAM signs).
* a TLS client that picks ``-PLUS`` binds to pgproxy's certificate; the server
  checks against its own, so the exchange can only verify when pgproxy
  presents the server's certificate. :func:`sasl_initial_mechanism` lets the
  proxy see that choice before forwarding it.

Both work on backend/frontend bytes as they arrive, whatever the chunking.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

#: The channel-binding variant PostgreSQL offers over TLS.
SCRAM_PLUS = "SCRAM-SHA-256-PLUS"

_TAG_AUTHENTICATION = ord("R")
_TAG_ERROR = ord("E")
_AUTH_OK = 0
_AUTH_SASL = 10
#: Start-up messages longer than this are not authentication requests: stop looking.
_MAX_AUTH_MESSAGE = 1 << 16


@dataclass(slots=True)
class SaslOfferFilter:
    """Backend bytes up to the end of authentication, with ``drop`` removed from AuthenticationSASL.

    Feed every backend chunk to :meth:`feed` and forward what it returns;
    once :attr:`done` is true, stop feeding and forward bytes directly. Bytes of
    an incomplete message are held back (a few bytes, for one round trip at most).

    Attributes:
        offered: the mechanisms the server offered, once seen.
        removed: those taken out of the message the client received.
        done: authentication moved on (SASL offer seen, AuthenticationOk, an error,
            or a message too long to be an authentication request).
    """

    drop: frozenset[str] = frozenset((SCRAM_PLUS,))
    offered: tuple[str, ...] | None = None
    removed: tuple[str, ...] = ()
    done: bool = False
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> bytes:
        """Bytes to forward to the client now."""
        if self.done:
            return data
        buf = self._buf
        buf += data
        out = bytearray()
        pos = 0
        while len(buf) - pos >= 5:
            tag = buf[pos]
            (length,) = struct.unpack_from("!I", buf, pos + 1)
            if length < 4 or length > _MAX_AUTH_MESSAGE:
                self.done = True  # not ours to judge: forward as is
                break
            end = pos + 1 + length
            if end > len(buf):
                break
            if tag == _TAG_AUTHENTICATION and length >= 8:
                (code,) = struct.unpack_from("!I", buf, pos + 5)
                if code == _AUTH_SASL:
                    out += self._rewrite(bytes(buf[pos:end]))
                    pos = end
                    self.done = True
                    break
                if code == _AUTH_OK:
                    self.done = True
            elif tag == _TAG_ERROR:
                self.done = True
            out += buf[pos:end]
            pos = end
            if self.done:
                break
        if self.done:
            out += buf[pos:]
            buf.clear()
        else:
            del buf[:pos]
        return bytes(out)

    def _rewrite(self, message: bytes) -> bytes:
        """The AuthenticationSASL message without the dropped mechanisms (unchanged if none is offered)."""
        offered = _mechanisms(message[9:])
        self.offered = offered
        self.removed = tuple(name for name in offered if name in self.drop)
        if not self.removed:
            return message
        kept = tuple(name for name in offered if name not in self.drop)
        payload = struct.pack("!I", _AUTH_SASL) + b"".join(n.encode() + b"\0" for n in kept) + b"\0"
        return b"R" + struct.pack("!I", len(payload) + 4) + payload


def _mechanisms(body: bytes) -> tuple[str, ...]:
    """Names in an AuthenticationSASL body (after the code): C strings ended by an empty one."""
    names = body.split(b"\0")
    out: list[str] = []
    for name in names:
        if not name:
            break
        out.append(name.decode("ascii", "replace"))
    return tuple(out)


class NeedMoreData(Exception):
    """The bytes so far do not hold a complete message."""


def sasl_initial_mechanism(data: bytes | bytearray) -> str | None:
    """The mechanism a SASLInitialResponse at the start of ``data`` chooses.

    Returns None when the first message is not a ``p`` message (the client
    answered something else, e.g. Terminate).

    Raises:
        NeedMoreData: the message is not complete yet.
    """
    if len(data) < 5:
        raise NeedMoreData
    if data[0] != ord("p"):
        return None
    (length,) = struct.unpack_from("!I", data, 1)
    if len(data) < 1 + length:
        raise NeedMoreData
    body = bytes(data[5 : 1 + length])
    name, sep, _rest = body.partition(b"\0")
    return name.decode("ascii", "replace") if sep else None
