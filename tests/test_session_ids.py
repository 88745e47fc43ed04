"""Session ids: the server's prefix and a counter in four hex digits, more past 65535."""

from __future__ import annotations

import io

from pgproxy.proxy.server import ProxyServer, ProxySettings
from pgproxy.sink import LogSink
from pgproxy.tracker.options import TrackerOptions


def test_session_ids_are_the_prefix_and_the_counter_in_hex() -> None:
    sink = LogSink(stream=io.StringIO(), fmt="json")
    try:
        server = ProxyServer(ProxySettings(), TrackerOptions(), sink)
        ids = [server.new_session_id() for _ in range(0x10001)]
    finally:
        sink.close()
    prefix = ids[0][:-4]
    assert len(prefix) == 4
    assert ids == [f"{prefix}{n:04x}" for n in range(1, 0x10002)]
    assert ids[-3:] == [prefix + "ffff", prefix + "10000", prefix + "10001"]
