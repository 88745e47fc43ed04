"""Read captured bytes for offline decoding: hex dumps and captured frames (pure).

Accepted inputs:

* a text hex dump as printed by Wireshark ("Copy as Hex Dump"), ``tcpdump -X``
  / ``-xx``, ``xxd`` or ``hexdump -C``: each block whose offset restarts at 0
  is one packet;
* each packet either bare protocol bytes, or a whole captured frame, whose
  link layer (Ethernet, BSD loopback/null, Linux cooked v1/v2, or none), IPv4/
  IPv6 and TCP headers are recognised and skipped. The direction follows from
  the server's TCP port, given or recognised from the conversation (a start-up
  packet goes to the server; authentication requests and ReadyForQuery come
  from it); TCP retransmissions are dropped by sequence number.

tcpdump's packet header lines carry the capture time, which is kept
(``HH:MM:SS.ffffff``, ``-tttt`` and ``-tt`` forms); pcap and pcapng files are
read by :mod:`pgproxy.offline.pcap`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from pgproxy.protocol.decoding import CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, SSL_REQUEST_CODE

_TIMESTAMP = re.compile(
    r"^\s*(?:(?P<epoch>\d{9,}\.\d+)|(?:(?P<date>\d{4}-\d{2}-\d{2})\s+)?(?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?))\s"
)
_LINE = re.compile(r"^\s*(?:0x)?([0-9A-Fa-f]{4,8}):?\s+(.*)$")
_HEX_TOKEN = re.compile(r"^(?:[0-9A-Fa-f]{2})+$")
_TCP = 6
#: PostgreSQL's registered port: the server's port when a capture shows nothing better.
DEFAULT_SERVER_PORT = 5432


class CaptureError(ValueError):
    """The input is not a hex dump or capture this reader understands."""


class NoPostgresTraffic(CaptureError):
    """Captured frames were read, but none belongs to a PostgreSQL conversation.

    Attributes:
        ports: every TCP port seen, to help choose ``--server-port``.
    """

    def __init__(self, message: str, ports: list[int]) -> None:
        super().__init__(message)
        self.ports = ports


@dataclass(frozen=True, slots=True)
class DumpedPacket:
    """One packet of a text hex dump, with the time its tcpdump header line gave (None without one)."""

    data: bytes
    time: float | None


def parse_hexdump(text: str) -> list[bytes]:
    """Packets of a text hex dump (see :func:`read_hexdump`), without their times."""
    return [p.data for p in read_hexdump(text)]


def _header_time(line: str) -> float | None:
    """The capture time of a tcpdump packet header line, in seconds (of the day, without a date)."""
    m = _TIMESTAMP.match(line)
    if not m:
        return None
    if m["epoch"]:
        return float(m["epoch"])
    seconds = int(m["h"]) * 3600 + int(m["m"]) * 60 + float(m["s"])
    if m["date"]:
        import datetime

        day = datetime.datetime.strptime(m["date"], "%Y-%m-%d").replace(tzinfo=datetime.UTC)
        seconds += day.timestamp()
    return seconds


def read_hexdump(text: str) -> list[DumpedPacket]:
    """Packets of a text hex dump (offsets restarting at 0 start a new packet).

    Lines that carry no offset (tcpdump's packet headers, blank lines) are
    skipped, but a tcpdump header's time is kept for the packet that follows; each line's ASCII column is told apart from the hex by its width.
    A ``*`` line (``hexdump -C``, ``xxd -a``: "the previous line repeats")
    is expanded up to the next offset; any other gap in the offsets is an
    error rather than silently missing bytes.

    Raises:
        CaptureError: no dump lines, or offsets that go backwards or skip.
    """
    packets: list[bytearray] = []
    times: list[float | None] = []
    expected: int | None = None
    previous = b""
    repeat = False
    header_time: float | None = None
    last_time = 0.0
    for line in text.splitlines():
        if line.strip() == "*":
            repeat = True
            continue
        m = _LINE.match(line)
        if not m:
            header_time = _header_time(line)
            if header_time is not None and header_time < last_time - 43_200:
                header_time += 86_400  # a time of day that went backwards: past midnight
            last_time = header_time if header_time is not None else last_time
            continue
        offset = int(m.group(1), 16)
        data = _line_bytes(m.group(2))
        if offset == 0 or expected is None:
            if data is None:
                continue
            packets.append(bytearray())
            times.append(header_time)
            header_time = None
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
    return [DumpedPacket(bytes(p), t) for p, t in zip(packets, times, strict=True)]


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
    time: float | None = None
    syn: bool = False  # a SYN takes one sequence number and carries no data


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
    syn = bool(packet[tcp + 13] & 0x02)
    return Segment((src, sport), (dst, dport), seq, packet[tcp + data_offset : end], syn=syn)


def parse_frame(packet: bytes, link_offset: int | None = None, time: float | None = None) -> Segment | None:
    """A captured frame's TCP segment; None for bare bytes (or a frame that is not TCP).

    Args:
        packet: the frame, from its link-layer header on.
        link_offset: the link-layer header's length when the capture names its
            link type (pcap files); otherwise each known link layer is tried.
        time: when the frame was captured, if known.
    """
    candidates: list[int] = []
    if link_offset is not None:
        candidates.append(link_offset)
    else:
        if len(packet) >= 14 and packet[12:14] in (b"\x08\x00", b"\x86\xdd"):
            candidates.append(14)  # Ethernet II
        if len(packet) >= 16 and packet[14:16] in (b"\x08\x00", b"\x86\xdd"):
            candidates.append(16)  # Linux cooked capture v1
        if len(packet) >= 20 and packet[0:2] in (b"\x08\x00", b"\x86\xdd"):
            candidates.append(20)  # Linux cooked capture v2
        if len(packet) >= 4 and (
            struct.unpack_from("<I", packet)[0] in (2, 24, 28, 30)
            or struct.unpack_from(">I", packet)[0] in (2, 24, 28, 30)
        ):
            candidates.append(4)  # BSD loopback / null
        candidates.append(0)  # raw IP
    for offset in candidates:
        seg = _ip_tcp(packet, offset)
        if seg is not None:
            return seg if time is None else Segment(seg.src, seg.dst, seg.seq, seg.payload, time, seg.syn)
    return None


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes one side sent, as one TCP segment carried them."""

    frontend: bool
    data: bytes
    time: float | None  # capture time; None when the capture carries none
    missing: int = 0  # bytes of this side the capture lost just before this chunk


@dataclass
class Stream:
    """One TCP connection's reassembled chunks, in capture order."""

    client: tuple[str, int]
    server: tuple[str, int]
    chunks: list[Chunk] = field(default_factory=list)
    opened_at: float | None = None  # time of the connection's first captured segment (its SYN, if captured)
    _next_seq: dict[bool, int] = field(default_factory=dict)

    def add(self, frontend: bool, seq: int, payload: bytes, time: float | None = None, syn: bool = False) -> None:
        """Append a segment's new bytes: retransmitted ones are dropped, lost ones noted in ``Chunk.missing``."""
        if self.opened_at is None:
            self.opened_at = time
        if syn:
            self._next_seq[frontend] = (seq + 1) & 0xFFFFFFFF
            return
        expected = self._next_seq.get(frontend)
        missing = 0
        if expected is not None:
            delta = (expected - seq) & 0xFFFFFFFF
            if delta and delta < 0x80000000:  # starts before what we have: retransmission
                if delta >= len(payload):
                    return
                payload = payload[delta:]
                seq = expected
            elif delta and payload:  # starts after what we have: the capture lost bytes
                missing = (seq - expected) & 0xFFFFFFFF
        self._next_seq[frontend] = (seq + len(payload)) & 0xFFFFFFFF
        if payload:
            self.chunks.append(Chunk(frontend, payload, time, missing))

    @property
    def timed(self) -> bool:
        """Whether every chunk carries its capture time (so durations are real)."""
        return all(chunk.time is not None for chunk in self.chunks)


def frames_to_segments(packets: list[bytes], times: list[float | None] | None = None) -> list[Segment] | None:
    """TCP segments of captured frames; None if the packets are not frames (bare protocol bytes)."""
    segments = [parse_frame(p, time=times[i] if times else None) for i, p in enumerate(packets)]
    if not segments or any(s is None for s in segments):
        return None
    return [s for s in segments if s is not None]


_AUTH_CODES = frozenset((0, 2, 3, 5, 7, 8, 9, 10, 11, 12))
_READY_SUFFIXES = (b"Z\x00\x00\x00\x05I", b"Z\x00\x00\x00\x05T", b"Z\x00\x00\x00\x05E")


def _server_by_conversation(segment: Segment) -> tuple[str, int] | None:
    """The server's end of a segment's connection, when its payload shows which side speaks PostgreSQL's server part.

    A start-up packet (or SSLRequest/GSSENCRequest/CancelRequest) goes to the
    server; an Authentication request ('R') and a ReadyForQuery ('Z') come from it.
    """
    payload = segment.payload
    if looks_like_startup(payload) and struct.unpack_from("!I", payload)[0] <= len(payload):
        return segment.dst
    if len(payload) >= 9 and payload[0] == 0x52:  # 'R'
        length, code = struct.unpack_from("!II", payload, 1)
        if 8 <= length <= 2048 and code in _AUTH_CODES:
            return segment.src
    if payload.endswith(_READY_SUFFIXES):
        return segment.src
    return None


def guess_server_ports(segments: list[Segment]) -> set[int]:
    """Ports of the PostgreSQL servers the conversations show (empty when none does)."""
    return {server[1] for seg in segments if seg.payload and (server := _server_by_conversation(seg)) is not None}


def group_streams(segments: list[Segment], server_port: int | None = None) -> list[Stream]:
    """Group TCP segments into PostgreSQL connections, oriented client → server.

    Args:
        segments: every captured segment, in capture order.
        server_port: the server's TCP port; when None it is recognised from
            the conversations (:func:`guess_server_ports`), else 5432.

    Raises:
        NoPostgresTraffic: no segment belongs to a PostgreSQL conversation,
            with the ports that were seen.
    """
    ports = {server_port} if server_port is not None else guess_server_ports(segments) or {DEFAULT_SERVER_PORT}
    streams: dict[tuple[tuple[str, int], tuple[str, int]], Stream] = {}
    for seg in segments:
        if seg.dst[1] in ports:
            frontend, client, server = True, seg.src, seg.dst
        elif seg.src[1] in ports:
            frontend, client, server = False, seg.dst, seg.src
        else:
            continue
        stream = streams.setdefault((client, server), Stream(client, server))
        stream.add(frontend, seg.seq, seg.payload, seg.time, seg.syn)
    streams = {key: stream for key, stream in streams.items() if stream.chunks}
    if not streams:
        seen = sorted({seg.src[1] for seg in segments} | {seg.dst[1] for seg in segments})
        shown = ", ".join(map(str, seen[:30])) + (" ..." if len(seen) > 30 else "")
        where = (
            f"on port {server_port}" if server_port is not None else "(no start-up, authentication or ReadyForQuery)"
        )
        raise NoPostgresTraffic(
            f"no PostgreSQL traffic found {where} in {len(segments)} TCP segments; TCP ports seen: {shown or 'none'}"
            + ("" if server_port is not None else "; name the server's port with --server-port"),
            seen,
        )
    return list(streams.values())


def looks_like_startup(data: bytes) -> bool:
    """True when ``data`` starts with a plausible untagged startup packet (frontend side)."""
    if len(data) < 8:
        return False
    length, code = struct.unpack_from("!II", data)
    return 8 <= length <= 10_000 and (
        code >> 16 == 3 or code in (CANCEL_REQUEST_CODE, SSL_REQUEST_CODE, GSSENC_REQUEST_CODE)
    )
