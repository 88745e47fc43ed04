"""Build the few messages pgproxy itself sends (bytes out, no I/O)."""

from __future__ import annotations

import struct
from typing import Final

from pgproxy.protocol.decoding import CANCEL_REQUEST_CODE, SSL_REQUEST_CODE


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


#: The SSLRequest pgproxy sends a server before a TLS handshake (and that clients send it).
SSL_REQUEST: Final = startup_packet(SSL_REQUEST_CODE)


def startup_message(parameters: dict[str, str], minor: int = 0) -> bytes:
    """A protocol 3.x StartupMessage."""
    payload = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in parameters.items()) + b"\0"
    return startup_packet((3 << 16) | minor, payload)


def message(tag: bytes, body: bytes = b"") -> bytes:
    """A tagged message: tag, Int32 length, body."""
    return tag + struct.pack("!I", len(body) + 4) + body


def cancel_request(process_id: int, secret_key: bytes) -> bytes:
    """A CancelRequest for a backend (protocol 3.2 keys may be longer than 4 bytes)."""
    return startup_packet(CANCEL_REQUEST_CODE, struct.pack("!i", process_id) + secret_key)


# --------------------------------------------------------------------------- encoders for tests, benchmarks and replay

_I16 = struct.Struct("!h").pack
_I32 = struct.Struct("!i").pack


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def _values(values: list[bytes | None] | tuple[bytes | None, ...]) -> bytes:
    out = [_I16(len(values))]
    for v in values:
        out.append(_I32(-1) if v is None else _I32(len(v)) + v)
    return b"".join(out)


def query(sql: str) -> bytes:
    return message(b"Q", _cstr(sql))


def parse(statement: str, sql: str, types: tuple[int, ...] = ()) -> bytes:
    return message(
        b"P", _cstr(statement) + _cstr(sql) + _I16(len(types)) + b"".join(struct.pack("!I", t) for t in types)
    )


def bind(
    portal: str,
    statement: str,
    params: tuple[bytes | None, ...] = (),
    param_formats: tuple[int, ...] = (),
    result_formats: tuple[int, ...] = (),
) -> bytes:
    body = _cstr(portal) + _cstr(statement) + _I16(len(param_formats)) + b"".join(_I16(f) for f in param_formats)
    body += _values(params) + _I16(len(result_formats)) + b"".join(_I16(f) for f in result_formats)
    return message(b"B", body)


def describe(kind: str, name: str) -> bytes:
    return message(b"D", kind.encode() + _cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return message(b"E", _cstr(portal) + _I32(max_rows))


def close(kind: str, name: str) -> bytes:
    return message(b"C", kind.encode() + _cstr(name))


def sync() -> bytes:
    return message(b"S")


def flush() -> bytes:
    return message(b"H")


def copy_data(data: bytes) -> bytes:
    return message(b"d", data)


def copy_done() -> bytes:
    return message(b"c")


def row_description(columns: list[tuple[str, int]], fmt: int = 0) -> bytes:
    body = _I16(len(columns)) + b"".join(
        _cstr(name) + struct.pack("!IhIhih", 0, 0, oid, -1, -1, fmt) for name, oid in columns
    )
    return message(b"T", body)


def data_row(values: list[bytes | None] | tuple[bytes | None, ...]) -> bytes:
    return message(b"D", _values(values))


def command_complete(tag: str) -> bytes:
    return message(b"C", _cstr(tag))


def ready_for_query(status: str = "I") -> bytes:
    return message(b"Z", status.encode())


def notice_response(severity: str, sqlstate: str, text: str) -> bytes:
    fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", text)]
    return message(b"N", b"".join(c.encode() + _cstr(v) for c, v in fields) + b"\0")


def notification_response(pid: int, channel: str, payload: str) -> bytes:
    return message(b"A", _I32(pid) + _cstr(channel) + _cstr(payload))


def copy_response(tag: bytes, columns: int, fmt: int = 0) -> bytes:
    return message(tag, bytes([fmt]) + _I16(columns) + b"".join(_I16(fmt) for _ in range(columns)))


def authentication_ok() -> bytes:
    return message(b"R", _I32(0))


def backend_key_data(pid: int, key: bytes = b"\x01\x02\x03\x04") -> bytes:
    return message(b"K", _I32(pid) + key)


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", _cstr(name) + _cstr(value))
