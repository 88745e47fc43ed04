"""Throughput of the sans-IO protocol layer (issue 2's benchmark).

Measures, on one core:

* framing alone: messages/s through :class:`Framer` for a stream of
  1,000,000 DataRows (4 text columns) fed in 64 KiB chunks;
* full row decoding: rows/s for framing plus decoding every DataRow into a
  ``column name -> value`` mapping with a :class:`RowDecoder`;
* the recorded mixed conversations under tests/data: messages/s for framing
  plus typed decoding of every message.

Run: ``python bench/protocol_bench.py [--rows N]``.
"""

from __future__ import annotations

import argparse
import json
import struct
import time
from pathlib import Path

from pgproxy.protocol import Conversation, Framer, RowDecoder, oids
from pgproxy.protocol.messages import FieldDescription

CHUNK = 65536


def data_row(values: list[bytes]) -> bytes:
    body = struct.pack("!H", len(values)) + b"".join(struct.pack("!I", len(v)) + v for v in values)
    return b"D" + struct.pack("!I", len(body) + 4) + body


def row_stream(rows: int) -> bytes:
    row = data_row([b"12345", b"Demo user", b"demo@aa.io", b"2024-01-02 03:04:05"])
    return row * rows


def chunks(data: bytes, size: int = CHUNK) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def bench_framing(stream: list[bytes], rows: int) -> float:
    framer = Framer("backend")
    count = 0
    t0 = time.perf_counter()
    for chunk in stream:
        count += len(framer.feed(chunk))
    elapsed = time.perf_counter() - t0
    assert count == rows, count
    return rows / elapsed


def bench_rows(stream: list[bytes], rows: int) -> float:
    fields = [
        FieldDescription("id", 0, 0, oids.INT4, 4, -1, 0),
        FieldDescription("username", 0, 0, oids.TEXT, -1, -1, 0),
        FieldDescription("email", 0, 0, oids.VARCHAR, -1, -1, 0),
        FieldDescription("created", 0, 0, oids.TIMESTAMP, 8, -1, 0),
    ]
    decoder = RowDecoder(fields)
    framer = Framer("backend")
    count = 0
    last = None
    decode = decoder.decode
    t0 = time.perf_counter()
    for chunk in stream:
        for _tag, buf, start, end in framer.feed(chunk):
            last = decode(buf, start, end)  # type: ignore[arg-type]
            count += 1
    elapsed = time.perf_counter() - t0
    assert count == rows and last == {
        "id": 12345,
        "username": "Demo user",
        "email": "demo@aa.io",
        "created": "2024-01-02 03:04:05",
    }, last
    return rows / elapsed


def bench_conversations(data_dir: Path, repeat: int) -> tuple[float, int]:
    """Messages/s for framing plus typed decoding of every recorded connection."""
    recordings = sorted(data_dir.glob("*.json"))
    total = 0
    elapsed = 0.0
    for path in recordings:
        for conn in json.loads(path.read_text())["connections"]:
            events = [(e["dir"] == "F", bytes.fromhex(e["hex"])) for e in conn]
            for _ in range(repeat):
                conv = Conversation()
                t0 = time.perf_counter()
                for frontend, data in events:
                    if frontend:
                        for f in conv.receive_frontend(data):
                            conv.decode_frontend(f)
                            total += 1
                    else:
                        for f in conv.receive_backend(data):
                            conv.decode_backend(f)
                            total += 1
                elapsed += time.perf_counter() - t0
    return (total / elapsed if elapsed else 0.0), len(recordings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20, help="passes over each recorded conversation")
    args = parser.parse_args()
    stream = chunks(row_stream(args.rows))
    framing = max(bench_framing(stream, args.rows) for _ in range(3))
    rows = max(bench_rows(stream, args.rows) for _ in range(2))
    print(f"framing alone        {framing:>12,.0f} messages/s  (target >= 2,000,000)")
    print(f"full row decoding    {rows:>12,.0f} rows/s      (target >=   300,000)")
    data_dir = Path(__file__).resolve().parent.parent / "tests" / "data"
    mixed, n = bench_conversations(data_dir, args.repeat)
    if n:
        print(f"mixed conversations  {mixed:>12,.0f} messages/s  (framing + typed decoding, {n} recordings)")


if __name__ == "__main__":
    main()
