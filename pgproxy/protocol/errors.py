"""Typed errors of the sans-IO protocol layer.

Every exception the protocol package raises derives from :class:`ProtocolError`,
so a caller that wants to survive hostile input catches exactly one type.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of everything ``pgproxy.protocol`` raises on bad input."""


class FramingError(ProtocolError):
    """The byte stream cannot be cut into messages any more (desynchronised).

    Raised for a length field below 4, a declared length beyond any message
    PostgreSQL can produce, or an over-long startup packet. After a framing
    error nothing that follows on that direction can be trusted, so the
    conversation stops decoding (forwarding is the proxy's business).

    Attributes:
        direction: ``"frontend"`` or ``"backend"``.
        offset: stream offset (bytes since the start of that direction) of the
            header that could not be framed.
        reason: short human readable reason.
        excerpt: up to 32 bytes starting at the bad header, for the anomaly record.
    """

    def __init__(self, direction: str, offset: int, reason: str, excerpt: bytes) -> None:
        super().__init__(f"{direction} framing error at byte {offset}: {reason}")
        self.direction = direction
        self.offset = offset
        self.reason = reason
        self.excerpt = bytes(excerpt[:32])


class DecodeError(ProtocolError):
    """A framed message's body does not match its documented layout.

    Decoders raise it internally; :func:`pgproxy.protocol.decode_frame` turns it
    into a :class:`~pgproxy.protocol.messages.Malformed` message so that one bad
    message never stops the stream.
    """
