"""Read captured bytes for offline decoding: hex dumps and captured frames (pure).

Accepted inputs:

* a text hex dump as printed by Wireshark ("Copy as Hex Dump"), ``tcpdump -X``
  / ``-xx``, ``xxd`` or ``hexdump -C``: each block whose offset restarts at 0
  is one packet;
* each packet either bare protocol bytes, or a whole captured frame, whose
  link layer (Ethernet, BSD loopback/null, Linux cooked v1/v2, or none), IPv4/
  IPv6 and TCP headers are recognised and skipped. The direction follows from
  the TCP port; TCP retransmissions are dropped by sequence number.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

_LINE = re.compile(r"^\s*(?:0x)?([0-9A-Fa-f]{4,8}):?\s+(.*)$")
_HEX_TOKEN = re.compile(r"^(?:[0-9A-Fa-f]{2})+$")
_TCP = 6


class CaptureError(ValueError):
    """The input is not a hex dump or capture this reader understands."""


def parse_hexdump(text: str) -> list[bytes]:
    """Packets of a text hex dump (offsets restarting at 0 start a new packet).

    Lines that carry no offset (tcpdump's packet headers, blank lines) are
    skipped; each line's ASCII column is told apart from the hex by its width.
    A ``*`` line (``hexdump -C``, ``xxd -a``: "the previous line repeats")
    is expanded up to the next offset; any other gap in the offsets is an
    error rather than silently missing bytes.

    Raises:
        CaptureError: no dump lines, or offsets that go backwards or skip.
    """
    packets: list[bytearray] = []
    expected: int | None = None
    previous = b""
    repeat = False
    for line in text.splitlines():
        if line.strip() == "*":
            repeat = True
            continue
        m = _LINE.match(line)
        if not m:
            continue
        offset = int(m.group(1), 16)
        data = _line_bytes(m.group(2))
        if offset == 0 or expected is None:
            if data is None:
                continue
            packets.append(bytearray())
        elif offset != expected:
            if offset < expected:
                raise CaptureError(f"hex dump offset {offset:#x} goes backwards (expected {expected:#x})")
            if not repeat or not previous or (offset - expected) % len(previous):
                raise CaptureError(f"hex dump skips from offset {expected:#x} to {offset:#x}")
            packets[-1] += previous * ((offset - expected) // len(previous))
        repeat = False
        if data is None:  # a final offset-only line (hexdump -C, xxd -a) just marks the end
            expected = offset
            continue
        packets[-1] += data
        previous = data
        expected = offset + len(data)
    if not packets:
        raise CaptureError("no hex dump lines found (expected 'OFFSET  hex bytes  ascii')")
    return [bytes(p) for p in packets]


def _line_bytes(rest: str) -> bytes | None:
    tokens = rest.split()
    hex_tokens: list[str] = []
    for tok in tokens:
        if _HEX_TOKEN.match(tok) and sum(len(t) for t in hex_tokens) + len(tok) <= 32:
            hex_tokens.append(tok)
        else:
            break
    if not hex_tokens:
        return None
    # The ASCII column shows one character per byte: the longest prefix of
    # hex tokens whose byte count equals the width of what follows is the data.
    for count in range(len(hex_tokens), 0, -1):
        data = bytes.fromhex("".join(hex_tokens[:count]))
        tail = _after_tokens(rest, count).strip().strip("|")
        if not tail or len(tail) == len(data):
            return data
    return bytes.fromhex("".join(hex_tokens))


def _after_tokens(rest: str, count: int) -> str:
    pos = 0
    for _ in range(count):
        while pos < len(rest) and rest[pos].isspace():
            pos += 1
        while pos < len(rest) and not rest[pos].isspace():
            pos += 1
    return rest[pos:]


@dataclass(frozen=True, slots=True)
class Segment:
    """TCP payload of one captured frame."""

    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    payload: bytes


def _ip_tcp(packet: bytes, offset: int) -> Segment | None:
    """Parse IPv4/IPv6 + TCP at ``offset``; None when it is not that."""
    if len(packet) < offset + 20:
        return None
    version = packet[offset] >> 4
    if version == 4:
        ihl = (packet[offset] & 0x0F) * 4
        total = struct.unpack_from("!H", packet, offset + 2)[0]
        if ihl < 20 or packet[offset + 9] != _TCP or total < ihl + 20 or offset + total > len(packet):
            return None
        src = ".".join(str(b) for b in packet[offset + 12 : offset + 16])
        dst = ".".join(str(b) for b in packet[offset + 16 : offset + 20])
        tcp = offset + ihl
        end = offset + total
    elif version == 6:
        if len(packet) < offset + 40 or packet[offset + 6] != _TCP:
            return None
        plen = struct.unpack_from("!H", packet, offset + 4)[0]
        import ipaddress

        src = str(ipaddress.IPv6Address(packet[offset + 8 : offset + 24]))
        dst = str(ipaddress.IPv6Address(packet[offset + 24 : offset + 40]))
        tcp = offset + 40
        end = tcp + plen
        if end > len(packet):
            return None
    else:
        return None
    if end - tcp < 20:
        return None
    sport, dport, seq = struct.unpack_from("!HHI", packet, tcp)
    data_offset = (packet[tcp + 12] >> 4) * 4
    if data_offset < 20 or tcp + data_offset > end:
        return None
    return Segment((src, sport), (dst, dport), seq, packet[tcp + data_offset : end])


def parse_frame(packet: bytes) -> Segment | None:
    """A captured frame's TCP segment, trying each link layer; None for bare bytes."""
    candidates: list[int] = []
    if len(packet) >= 14 and packet[12:14] in (b"\x08\x00", b"\x86\xdd"):
        candidates.append(14)  # Ethernet II
    if len(packet) >= 16 and packet[14:16] in (b"\x08\x00", b"\x86\xdd"):
        candidates.append(16)  # Linux cooked capture v1
    if len(packet) >= 20 and packet[0:2] in (b"\x08\x00", b"\x86\xdd"):
        candidates.append(20)  # Linux cooked capture v2
    if len(packet) >= 4 and (
        struct.unpack_from("<I", packet)[0] in (2, 24, 28, 30) or struct.unpack_from(">I", packet)[0] in (2, 24, 28, 30)
    ):
        candidates.append(4)  # BSD loopback / null
    candidates.append(0)  # raw IP
    for offset in candidates:
        seg = _ip_tcp(packet, offset)
        if seg is not None:
            return seg
    return None


@dataclass
class Stream:
    """One TCP connection's reassembled chunks, in capture order."""

    client: tuple[str, int]
    server: tuple[str, int]
    chunks: list[tuple[bool, bytes]] = field(default_factory=list)  # (frontend?, data)
    _next_seq: dict[bool, int] = field(default_factory=dict)

    def add(self, frontend: bool, seq: int, payload: bytes) -> None:
        expected = self._next_seq.get(frontend)
        if expected is not None:
            delta = (expected - seq) & 0xFFFFFFFF
            if delta and delta < 0x80000000:  # starts before what we have: retransmission
                if delta >= len(payload):
                    return
                payload = payload[delta:]
                seq = expected
        self._next_seq[frontend] = (seq + len(payload)) & 0xFFFFFFFF
        if payload:
            self.chunks.append((frontend, payload))


def streams_from_frames(packets: list[bytes], server_port: int) -> list[Stream] | None:
    """Group captured frames into TCP streams; None if the packets are not frames."""
    segments = [parse_frame(p) for p in packets]
    if not segments or any(s is None for s in segments):
        return None
    streams: dict[tuple[tuple[str, int], tuple[str, int]], Stream] = {}
    for seg in segments:
        assert seg is not None
        if seg.dst[1] == server_port:
            frontend, client, server = True, seg.src, seg.dst
        elif seg.src[1] == server_port:
            frontend, client, server = False, seg.dst, seg.src
        else:
            continue
        stream = streams.setdefault((client, server), Stream(client, server))
        stream.add(frontend, seg.seq, seg.payload)
    return list(streams.values())


def looks_like_startup(data: bytes) -> bool:
    """True when ``data`` starts with a plausible untagged startup packet (frontend side)."""
    if len(data) < 8:
        return False
    length, code = struct.unpack_from("!II", data)
    return 8 <= length <= 10_000 and (code >> 16 == 3 or code in (80877102, 80877103, 80877104))
