"""Wireshark-style hex dumps: offset, sixteen hex bytes, ASCII."""

from __future__ import annotations

from collections.abc import Iterable

_PRINTABLE = bytes(b if 0x20 <= b < 0x7F else 0x2E for b in range(256))
MASK_BYTE = 0x2A  # '*': what masked bytes show as, in hex and ASCII alike


def mask(data: bytes, spans: Iterable[tuple[int, int]]) -> bytes:
    """Copy of ``data`` with every ``[start, end)`` span overwritten by ``*``."""
    out = bytearray(data)
    for span_start, span_end in spans:
        start = max(0, span_start)
        end = min(len(out), span_end)
        if end > start:
            out[start:end] = bytes([MASK_BYTE]) * (end - start)
    return bytes(out)


def hexdump(data: bytes, limit: int | None = None) -> str:
    """Format bytes as Wireshark's "Copy as Hex Dump" does.

    ``0000  51 00 00 00 0d 73 65 6c  65 63 74 20 31 00        Q....select 1.``

    Args:
        data: the bytes.
        limit: dump at most this many bytes and say how many were left out.
    """
    shown = data if limit is None else data[:limit]
    lines = []
    for offset in range(0, len(shown), 16):
        row = shown[offset : offset + 16]
        left = " ".join(f"{b:02x}" for b in row[:8])
        right = " ".join(f"{b:02x}" for b in row[8:])
        hex_part = f"{left:<23}  {right:<23}"
        lines.append(f"{offset:04x}  {hex_part}  {row.translate(_PRINTABLE).decode('ascii')}")
    if limit is not None and len(data) > limit:
        lines.append(f"... {len(data) - limit} more bytes")
    return "\n".join(lines)
