"""``pgproxy decode``: decode captured protocol bytes offline, one JSON line per message.

The same tracker the proxy uses does the work, at message (or wire) detail,
so offline output has the proxy's field names, its redaction, and rows shown
by column name whenever the RowDescription is in the capture.

Two rules keep offline output honest:

* time comes from the capture (pcap/pcapng timestamps, tcpdump's header
  lines); a capture without times (a Wireshark hex dump, raw bytes) yields
  records without ``duration_ms``/``setup_ms`` rather than made-up ones;
* a capture that starts mid-session is decoded as such: no ``session.ready``
  (with an authentication method or set-up time) is reported for a start-up
  that was not captured.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO

from pgproxy.offline.capture import (
    DEFAULT_SERVER_PORT,
    CaptureError,
    Chunk,
    NoPostgresTraffic,
    Segment,
    Stream,
    frames_to_segments,
    group_streams,
    looks_like_startup,
    parse_frame,
    read_hexdump,
)
from pgproxy.offline.pcap import is_capture_file, read_capture
from pgproxy.sink.render import dumps
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail, Record
from pgproxy.tracker.session import SessionTracker

#: Pseudo messages the decoder reports for bytes it could not frame or decode.
_NOT_MESSAGES = frozenset(("Desynchronized", "Oversized", "Malformed"))

#: Backend message tags a server sends only while a session starts: 'R' Authentication.
_STARTUP_BACKEND_TAG = 0x52


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def _is_text_dump(data: bytes) -> bool:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return False
    return any(line.strip() for line in text.splitlines()) and all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _text(data: bytes) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise CaptureError(f"not a text hex dump: byte {exc.start} is not ASCII (use --input raw for bytes)") from None


def _starts_mid_session(stream: Stream) -> bool:
    """Whether the capture missed the start of the session.

    It did not when the client's first bytes are a start-up packet (or an
    SSL/GSS request), or, for a capture of the server's side alone, when the
    server's first message is an authentication request.
    """
    first_frontend = next((c.data for c in stream.chunks if c.frontend), None)
    if first_frontend is not None:
        return not looks_like_startup(first_frontend)
    first_backend = next((c.data for c in stream.chunks if not c.frontend), b"")
    return not first_backend or first_backend[0] != _STARTUP_BACKEND_TAG


def decode_stream(stream: Stream, name: str, detail: Detail) -> list[Record]:
    """Run one reassembled connection through a tracker, on the capture's clock.

    Without capture times the clock stands still and the timing fields are
    removed from the records, so no duration is invented.
    """
    timed = stream.timed
    clock_now = (stream.opened_at or 0.0) if timed else 0.0
    tracker = SessionTracker(
        name, TrackerOptions(detail=detail), client=stream.client, server=stream.server, clock=lambda: clock_now
    )
    if _starts_mid_session(stream):
        tracker.join_established()
    out: list[Record] = []
    for chunk in stream.chunks:
        if timed and chunk.time is not None:
            clock_now = chunk.time
        if chunk.missing:
            # Framing cannot resume in the middle of unknown bytes: say so and stop.
            side = "frontend" if chunk.frontend else "backend"
            out.append(
                tracker.anomaly(
                    "capture_gap",
                    f"{chunk.missing} bytes the {side} sent are missing from the capture",
                    direction=side,
                    action="stopped decoding this connection",
                )
            )
            break
        out += tracker.frontend(chunk.data) if chunk.frontend else tracker.backend(chunk.data)
    out += tracker.closed("end_of_capture")
    if not timed:
        for record in out:
            for key in [k for k in record.fields if k.endswith("_ms")]:
                del record.fields[key]
    return out


def _streams(data: bytes, fmt: str, server_port: int | None) -> list[Stream] | None:
    """TCP streams of a capture of frames; None when the input is bare protocol bytes."""
    if fmt == "pcap" or (fmt == "auto" and is_capture_file(data)):
        packets = read_capture(data)
        segments: list[Segment] = []
        for packet in packets:
            segment = parse_frame(packet.data, packet.link_type.header_length, packet.time)
            if segment is not None:  # ARP, UDP and the like are not ours
                segments.append(segment)
        if not segments:
            raise NoPostgresTraffic(f"no TCP segments among {len(packets)} captured packets", [])
        return group_streams(segments, server_port)
    dumped = read_hexdump(_text(data))
    frames = frames_to_segments([p.data for p in dumped], [p.time for p in dumped])
    return None if frames is None else group_streams(frames, server_port)


def decode_bytes(
    data: bytes,
    *,
    direction: str | None = None,
    fmt: str = "auto",
    server_port: int | None = None,
    detail: Detail = Detail.MESSAGE,
) -> list[Record]:
    """Decode a whole capture (see :mod:`pgproxy.offline.capture` and :mod:`pgproxy.offline.pcap` for the formats).

    Raises:
        CaptureError: unreadable input; :class:`NoPostgresTraffic` when frames
            were read but none is PostgreSQL's.
    """
    if fmt in ("hex", "pcap") or (fmt == "auto" and (is_capture_file(data) or _is_text_dump(data))):
        streams = _streams(data, fmt, server_port)
        if streams is not None:
            records: list[Record] = []
            for index, stream in enumerate(streams, 1):
                records += decode_stream(stream, f"capture-{index}", detail)
            return records
        data = b"".join(p.data for p in read_hexdump(_text(data)))
    if direction is None:
        direction = "frontend" if looks_like_startup(data) else "backend"
    port = server_port or DEFAULT_SERVER_PORT
    stream = Stream(("capture", 0), ("capture", port), [Chunk(direction == "frontend", data, None)])
    return decode_stream(stream, "capture-1", detail)


def _is_protocol_message(record: Record) -> bool:
    """A decoded message or statement; the decoder's pseudo messages for bytes that do not frame do not count."""
    return record.event == "query" or (record.event == "message" and record.get("type") not in _NOT_MESSAGES)


def decode_command(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    try:
        data = _read_input(args.file)
    except OSError as exc:
        print(f"pgproxy decode: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        records = decode_bytes(
            data,
            direction=args.direction,
            fmt=args.input,
            server_port=args.server_port,
            detail=Detail.parse(args.detail),
        )
    except CaptureError as exc:
        print(f"pgproxy decode: {args.file}: {exc}", file=sys.stderr)
        return 1
    try:
        for record in records:
            out.write(dumps({"event": record.event, "level": record.level, **record.fields}) + "\n")
        out.flush()
    except BrokenPipeError:
        # The reader went away (`pgproxy decode x | head`): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    if not any(_is_protocol_message(record) for record in records):
        print(f"pgproxy decode: {args.file}: no PostgreSQL messages found", file=sys.stderr)
        return 1
    return 0
