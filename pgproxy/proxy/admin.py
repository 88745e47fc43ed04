"""The admin HTTP endpoint: probes, Prometheus metrics and a shutdown hook.

A deliberately small HTTP/1.1 server on the proxy's own event loop (the
standard library's ``asyncio.start_server``; one request per connection, no
keep-alive, bodies ignored). Probes and scrapes are a handful of requests a
second at most, so a framework would add a dependency and per-request work
for nothing; a request here costs the loop tens of microseconds plus, for
``/metrics``, the rendering of the folded numbers (README, "Admin endpoint").

Endpoints (Cloud SQL Auth Proxy and Kubernetes conventions):

* ``GET /startup``: 503 until the proxy listens, then 200.
* ``GET /livez``: 200 while the event loop turns (this very answer proves it).
* ``GET /readyz``: 503 while stopping, at the connection limit, or when the
  upstream cannot be reached within ``admin.upstream_check_timeout``.
* ``GET /metrics``: Prometheus text exposition from the metrics sink.
* ``POST /quitquitquit``: starts the graceful stop (for preStop hooks), from a
  loopback address only: the endpoint listens on the pod network for probes
  and scrapes, and nobody else in the cluster should be able to stop the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from pgproxy.proxy.address import socket_address
from pgproxy.proxy.server import ProxyServer
from pgproxy.sink import Sink
from pgproxy.sink.metrics import MetricsSink

#: Longest request head read (request line and headers); probes send ~100 bytes.
MAX_REQUEST_HEAD: Final = 8192
#: Seconds a client gets to send its request before the connection is dropped.
REQUEST_TIMEOUT: Final = 5.0
#: Seconds an upstream reachability answer is reused, so probe storms do not dial the server each time.
UPSTREAM_CHECK_TTL: Final = 1.0
_PROMETHEUS_TEXT: Final = "text/plain; version=0.0.4; charset=utf-8"
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


class AdminServer:
    """Serves the admin endpoints for one :class:`ProxyServer`.

    Args:
        proxy: the proxy whose state the probes report.
        metrics: the metrics sink rendered by ``/metrics``.
        sink: where the admin endpoint's own events go.
        upstream_check_timeout: seconds ``/readyz`` waits for a TCP connection to the upstream.
        stopping: whether a graceful stop is under way.
        request_stop: starts the graceful stop (``/quitquitquit``).
    """

    def __init__(
        self,
        proxy: ProxyServer,
        metrics: MetricsSink,
        sink: Sink,
        upstream_check_timeout: float,
        stopping: Callable[[], bool],
        request_stop: Callable[[str], None],
    ) -> None:
        self.proxy = proxy
        self.metrics = metrics
        self.sink = sink
        self.upstream_check_timeout = upstream_check_timeout
        self.stopping = stopping
        self.request_stop = request_stop
        self.started = False
        self._server: asyncio.Server | None = None
        self._checked_at = -UPSTREAM_CHECK_TTL
        self._upstream_error: str | None = None
        self._ready: bool | None = None
        self._check: asyncio.Task[None] | None = None
        self._json_routes: dict[str, Callable[[], Any]] = {}

    def add_json_route(self, path: str, produce: Callable[[], Any]) -> None:
        """Serve ``GET path`` as the JSON of ``produce()`` (e.g. ``/stats`` from the statistics sink)."""
        self._json_routes[path] = produce

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port``; OSError names the admin address when that fails."""
        try:
            self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen on the admin address {host}:{port}: {exc.strerror or exc}"
            ) from exc

    @property
    def address(self) -> str:
        assert self._server is not None
        return socket_address(self._server.sockets[0].getsockname())

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    # ------------------------------------------------------------------ HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            if len(head) > MAX_REQUEST_HEAD:
                reply = Reply(400, b"request head too long\n")
            else:
                reply = await self._route(head, _from_loopback(writer.get_extra_info("peername")))
            writer.write(
                f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, '')}\r\n"
                f"Content-Type: {reply.content_type}\r\nContent-Length: {len(reply.body)}\r\n"
                "Connection: close\r\n\r\n".encode("ascii")
                + reply.body
            )
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()

    async def _route(self, head: bytes, local: bool) -> Reply:
        try:
            method, target, _version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ", 2)
        except (UnicodeDecodeError, ValueError):
            return Reply(400, b"malformed request line\n")
        path = target.split("?", 1)[0]
        if path == "/quitquitquit":
            if method != "POST":
                return Reply(405, b"use POST\n")
            if not local:
                return Reply(403, b"only from a loopback address (a preStop hook in the pod)\n")
            self.request_stop("quitquitquit")
            return Reply(200, b"stopping\n")
        if method not in ("GET", "HEAD"):
            return Reply(405, b"use GET\n")
        if path == "/livez":
            return Reply(200, b"ok\n")
        if path == "/startup":
            return Reply(200, b"started\n") if self.started else Reply(503, b"starting\n")
        if path == "/readyz":
            return await self._readiness()
        if path == "/metrics":
            return Reply(200, self.metrics.render(), _PROMETHEUS_TEXT)
        produce = self._json_routes.get(path)
        if produce is not None:
            return Reply(200, orjson.dumps(produce()) + b"\n", "application/json")
        return Reply(404, b"not found: try /startup, /livez, /readyz, /metrics, POST /quitquitquit\n")

    # ------------------------------------------------------------------ readiness

    async def _readiness(self) -> Reply:
        if not self.started:
            return self._verdict(False, "starting")
        if self.stopping():
            return self._verdict(False, "stopping")
        if self.proxy.at_connection_limit:
            return self._verdict(False, "at the connection limit")
        error = await self._upstream_reachable()
        if error is not None:
            return self._verdict(False, f"upstream unreachable: {error}")
        return self._verdict(True, "ready")

    def _verdict(self, ready: bool, reason: str) -> Reply:
        if ready != self._ready:
            # Changes only, so a probe every few seconds does not fill the log.
            self._ready = ready
            self.sink.log("info" if ready else "warning", "readiness.changed", ready=ready, reason=reason)
        return Reply(200 if ready else 503, f"{reason}\n".encode())

    async def _upstream_reachable(self) -> str | None:
        """None when a TCP connection to the upstream opened in time, else why not.

        The connection is closed without a byte sent: PostgreSQL logs nothing
        for that ("If we get no data at all, don't clutter the log", postmaster.c).
        """
        if time.monotonic() - self._checked_at < UPSTREAM_CHECK_TTL:
            return self._upstream_error
        if self._check is None or self._check.done():
            self._check = asyncio.get_running_loop().create_task(self._dial_upstream())
        await asyncio.shield(self._check)
        return self._upstream_error

    async def _dial_upstream(self) -> None:
        cfg = self.proxy.config
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(cfg.upstream_host, cfg.upstream_port), self.upstream_check_timeout
            )
        except TimeoutError:
            error: str | None = f"no connection within {self.upstream_check_timeout:g}s"
        except OSError as exc:
            error = exc.strerror or str(exc) or type(exc).__name__
        else:
            error = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        self._upstream_error = error
        self._checked_at = time.monotonic()


def _from_loopback(peer: object) -> bool:
    """Whether a TCP peer address is loopback (IPv4-mapped IPv6 included)."""
    if not isinstance(peer, tuple) or not peer:
        return False
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
