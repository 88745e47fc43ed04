"""`pgproxy decode` on captured frames: link, IP and TCP headers skipped, direction by port."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import time

import psycopg
import pytest

from pgproxy.demo.embedded import EmbeddedPostgres
from pgproxy.offline.capture import CaptureError, parse_frame, parse_hexdump
from pgproxy.offline.decode import decode_bytes
from tests.golden import recordings


def _checksum_free_frames(chunks: list[tuple[bool, bytes]], server_port: int, ipv6: bool = False) -> list[bytes]:
    """Ethernet + IP + TCP frames for a conversation (stand-in when tcpdump is not installed)."""
    frames = []
    seq = {True: 1000, False: 5000}
    for frontend, data in chunks:
        sport, dport = (50000, server_port) if frontend else (server_port, 50000)
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq[frontend], 0, 5 << 4, 0x18, 65535, 0, 0) + data
        seq[frontend] += len(data)
        if ipv6:
            ip = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + b"\0" * 15 + b"\1" + b"\0" * 15 + b"\1"
            ethertype = b"\x86\xdd"
        else:
            ip = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])
            )
            ethertype = b"\x08\x00"
        frames.append(b"\0" * 12 + ethertype + ip + tcp)
    return frames


def _wireshark_dump(frames: list[bytes]) -> str:
    """Wireshark's "Copy as Hex Dump" layout: offset, 3 spaces, bytes, 3 spaces, ASCII."""
    out = []
    for frame in frames:
        for off in range(0, len(frame), 16):
            row = frame[off : off + 16]
            hexpart = " ".join(f"{b:02x}" for b in row)
            out.append(f"{off:04x}   {hexpart:<47}   " + "".join(chr(b) if 32 <= b < 127 else "." for b in row))
        out.append("")
    return "\n".join(out)


def _types(records: list) -> list[str]:  # type: ignore[type-arg]
    return [r.get("type") for r in records if r.event == "message"]


def test_constructed_frames_decode_with_rows_by_name() -> None:
    (conn,) = recordings()["psql"]
    for ipv6 in (False, True):
        frames = _checksum_free_frames(conn, 5432, ipv6)
        frames.insert(3, frames[2])  # a TCP retransmission must not duplicate messages
        records = decode_bytes(_wireshark_dump(frames).encode(), server_port=5432)
        rows = [r["row"] for r in records if r.event == "message" and r.get("type") == "DataRow" and "row" in r]
        assert {"id": 1, "username": "Demo", "email": "demo@aa.io"} in rows
        assert _types(records).count("StartupMessage") == 1
        queries = [r for r in records if r.event == "query"]
        assert any(r["outcome"] == "error" and r["db.response.status_code"] == "22012" for r in queries)


@pytest.mark.parametrize("flag", ["-XX", "-X"], ids=["with-link-layer", "from-ip-header"])
def test_real_tcpdump_capture_of_loopback_traffic(pg: EmbeddedPostgres, flag: str) -> None:
    """tcpdump -XX (or -X) on lo while psycopg talks to the server; the dump decodes back to the query."""
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        # .ci/run installs tcpdump; elsewhere exercise the same parser on frames we build ourselves.
        test_constructed_frames_decode_with_rows_by_name()
        return
    proc = subprocess.Popen(
        [tcpdump, "-i", "lo", "-l", "-n", flag, "-s", "0", f"tcp port {pg.port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    try:
        with psycopg.connect(pg.dsn() + "?sslmode=disable") as conn:
            conn.execute("SELECT username, email FROM users WHERE id = %s", (1,)).fetchall()
        time.sleep(0.5)
    finally:
        proc.terminate()
        dump, err = proc.communicate(timeout=10)
    assert "listening on lo" in err, err
    packets = parse_hexdump(dump)
    assert packets and all(parse_frame(p) is not None for p in packets)
    out = subprocess.run(
        [sys.executable, "-m", "pgproxy", "decode", "-", "--server-port", str(pg.port)],
        input=dump,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    events = [json.loads(line) for line in out.stdout.splitlines()]
    rows = [e["row"] for e in events if e.get("type") == "DataRow"]
    assert {"username": "Demo", "email": "demo@aa.io"} in rows
    (query,) = [e for e in events if e["event"] == "query" and "username, email" in e["db.query.text"]]
    assert query["parameters"] == [1] and query["rows"] == 1


def test_hexdump_c_and_xxd_dumps_of_bare_bytes() -> None:
    """`hexdump -C` (ASCII between bars) and `xxd` layouts of bare protocol bytes."""
    (conn,) = recordings()["psql"]
    backend = b"".join(d for f, d in conn if not f)
    dumps = {}
    if shutil.which("hexdump"):
        dumps["hexdump -C"] = subprocess.run(["hexdump", "-C"], input=backend, capture_output=True, check=True).stdout
    if shutil.which("xxd"):
        dumps["xxd"] = subprocess.run(["xxd"], input=backend, capture_output=True, check=True).stdout
    if not dumps:  # the same layouts, written here, where neither tool is installed
        lines = []
        for off in range(0, len(backend), 16):
            row = backend[off : off + 16]
            ascii_ = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
            lines.append(f"{off:08x}  {' '.join(f'{b:02x}' for b in row):<48} |{ascii_}|")
        dumps["hexdump -C"] = ("\n".join(lines) + "\n").encode()
    for name, dump in dumps.items():
        assert b"".join(parse_hexdump(dump.decode())) == backend, name
        records = decode_bytes(dump, direction="backend")
        assert any(r.get("type") == "ErrorResponse" for r in records), name


def test_repeated_lines_are_expanded_and_gaps_are_errors() -> None:
    data = b"A" * 64 + b"tail"
    dump = (
        subprocess.run(["hexdump", "-C"], input=data, capture_output=True, check=True).stdout.decode()
        if shutil.which("hexdump")
        else (
            "00000000  41 41 41 41 41 41 41 41  41 41 41 41 41 41 41 41  |AAAAAAAAAAAAAAAA|\n*\n"
            "00000040  74 61 69 6c                                       |tail|\n00000044\n"
        )
    )
    assert "*" in dump
    assert parse_hexdump(dump) == [data]
    with pytest.raises(CaptureError):
        parse_hexdump("00000000  41 41\n00000010  41 41\n")
