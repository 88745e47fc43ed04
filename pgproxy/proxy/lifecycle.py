"""The proxy process's life: start, serve, reload on SIGHUP, drain on SIGTERM, stop.

Everything asyncio lives in ``pgproxy/proxy/``; ``pgproxy.cli`` only parses
arguments and configuration and calls :func:`run_proxy`.

Stopping (SIGTERM, SIGINT, ``POST /quitquitquit``) loses no work, the way
PostgreSQL's own "smart" shutdown turned "fast" after a deadline:

1. ``proxy.stopping`` is logged and ``/readyz`` answers 503; for
   ``min_sigterm_delay`` seconds new clients are still accepted (a load
   balancer or Kubernetes endpoint controller needs a moment to notice).
2. The listeners close. Sessions idle outside a transaction receive
   ``FATAL 57P01 terminating connection due to administrator command``, as
   from PostgreSQL itself, and are closed; every other session ends the same
   way the moment its statement or transaction is over.
3. After ``max_sigterm_delay`` seconds the sessions still busy get the same
   error (a running statement is cancelled first).
4. ``proxy.stopped`` is logged, the log is flushed, and the exit code is 0
   (or 128 + the signal number with ``exit_zero_on_sigterm = false``).

A second SIGTERM/SIGINT ends everything at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pgproxy import __version__
from pgproxy.compiled import compiled_modules
from pgproxy.config import Config, ConfigError, reloadable
from pgproxy.proxy.address import host_port
from pgproxy.proxy.loop import loop_factory
from pgproxy.proxy.server import ProxyServer, ProxySettings
from pgproxy.proxy.tls import TLSConfigError
from pgproxy.proxy.workers import current_worker, run_workers
from pgproxy.sink import Fanout, LogSink, Sink
from pgproxy.sink.stats import StatementStats
from pgproxy.tracker.fingerprint import shared_analyzer
from pgproxy.tracker.records import Record
from pgproxy.tracker.redaction import HashKeySource, ParameterMode

if TYPE_CHECKING:  # imported at run time only when the admin endpoint is on (prometheus-client)
    from pgproxy.proxy.admin import AdminServer
    from pgproxy.sink.metrics import MetricsSink

EXIT_USAGE: Final = 2
#: Seconds closing sessions get to flush their last bytes before they are aborted.
CLOSE_TIMEOUT: Final = 2.0
#: The least time between two ``log.dropped`` records for the metrics: a log queue that
#: overflows for minutes makes one a second, not one per dropped line.
DROP_REPORT_INTERVAL: Final = 1.0
#: Added to the wait for the next ``statement.stats`` report: a loop timer may fire up to
#: ~1.5 ms early (uvloop rounds delays to whole milliseconds on a millisecond clock), and a
#: report is not due before its time.
TIMER_SLACK: Final = 0.005


def run_proxy(config: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run the proxy until it is stopped; returns the exit code.

    Args:
        config: the validated configuration.
        reload: builds the configuration anew (same file, environment and
            flags) on SIGHUP; without it SIGHUP only reopens the log file.
    """
    if config["proxy.workers"] > 1 and current_worker() is None:
        return run_workers(config["proxy.workers"], lambda: run_proxy(config, reload))
    factory, loop_name = loop_factory(config["proxy.loop"])
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(Lifecycle(config, loop_name, reload).run())


def settings_from(config: Config) -> ProxySettings:
    """What the I/O layer needs, from the validated configuration."""
    listen_host, listen_port = config.listen
    upstream_host, upstream_port = config.upstream
    return ProxySettings(
        listen_host=listen_host,
        listen_port=listen_port,
        listen_addresses=tuple(config.listen_addresses),
        upstream_host=upstream_host,
        upstream_port=upstream_port,
        connect_timeout=config["proxy.connect_timeout"],
        startup_timeout=config["proxy.startup_timeout"],
        tls_client_mode=config["tls.client_mode"],
        max_connections=config["proxy.max_connections"],
        shutdown_grace=config["proxy.max_sigterm_delay"],
        write_buffer_high=config["proxy.write_buffer_high"],
        socket_buffer=config["proxy.socket_buffer"],
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
        lock=worker.log_lock if (worker := current_worker()) is not None else None,
    )


#: Statements ``/stats`` lists (the heaviest by total time): rendering all 5,000 entries
#: would hold the event loop for tens of milliseconds per request.
STATS_ROUTE_LIMIT: Final = 200


def stats_from(config: Config, output: Callable[[list[Record]], None]) -> StatementStats | None:
    """The statement-statistics sink, when enabled and fed (it needs query events with fingerprints)."""
    if not (config["stats.enabled"] and config["query.fingerprints"]) or config["log.detail"] == "connection":
        return None
    return StatementStats(
        output=output,
        interval=config["stats.interval"],
        max_entries=config["stats.max_entries"],
        extra=shared_analyzer().snapshot,
    )


class Lifecycle:
    """One run of the proxy process, from listening to the exit code."""

    def __init__(self, config: Config, loop_name: str, reload: Callable[[], Config] | None = None) -> None:
        self.config = config
        self.loop_name = loop_name
        self.reload = reload
        self.stop_reason: str | None = None
        self.signum: int | None = None
        self.forced = False
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self.sink: Sink
        self.log_sink: LogSink
        self.server: ProxyServer
        self.metrics: MetricsSink | None = None
        self.admin: AdminServer | None = None
        self._reported_drops = 0
        self._drops_seen = asyncio.Event()  # a log writer dropped lines: see _housekeeping
        self.stats: StatementStats | None = None

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        config = self.config
        settings = settings_from(config)
        try:
            self.log_sink = sink_from(config)
        except OSError as exc:
            print(f"pgproxy: cannot open log file {config['log.file']!r}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
        admin_address = config.admin_listen
        worker = current_worker()
        if worker is not None and worker.index:
            admin_address = None  # one port: with proxy.workers, the first worker serves the admin endpoint
        consumers: list[Any] = []
        if admin_address is not None:
            from pgproxy.sink.metrics import MetricsSink  # prometheus-client only when asked for

            self.metrics = MetricsSink(self.loop_name)
            consumers.append(self.metrics)
        self.stats = stats_from(config, self.log_sink.emit_all)
        if self.stats is not None:
            consumers.append(self.stats)
            if self.metrics is not None:
                from pgproxy.sink.stats_metrics import TopStatementsCollector

                self.metrics.registry.register(TopStatementsCollector(self.stats))
        self.sink = Fanout(self.log_sink, consumers) if consumers else self.log_sink
        try:
            self.server = ProxyServer(settings, config.tracker_options(), self.sink)
        except TLSConfigError as exc:
            self.sink.close()
            print(f"pgproxy: invalid configuration: {exc}", file=sys.stderr)
            return EXIT_USAGE
        try:
            if admin_address is not None and self.metrics is not None:
                # The admin endpoint first, so /startup can say "not yet" while the proxy binds.
                from pgproxy.proxy.admin import AdminServer

                self.admin = AdminServer(
                    self.server,
                    self.metrics,
                    self.sink,
                    config["admin.upstream_check_timeout"],
                    stopping=lambda: self.stopping,
                    request_stop=self.request_stop,
                )
                if self.stats is not None:
                    stats = self.stats
                    self.admin.add_json_route("/stats", lambda: stats.snapshot(limit=STATS_ROUTE_LIMIT))
                await self.admin.start(*admin_address)
            await self.server.start()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self.sink.log("error", "proxy.failed", reason=reason)
            if self.admin is not None:
                await self.admin.close()
            self.server.stop_accepting()
            self.sink.close()
            print(f"pgproxy: {reason}", file=sys.stderr)
            return 1
        loop = asyncio.get_running_loop()
        if self.metrics is not None:
            drops_seen = self._drops_seen

            def dropped() -> None:  # any thread: the one that dropped
                with contextlib.suppress(RuntimeError):  # the loop is closed: shutdown reports the rest
                    loop.call_soon_threadsafe(drops_seen.set)

            self.log_sink.notify_drops(dropped)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        started: dict[str, Any] = {
            "listen": self.server.addresses,
            "upstream": host_port(settings.upstream_host, settings.upstream_port),
            "loop": self.loop_name,
            "detail": config["log.detail"],
            "tls_client_mode": settings.tls_client_mode,
            "tls_upstream_mode": settings.tls_upstream_mode,
            "version": __version__,
        }
        compiled = compiled_modules()
        started["compiled"] = bool(compiled)
        if compiled:
            started["compiled_modules"] = compiled
        if config["redaction.parameters"] == ParameterMode.HASH.value:
            # Say which key hashes parameters (never the key): a random one means
            # hashes do not correlate across restarts or instances.
            source = HashKeySource.CONFIGURED if config["redaction.hash_key"] else HashKeySource.RANDOM
            started["redaction.hash_key"] = source.value
        if self.admin is not None:
            started["admin"] = self.admin.address
            self.admin.started = True
        if config.ignored_environment:
            started["ignored_environment"] = list(config.ignored_environment)
        if worker is not None:
            started.update(worker=worker.index, workers=worker.count)
        self.sink.log("info", "proxy.started", **started)
        serve = loop.create_task(self.server.serve_forever())
        housekeeping = loop.create_task(self._housekeeping())
        try:
            await self._stop.wait()
            await self._drain(config["proxy.min_sigterm_delay"], config["proxy.max_sigterm_delay"])
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            housekeeping.cancel()
            serve.cancel()
            await asyncio.gather(serve, housekeeping, return_exceptions=True)
            self.log_sink.notify_drops(None)
        if self.admin is not None:
            await self.admin.close()
        self._report_drops()
        if self.stats is not None:
            self.stats.close()  # what ran since the last statement.stats report
        self.sink.log(
            "info", "proxy.stopped", reason=self.stop_reason, forced=self.forced, **dict(self.server.counters)
        )
        self.sink.close()
        if self.signum is not None and not config["proxy.exit_zero_on_sigterm"]:
            return 128 + self.signum
        return 0

    # ------------------------------------------------------------------ stopping

    def request_stop(self, reason: str, signum: int | None = None) -> None:
        """Start the graceful stop; a second request (a second Ctrl-C) ends everything at once."""
        if self.stop_reason is not None:
            if not self._force.is_set():
                self.forced = True
                self.sink.log("warning", "proxy.forced", reason=reason, sessions=len(self.server.sessions))
                self._force.set()
            return
        self.stop_reason = reason
        self.signum = signum
        self._stop.set()

    def _on_stop_signal(self, signum: int) -> None:
        self.request_stop(signal.Signals(signum).name, signum)

    async def _wait_unless_forced(self, seconds: float) -> None:
        if seconds > 0 and not self._force.is_set():
            try:
                await asyncio.wait_for(self._force.wait(), seconds)
            except TimeoutError:
                pass

    async def _drain(self, min_delay: float, max_delay: float) -> None:
        server = self.server
        self.sink.log(
            "info",
            "proxy.stopping",
            reason=self.stop_reason,
            sessions=len(server.sessions),
            min_sigterm_delay=min_delay,
            max_sigterm_delay=max_delay,
        )
        await self._wait_unless_forced(min_delay)  # still accepting: /readyz says 503 meanwhile
        server.stop_accepting()
        if not self._force.is_set():
            server.begin_drain()
            deadline = time.monotonic() + max_delay
            while server.sessions and not self._force.is_set() and time.monotonic() < deadline:
                waiter = asyncio.ensure_future(self._force.wait())
                emptied = asyncio.ensure_future(server.wait_empty(deadline - time.monotonic()))
                await asyncio.wait((waiter, emptied), return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                emptied.cancel()
            if server.sessions and not self._force.is_set():
                self.sink.log("warning", "proxy.deadline", sessions=len(server.sessions), max_sigterm_delay=max_delay)
                server.shut_down_all()
                deadline = time.monotonic() + CLOSE_TIMEOUT
                while server.sessions and not self._force.is_set() and time.monotonic() < deadline:
                    await server.wait_empty(0.05)
        server.abort_all()
        await server.finish()

    # ------------------------------------------------------------------ SIGHUP

    def _on_reload_signal(self) -> None:
        reopened = self._reopen_log()
        self._reload_tls()
        if self.reload is None:
            return
        try:
            fresh = self.reload()
        except ConfigError as exc:
            self.sink.log("error", "config.reload_failed", reason=str(exc), action="kept the previous settings")
            return
        changed = sorted(k for k in fresh.values if fresh.values[k] != self.config.values[k])
        applied = [k for k in changed if reloadable(k)]
        needs_restart = [k for k in changed if not reloadable(k)]
        if applied:
            values = dict(self.config.values)
            sources = dict(self.config.sources)
            for key in applied:
                values[key] = fresh.values[key]
                sources[key] = fresh.sources[key]
            self.config = Config(values, sources, self.config.ignored_environment)
            self.server.reconfigure(self.config.tracker_options())
            self.log_sink.set_level(self.config["log.level"])
        self.sink.log(
            "info",
            "config.reloaded",
            applied=applied,
            restart_required=needs_restart,
            log_file_reopened=reopened,
            note="open sessions adopt it once their current request is answered",
        )

    def _reload_tls(self) -> None:
        """Re-read pgproxy's own certificate and key (terminate mode): rotated files apply to new sessions."""
        if self.server.config.tls_client_mode != "terminate":
            return
        try:
            self.server.reload_tls()
        except TLSConfigError as exc:
            self.sink.log("error", "tls.reload_failed", reason=str(exc), action="kept the previous certificate")
            return
        self.sink.log("info", "tls.reloaded", certificate=self.server.config.tls_client_cert_file)

    def _reopen_log(self) -> bool:
        try:
            self.log_sink.reopen()
        except OSError as exc:
            self.sink.log(
                "error",
                "log.reopen_failed",
                file=self.log_sink.file,
                reason=exc.strerror or str(exc),
                action="kept writing to the previous file",
            )
            return False
        return bool(self.log_sink.file)

    # ------------------------------------------------------------------ housekeeping

    async def _housekeeping(self) -> None:
        """The proxy's timed work, woken only when some is due: an idle proxy does not wake.

        Two things: a log writer's drops become a ``log.dropped`` record for the
        metrics (the writer that dropped sets ``_drops_seen``; then at most one
        record a second), and ``statement.stats`` is reported every
        ``stats.interval`` with or without traffic (traffic also reports from
        its own records). A one-second timer did both before, due or not: an
        idle proxy's event loop woke every second for nothing (about a quarter
        of a millisecond of CPU a second, schedstat).
        """
        stats = self.stats
        drops_seen = self._drops_seen
        while True:
            if stats is not None:
                stats.tick()
            due = stats.seconds_to_report() if stats is not None else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drops_seen.wait(), None if due is None else due + TIMER_SLACK)
            if drops_seen.is_set():
                drops_seen.clear()
                self._report_drops()
                await asyncio.sleep(DROP_REPORT_INTERVAL)  # lines dropped meanwhile set the event again

    def _report_drops(self) -> None:
        """Log drops become a record for the metrics (the writer logs its own line for people)."""
        if self.metrics is None:
            return
        self.log_sink.drops_reported()  # first: a drop from here on sets _drops_seen again
        dropped = self.log_sink.dropped
        if dropped != self._reported_drops:
            since, self._reported_drops = dropped - self._reported_drops, dropped
            self.metrics.emit(
                Record("log.dropped", "warning", {"dropped_total": dropped, "dropped_since_last_report": since})
            )
