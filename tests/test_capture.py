"""`pgproxy decode` on captured frames: link, IP and TCP headers skipped, direction by port."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from pgproxy.cli import build_decode_parser
from pgproxy.demo.embedded import EmbeddedPostgres
from pgproxy.offline.capture import CaptureError, parse_frame, parse_hexdump, read_hexdump
from pgproxy.offline.decode import decode_bytes, decode_command
from pgproxy.offline.pcap import LinkType, Packet, read_capture
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


TERMINATE = b"X\x00\x00\x00\x04"
_PCAP_HEADER = 24
_BUFFER_KIB = 64 * 1024  # tcpdump -B: the kernel's capture ring, 256 frames of 256 KiB


def _tcpdump() -> str:
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        pytest.skip("tcpdump is not installed (.ci/run installs it): real captures NOT tested")
    return tcpdump


def _capture(pg: EmbeddedPostgres, path: Path, interface: str, workload: Callable[[], None]) -> None:
    """``tcpdump -w`` on ``interface`` while ``workload`` talks to ``pg``, until its last packet is written.

    tcpdump says "listening on" once it captures, so the workload starts then;
    the capture ends once the client's Terminate is in the file (packet-buffered
    output), not after a guessed pause.

    The kernel hands packets to tcpdump through a ring of frames each as large
    as the snapshot length: with ``-s 0`` (256 KiB on "any") the default 2 MiB
    buffer holds only 8 packets, and a tcpdump that a loaded machine does not
    schedule for a moment loses the rest ("packets dropped by kernel": seen
    under load as a missing Terminate or a DataRow without its RowDescription).
    ``-B`` makes the ring hold hundreds, and the count tcpdump reports at exit
    is checked, so a lossy capture is named as such rather than mis-decoded.
    """
    proc = subprocess.Popen(
        [
            _tcpdump(),
            "-i",
            interface,
            "-n",
            "-s",
            "0",
            "-U",
            "--immediate-mode",
            "-B",
            str(_BUFFER_KIB),
            "-w",
            str(path),
            f"tcp port {pg.port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        banner = ""
        while "listening on" not in banner:  # "data link type ..." may come first
            line = proc.stderr.readline()
            assert line, f"tcpdump stopped before capturing: {banner}"
            banner += line
        # The banner can come before packets flow on every interface ("any"):
        # knock until the capture shows a packet, so the workload is captured whole.
        deadline = time.monotonic() + 30
        while not path.exists() or path.stat().st_size <= _PCAP_HEADER:
            assert time.monotonic() < deadline, "tcpdump captured nothing"
            socket.create_connection((pg.host, pg.port), timeout=10).close()
            time.sleep(0.05)
        workload()
        deadline = time.monotonic() + 60
        while not (path.exists() and TERMINATE in path.read_bytes()) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.02)
    finally:
        proc.terminate()
        _, summary = proc.communicate(timeout=30)
    dropped = re.search(r"(\d+) packets? dropped by kernel", summary)
    assert dropped is not None and dropped[1] == "0", f"the capture lost packets: {summary}"
    assert TERMINATE in path.read_bytes(), "tcpdump never wrote the client's Terminate"


def _psycopg_workload(pg: EmbeddedPostgres) -> Callable[[], None]:
    def run() -> None:
        with psycopg.connect(pg.dsn() + "?sslmode=disable") as conn:
            conn.execute("SELECT username, email FROM users WHERE id = %s", (1,)).fetchall()
            conn.execute("SELECT pg_sleep(0.05)").fetchall()

    return run


def _pcapng_from_pcap(pcap: bytes) -> bytes:
    """The same packets as pcapng (tcpdump 4.99 writes only pcap): SHB, one IDB with nanosecond resolution, EPBs."""
    packets = read_capture(pcap)

    def block(kind: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    tsresol = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
    out += block(1, struct.pack("<HHI", packets[0].link_type, 0, 0) + tsresol)
    for p in packets:
        assert p.time is not None
        ns = round(p.time * 1e9)
        out += block(6, struct.pack("<IIIII", 0, ns >> 32, ns & 0xFFFFFFFF, len(p.data), len(p.data)) + p.data)
    return out


def _decode_cli(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pgproxy decode`` as a user runs it: a process, its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "pgproxy", "decode", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _decode_in_process(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The same command's entry point without a new interpreter (the error paths, many times over)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = decode_command(build_decode_parser().parse_args([str(path), *args]), out=out)
    return subprocess.CompletedProcess(["pgproxy", "decode", str(path), *args], code, out.getvalue(), err.getvalue())


@pytest.mark.slow
@pytest.mark.parametrize("interface", ["lo", "any"], ids=["ethernet", "linux-cooked"])
def test_tcpdump_w_file_decodes_with_real_durations(pg: EmbeddedPostgres, tmp_path: Path, interface: str) -> None:
    """A ``tcpdump -w`` file, as pcap and as pcapng, with the server port recognised from the conversation."""
    pcap = tmp_path / "capture.pcap"
    _capture(pg, pcap, interface, _psycopg_workload(pg))
    link_types = {LinkType.ETHERNET} if interface == "lo" else {LinkType.LINUX_SLL, LinkType.LINUX_SLL2}
    assert read_capture(pcap.read_bytes())[0].link_type in link_types
    pcapng = tmp_path / "capture.pcapng"
    pcapng.write_bytes(_pcapng_from_pcap(pcap.read_bytes()))
    for path in (pcap, pcapng):
        out = _decode_cli(path)  # no --server-port: the suite's server is not on 5432
        assert out.returncode == 0, out.stderr
        events = [json.loads(line) for line in out.stdout.splitlines()]
        rows = [e["row"] for e in events if e.get("type") == "DataRow"]
        assert {"username": "Demo", "email": "demo@aa.io"} in rows
        (query,) = [e for e in events if e["event"] == "query" and "username, email" in e["db.query.text"]]
        assert query["parameters"] == [1] and query["rows"] == 1
        (started,) = [e for e in events if e["event"] == "session.started"]
        assert started["server.port"] == pg.port
        (ready,) = [e for e in events if e["event"] == "session.ready"]
        assert ready["auth_method"] == "trust"
        # Durations come from the capture's clock: the server slept 50 ms before answering.
        (sleep,) = [e for e in events if e["event"] == "query" and "pg_sleep" in e["db.query.text"]]
        assert sleep["duration_ms"] >= 50
        (ended,) = [e for e in events if e["event"] == "session.ended"]
        assert ended["duration_ms"] >= sleep["duration_ms"] + query["duration_ms"]


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["-XX", "-X"], ids=["with-link-layer", "from-ip-header"])
def test_tcpdump_text_dump_decodes_with_capture_times(pg: EmbeddedPostgres, tmp_path: Path, flag: str) -> None:
    """``tcpdump -X``/``-XX`` text (here: of a real capture, read back with ``-r``) keeps the header lines' times."""
    pcap = tmp_path / "capture.pcap"
    _capture(pg, pcap, "lo", _psycopg_workload(pg))
    dump = subprocess.run(
        [_tcpdump(), "-r", str(pcap), "-n", flag], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    packets = read_hexdump(dump)
    assert packets and all(parse_frame(p.data) is not None and p.time is not None for p in packets)
    records = decode_bytes(dump.encode())
    (query,) = [r for r in records if r.event == "query" and "username, email" in r["db.query.text"]]
    assert query["parameters"] == [1] and query["rows"] == 1
    (sleep,) = [r for r in records if r.event == "query" and "pg_sleep" in r["db.query.text"]]
    assert sleep["duration_ms"] >= 50


@pytest.mark.slow
def test_capture_that_starts_mid_session_reports_only_what_it_saw(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    """Packets from the first query on: the queries decode, the unseen start-up is not reported."""
    pcap = tmp_path / "capture.pcap"
    _capture(pg, pcap, "lo", _psycopg_workload(pg))
    packets = read_capture(pcap.read_bytes())
    first_query = next(i for i, p in enumerate(packets) if b"username, email" in p.data)
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(pcap.read_bytes()[:24] + _pcap_records(packets[first_query:]))
    out = _decode_cli(cut)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert not [e for e in events if e["event"] in ("session.ready", "session.started", "session.anomaly")]
    assert not [e for e in events if "auth_method" in e or "setup_ms" in e]
    (query,) = [e for e in events if e["event"] == "query" and "username, email" in e["db.query.text"]]
    assert query["rows"] == 1


def _pcap_records(packets: list[Packet]) -> bytes:
    out = b""
    for p in packets:
        assert p.time is not None
        seconds = int(p.time)
        out += struct.pack("<IIII", seconds, round((p.time - seconds) * 1e6), len(p.data), len(p.data)) + p.data
    return out


def test_a_lone_response_invents_no_session_and_no_durations() -> None:
    """A Wireshark hex dump of one response (RowDescription ... ReadyForQuery): no times, no start-up in it."""
    (conn,) = recordings()["psql"]
    backend = [data for frontend, data in conn if not frontend]
    response = next(d for d in backend if d[:1] == b"T" and b"Z\x00\x00\x00\x05" in d)
    dump = _wireshark_dump([response])
    records = decode_bytes(dump.encode(), direction="backend")
    assert [r.get("type") for r in records if r.event == "message"][-1] == "ReadyForQuery"
    assert not [r for r in records if r.event in ("session.ready", "session.anomaly")]
    assert not [r for r in records if "duration_ms" in r or "setup_ms" in r or "auth_method" in r]


def test_no_postgres_traffic_is_an_error_naming_the_ports_seen(tmp_path: Path) -> None:
    frames = _checksum_free_frames([(True, b"GET / HTTP/1.1\r\n\r\n"), (False, b"HTTP/1.1 200 OK\r\n\r\n")], 8080)
    dump = tmp_path / "http.txt"
    dump.write_text(_wireshark_dump(frames))
    out = _decode_in_process(dump)
    assert out.returncode == 1 and out.stdout == ""
    assert "no PostgreSQL traffic" in out.stderr and "8080" in out.stderr and "50000" in out.stderr
    out = _decode_in_process(dump, "--server-port", "5499")
    assert out.returncode == 1 and "port 5499" in out.stderr and "8080" in out.stderr


def test_bad_capture_files_are_clear_errors(tmp_path: Path) -> None:
    (conn,) = recordings()["psql"]
    frame = _checksum_free_frames(conn, 5432)[0]
    record = struct.pack("<IIII", 1_700_000_000, 0, len(frame), len(frame)) + frame
    cases = {
        "link type 147 is not supported": struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147) + record,
        "packet 1 is truncated": struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + record[:-10],
    }
    for expected, content in cases.items():
        path = tmp_path / "bad.pcap"
        path.write_bytes(content)
        out = _decode_in_process(path)
        assert out.returncode == 1 and expected in out.stderr, (expected, out.stderr)
    good = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + record
    (packet,) = read_capture(good)
    assert packet.link_type is LinkType.ETHERNET and packet.time == 1_700_000_000
    assert parse_frame(packet.data, packet.link_type.header_length) is not None


def test_bytes_missing_from_a_capture_stop_decoding_with_an_anomaly() -> None:
    (conn,) = recordings()["psql"]
    frames = _checksum_free_frames(conn, 5432)
    lost = next(i for i, (frontend, data) in enumerate(conn) if frontend and data[:1] == b"Q")
    records = decode_bytes(_wireshark_dump(frames[:lost] + frames[lost + 1 :]).encode())
    (gap,) = [r for r in records if r.event == "session.anomaly"]
    assert gap["kind"] == "capture_gap" and gap["direction"] == "frontend"
    assert f"{len(conn[lost][1])} bytes" in gap["reason"]
    assert records[-1].event == "session.ended"
    # Nothing from the gap on is guessed at: only messages before it were decoded.
    assert records.index(gap) == len(records) - 2
    lost_sql = conn[lost][1][5:-1].decode()
    assert not [r for r in records if r.event == "query" and r["db.query.text"] == lost_sql]


def test_bytes_that_are_not_postgres_are_an_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    for content in (bytes(range(256)) * 4, bytes(range(99, 256)) * 4):
        garbage.write_bytes(content)
        out = _decode_in_process(garbage)
        assert out.returncode == 1 and "no PostgreSQL messages found" in out.stderr
        assert '"event":"session.anomaly"' in out.stdout  # what the decoder saw is still shown
    out = _decode_in_process(garbage, "--input", "hex")
    assert out.returncode == 1 and "not a text hex dump" in out.stderr


def test_server_port_is_recognised_from_the_conversation() -> None:
    """A capture of a server on 5499 decodes without --server-port (startup packet, 'R' and 'Z' tell)."""
    (conn,) = recordings()["psql"]
    frames = _checksum_free_frames(conn, 5499)
    records = decode_bytes(_wireshark_dump(frames).encode())
    assert _types(records).count("StartupMessage") == 1
    (started,) = [r for r in records if r.event == "session.started"]
    assert started["server.port"] == 5499
    backend_only = [f for f, (frontend, _) in zip(frames, conn, strict=True) if not frontend]
    records = decode_bytes(_wireshark_dump(backend_only).encode())
    assert any(r.get("type") == "DataRow" for r in records)


def _dump_with(tool: list[str], data: bytes) -> str:
    if shutil.which(tool[0]) is None:
        pytest.skip(f"{tool[0]} is not installed: its dump layout NOT tested against the real tool")
    return subprocess.run(tool, input=data, capture_output=True, check=True).stdout.decode()


@pytest.mark.parametrize("tool", [["hexdump", "-C"], ["xxd"]], ids=["hexdump-C", "xxd"])
def test_hexdump_c_and_xxd_dumps_of_bare_bytes(tool: list[str]) -> None:
    """`hexdump -C` (ASCII between bars) and `xxd` layouts of bare protocol bytes."""
    (conn,) = recordings()["psql"]
    backend = b"".join(d for f, d in conn if not f)
    dump = _dump_with(tool, backend)
    assert b"".join(parse_hexdump(dump)) == backend
    records = decode_bytes(dump.encode(), direction="backend")
    assert any(r.get("type") == "ErrorResponse" for r in records)


def test_repeated_lines_are_expanded_and_gaps_are_errors() -> None:
    data = b"A" * 64 + b"tail"
    written = (  # hexdump -C's layout, as the tool prints it
        "00000000  41 41 41 41 41 41 41 41  41 41 41 41 41 41 41 41  |AAAAAAAAAAAAAAAA|\n*\n"
        "00000040  74 61 69 6c                                       |tail|\n00000044\n"
    )
    assert parse_hexdump(written) == [data]
    with pytest.raises(CaptureError):
        parse_hexdump("00000000  41 41\n00000010  41 41\n")
    dump = _dump_with(["hexdump", "-C"], data)
    assert "*" in dump
    assert parse_hexdump(dump) == [data]
