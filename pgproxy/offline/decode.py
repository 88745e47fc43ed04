"""``pgproxy decode``: decode captured protocol bytes offline, one JSON line per message.

The same tracker the proxy uses does the work, at message (or wire) detail,
so offline output has the proxy's field names, its redaction, and rows shown
by column name whenever the RowDescription is in the capture.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO

from pgproxy.offline.capture import CaptureError, Stream, looks_like_startup, parse_hexdump, streams_from_frames
from pgproxy.sink.render import dumps
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail, Record
from pgproxy.tracker.session import SessionTracker


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


def decode_stream(stream: Stream, name: str, detail: Detail) -> list[Record]:
    """Run one reassembled connection through a tracker with a virtual clock."""
    tick = iter(range(1 << 62))
    tracker = SessionTracker(
        name, TrackerOptions(detail=detail), client=stream.client, server=stream.server, clock=lambda: next(tick) / 1000
    )
    first_frontend = next((data for frontend, data in stream.chunks if frontend), b"")
    if first_frontend and not looks_like_startup(first_frontend):
        tracker.conv.assume_established()
    out: list[Record] = []
    for frontend, data in stream.chunks:
        out += tracker.frontend(data) if frontend else tracker.backend(data)
    out += tracker.closed("end_of_capture")
    return out


def decode_bytes(
    data: bytes,
    *,
    direction: str | None = None,
    fmt: str = "auto",
    server_port: int = 5432,
    detail: Detail = Detail.MESSAGE,
) -> list[Record]:
    """Decode a whole capture (see :mod:`pgproxy.offline.capture` for the formats)."""
    if fmt == "hex" or (fmt == "auto" and _is_text_dump(data)):
        packets = parse_hexdump(data.decode("ascii"))
        streams = streams_from_frames(packets, server_port)
        if streams is None:
            data = b"".join(packets)
        else:
            records: list[Record] = []
            for index, stream in enumerate(streams, 1):
                records += decode_stream(stream, f"capture-{index}", detail)
            return records
    if direction is None:
        direction = "frontend" if looks_like_startup(data) else "backend"
    stream = Stream(("capture", 0), ("capture", server_port), [(direction == "frontend", data)])
    return decode_stream(stream, "capture-1", detail)


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
