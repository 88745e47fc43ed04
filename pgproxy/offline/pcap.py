"""Read ``tcpdump -w`` files: classic pcap and pcapng, with their link types and timestamps (pure).

A small reader rather than a dependency: pgproxy needs only each packet's
bytes, its link type and its time, and both formats give those in a few
fixed headers. Formats: https://www.tcpdump.org/manpages/pcap-savefile.5.html
(pcap) and the IETF draft "PCAP Next Generation Dump File Format" (pcapng:
Section Header, Interface Description, Enhanced and Simple Packet Blocks).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from pgproxy.offline.capture import CaptureError

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),  # nanosecond variant
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_IDB = 0x00000001
_PCAPNG_SPB = 0x00000003
_PCAPNG_EPB = 0x00000006
_PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_IF_TSRESOL = 9
_MIN_BODY = {_PCAPNG_IDB: 8, _PCAPNG_EPB: 20, _PCAPNG_SPB: 4}


class LinkType(enum.IntEnum):
    """The link-layer header types pgproxy can see through (tcpdump.org "LINK-LAYER HEADER TYPES")."""

    NULL = 0  # BSD loopback: 4-byte address family in the capturing host's byte order
    ETHERNET = 1
    RAW = 101  # bare IPv4 or IPv6
    LOOP = 108  # OpenBSD loopback: address family in network byte order
    LINUX_SLL = 113  # Linux "cooked" capture v1 (tcpdump -i any)
    IPV4 = 228
    IPV6 = 229
    LINUX_SLL2 = 276  # Linux "cooked" capture v2

    @property
    def header_length(self) -> int:
        """Bytes before the IP header."""
        return _HEADER_LENGTH[self]


_HEADER_LENGTH = {
    LinkType.NULL: 4,
    LinkType.ETHERNET: 14,
    LinkType.RAW: 0,
    LinkType.LOOP: 4,
    LinkType.LINUX_SLL: 16,
    LinkType.IPV4: 0,
    LinkType.IPV6: 0,
    LinkType.LINUX_SLL2: 20,
}
# Some systems write the raw-IP link type under its old BSD numbers.
_ALIASES = {12: LinkType.RAW, 14: LinkType.RAW}


@dataclass(frozen=True, slots=True)
class Packet:
    """One captured packet: its bytes from the link-layer header on, and when it was captured."""

    data: bytes
    link_type: LinkType
    time: float | None  # seconds since the epoch; None for a pcapng Simple Packet Block, which has none


def is_capture_file(data: bytes) -> bool:
    """Whether ``data`` starts like a pcap or pcapng file."""
    return data[:4] in _PCAP_MAGIC or (len(data) >= 4 and struct.unpack_from("<I", data)[0] == _PCAPNG_SHB)


def _link_type(value: int) -> LinkType:
    try:
        return _ALIASES.get(value) or LinkType(value)
    except ValueError:
        raise CaptureError(
            f"capture link type {value} is not supported (supported: {', '.join(t.name for t in LinkType)})"
        ) from None


def read_capture(data: bytes) -> list[Packet]:
    """Every packet of a pcap or pcapng file, in file order.

    Raises:
        CaptureError: not a capture file, a truncated one, or a link type
            pgproxy cannot see through.
    """
    if data[:4] in _PCAP_MAGIC:
        return _read_pcap(data)
    if is_capture_file(data):
        return _read_pcapng(data)
    raise CaptureError("not a pcap or pcapng file")


def _read_pcap(data: bytes) -> list[Packet]:
    order, unit = _PCAP_MAGIC[data[:4]]
    if len(data) < 24:
        raise CaptureError("truncated pcap file header")
    link = _link_type(struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF)
    packets: list[Packet] = []
    pos = 24
    while pos + 16 <= len(data):
        seconds, fraction, captured, _original = struct.unpack_from(order + "IIII", data, pos)
        pos += 16
        if pos + captured > len(data):
            raise CaptureError(f"pcap packet {len(packets) + 1} is truncated")
        packets.append(Packet(data[pos : pos + captured], link, seconds + fraction * unit))
        pos += captured
    return packets


def _read_pcapng(data: bytes) -> list[Packet]:
    packets: list[Packet] = []
    interfaces: list[tuple[LinkType, float]] = []  # per section: (link type, seconds per timestamp unit)
    order = "<"
    pos = 0
    while pos + 12 <= len(data):
        block_type = struct.unpack_from(order + "I", data, pos)[0]
        if block_type == _PCAPNG_SHB:
            magic = data[pos + 8 : pos + 12]
            order = "<" if struct.unpack("<I", magic)[0] == _PCAPNG_BYTE_ORDER_MAGIC else ">"
            if struct.unpack(order + "I", magic)[0] != _PCAPNG_BYTE_ORDER_MAGIC:
                raise CaptureError("pcapng section header has no byte-order magic")
            interfaces = []  # interface ids restart in every section
        length = struct.unpack_from(order + "I", data, pos + 4)[0]
        if length < 12 or length % 4 or pos + length > len(data):
            raise CaptureError(f"pcapng block at offset {pos} has a bad length {length}")
        body = data[pos + 8 : pos + length - 4]
        if len(body) < _MIN_BODY.get(block_type, 0):
            raise CaptureError(f"pcapng block at offset {pos} is too short for its type")
        if block_type == _PCAPNG_IDB:
            link = _link_type(struct.unpack_from(order + "H", body)[0])
            interfaces.append((link, _timestamp_unit(body[8:], order)))
        elif block_type == _PCAPNG_EPB:
            interface, high, low, captured = struct.unpack_from(order + "IIII", body)
            if interface >= len(interfaces):
                raise CaptureError(f"pcapng packet names interface {interface}, which was not described")
            link, unit = interfaces[interface]
            packets.append(Packet(body[20 : 20 + captured], link, ((high << 32) | low) * unit))
        elif block_type == _PCAPNG_SPB:  # no timestamp, so none is given
            if not interfaces:
                raise CaptureError("pcapng simple packet block before any interface description")
            captured = min(struct.unpack_from(order + "I", body)[0], len(body) - 4)
            packets.append(Packet(body[4 : 4 + captured], interfaces[0][0], None))
        pos += length
    return packets


def _timestamp_unit(options: bytes, order: str) -> float:
    """Seconds per timestamp unit from an interface's ``if_tsresol`` option (default microseconds)."""
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack_from(order + "HH", options, pos)
        if code == 0:
            break
        if code == _IF_TSRESOL and length >= 1:
            value = options[pos + 4]
            return 2.0 ** -(value & 0x7F) if value & 0x80 else 10.0**-value
        pos += 4 + (length + 3) // 4 * 4
    return 1e-6
