"""The floor for a Python proxy: a bare uvloop TCP byte forwarder, no decoding, no logging.

The same socket work pgproxy pays (two protocols back to back, TCP_NODELAY,
cross-wired flow control), nothing else. bench/proxy_bench.py runs it beside
pgproxy so the cost of observing can be told apart from the cost of relaying.

Run: ``python bench/forwarder.py LISTEN_PORT UPSTREAM_PORT``.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

import uvloop


class Side(asyncio.Protocol):
    """One connection; ``peer`` is the other side of the same session."""

    def __init__(self, peer: Side | None = None) -> None:
        self.peer: Side | None = peer
        self.transport: Any = None  # uvloop's TCPTransport is not an asyncio.Transport subclass
        self.early = bytearray()  # client bytes uvloop delivered while the upstream was dialled

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.peer is None:  # client side: dial the upstream, hold the client until it is up
            transport.pause_reading()
            asyncio.get_running_loop().create_task(self.dial())

    async def dial(self) -> None:
        try:
            _, self.peer = await asyncio.get_running_loop().create_connection(lambda: Side(self), "127.0.0.1", UPSTREAM)
        except OSError:
            self.transport.close()
            return
        if self.early:
            self.peer.transport.write(bytes(self.early))
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early += data
        else:
            peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Side, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


if __name__ == "__main__":
    LISTEN, UPSTREAM = int(sys.argv[1]), int(sys.argv[2])
    uvloop.run(serve(LISTEN))
