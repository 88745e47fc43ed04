"""Build the few messages pgproxy itself sends (bytes out, no I/O)."""

from __future__ import annotations

import struct


def error_response(severity: str, sqlstate: str, message: str, detail: str | None = None) -> bytes:
    """An ErrorResponse as a server would send it ("Error and Notice Message Fields").

    Both the localised (``S``) and non-localised (``V``) severity are set, so
    clients old and new show it the same way.
    """
    fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", message)]
    if detail:
        fields.append(("D", detail))
    body = b"".join(code.encode() + value.encode("utf-8", "replace") + b"\0" for code, value in fields) + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def startup_packet(code: int, payload: bytes = b"") -> bytes:
    """An untagged startup-phase packet: Int32 length, Int32 code, payload."""
    return struct.pack("!II", len(payload) + 8, code) + payload


def startup_message(parameters: dict[str, str], minor: int = 0) -> bytes:
    """A protocol 3.x StartupMessage."""
    payload = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in parameters.items()) + b"\0"
    return startup_packet((3 << 16) | minor, payload)


def message(tag: bytes, body: bytes = b"") -> bytes:
    """A tagged message: tag, Int32 length, body."""
    return tag + struct.pack("!I", len(body) + 4) + body


def cancel_request(process_id: int, secret_key: bytes) -> bytes:
    """A CancelRequest for a backend (protocol 3.2 keys may be longer than 4 bytes)."""
    return startup_packet(80877102, struct.pack("!i", process_id) + secret_key)
