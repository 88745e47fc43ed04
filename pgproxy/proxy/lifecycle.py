"""The proxy process's life: start, serve, drain on a signal, stop.

Moved out of the command line so that everything asyncio lives in
``pgproxy/proxy/``; ``pgproxy.cli`` only parses arguments and configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from pgproxy import __version__
from pgproxy.config import Config
from pgproxy.proxy.loop import loop_factory
from pgproxy.proxy.server import ProxyServer, ProxySettings
from pgproxy.proxy.tls import TLSConfigError
from pgproxy.sink import LogSink

EXIT_USAGE = 2


def run_proxy(config: Config) -> int:
    """Run the proxy until SIGINT/SIGTERM; returns the exit code."""
    factory, loop_name = loop_factory(config["proxy.loop"])
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_serve(config, loop_name))


def settings_from(config: Config) -> ProxySettings:
    """What the I/O layer needs, from the validated configuration."""
    listen_host, listen_port = config.listen
    upstream_host, upstream_port = config.upstream
    return ProxySettings(
        listen_host=listen_host,
        listen_port=listen_port,
        upstream_host=upstream_host,
        upstream_port=upstream_port,
        connect_timeout=config["proxy.connect_timeout"],
        startup_timeout=config["proxy.startup_timeout"],
        tls_client_mode=config["tls.client_mode"],
        max_connections=config["proxy.max_connections"],
        shutdown_grace=config["proxy.shutdown_grace"],
        write_buffer_high=config["proxy.write_buffer_high"],
        **{"tls_" + key.removeprefix("tls."): config[key] for key in TLS_FILE_KEYS},
    )


#: The ``tls.*`` options passed to ProxySettings as ``tls_<name>``, besides ``tls.client_mode``.
TLS_FILE_KEYS = (
    "tls.client_cert_file",
    "tls.client_key_file",
    "tls.client_ca_file",
    "tls.upstream_mode",
    "tls.upstream_ca_file",
    "tls.upstream_cert_file",
    "tls.upstream_key_file",
    "tls.upstream_server_name",
)


def sink_from(config: Config) -> LogSink:
    """The log sink the configuration asks for (raises OSError for an unopenable log file)."""
    return LogSink(
        fmt=config["log.format"],
        file=config["log.file"] or None,
        min_level=config["log.level"],
        max_queued=config["log.max_queued_lines"],
    )


async def _serve(config: Config, loop_name: str) -> int:
    settings = settings_from(config)
    try:
        sink = sink_from(config)
    except OSError as exc:
        print(f"pgproxy: cannot open log file {config['log.file']!r}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        server = ProxyServer(settings, config.tracker_options(), sink)
    except TLSConfigError as exc:
        sink.close()
        print(f"pgproxy: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        await server.start()
    except OSError as exc:
        sink.log(
            "error",
            "proxy.failed",
            reason=f"cannot listen on {settings.listen_host}:{settings.listen_port}: {exc.strerror or exc}",
        )
        sink.close()
        print(
            f"pgproxy: cannot listen on {settings.listen_host}:{settings.listen_port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    sink.log(
        "info",
        "proxy.started",
        listen=[f"{h}:{p}" for h, p in server.sockets],
        upstream=f"{settings.upstream_host}:{settings.upstream_port}",
        loop=loop_name,
        detail=config["log.detail"],
        tls_client_mode=settings.tls_client_mode,
        version=__version__,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    serve = loop.create_task(server.serve_forever())
    await stop.wait()
    sink.log("info", "proxy.stopping", sessions=len(server.sessions), grace_s=settings.shutdown_grace)
    await server.close()
    serve.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serve
    sink.log("info", "proxy.stopped", **dict(server.counters))
    sink.close()
    return 0
