"""The log sink: the one place that configures and calls structlog.

Records produced by the tracker (and events of the proxy itself) are rendered
to JSON lines or console text and handed to :class:`QueueWriter` threads, so
writing never blocks the event loop.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Final, Protocol

import structlog

from pgproxy.sink.render import ConsoleRenderer, JsonLines, Stamp, dumps
from pgproxy.sink.stats import StatementStats
from pgproxy.sink.writer import DEFAULT_MAX_QUEUED, QueueWriter
from pgproxy.tracker.records import KeptRecord, Record

_LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def _levels_from(threshold: int) -> frozenset[str]:
    """The level names at or above ``threshold``: a record's level looked up in a set, not its number compared.

    Asked for every record (message detail makes a dozen a statement): the
    name's number from a dict, then the comparison, cost ~50 instructions a
    record more (a prepared statement at message detail, tracker and sinks:
    68.0k -> 67.5k, compiled, callgrind). A name not listed is never written
    the direct way, as its number (none) never reached the threshold.
    """
    return frozenset(name for name, number in _LEVELS.items() if number >= threshold)


@dataclass
class _Destination:
    writer: QueueWriter
    logger: Any
    json: bool
    owned_stream: IO[str] | None = None
    by_level: dict[str, Any] = field(default_factory=dict)  # level name -> bound method, resolved once


class _WriterLogger:
    """structlog "logger" whose only job is to queue the rendered line."""

    def __init__(self, writer: QueueWriter) -> None:
        self._write = writer.write

    # One method per level name, each written out: the compiled build (mypyc)
    # takes no chained assignment in a class body.
    def msg(self, message: str) -> None:
        self._write(message)

    def debug(self, message: str) -> None:
        self._write(message)

    def info(self, message: str) -> None:
        self._write(message)

    def warning(self, message: str) -> None:
        self._write(message)

    def error(self, message: str) -> None:
        self._write(message)

    def critical(self, message: str) -> None:
        self._write(message)

    def log(self, message: str) -> None:
        self._write(message)


@dataclass
class LogSink:
    """Renders and writes events to one or more destinations.

    Args:
        stream: primary text stream (stdout by default).
        fmt: ``"json"``, ``"console"`` or ``"auto"`` (console when the stream is a TTY).
        file: optional path; JSON lines are appended there too.
        min_level: events below this level are dropped before rendering.
        max_queued: lines each writer holds before dropping (and counting) new ones.
        lock: a lock shared with other processes writing the same streams
            (``proxy.workers``), held per batch so lines never interleave.
    """

    stream: IO[str] = field(default_factory=lambda: sys.stdout)
    fmt: str = "auto"
    file: str | None = None
    min_level: str = "debug"
    max_queued: int = DEFAULT_MAX_QUEUED
    lock: Any = None
    _destinations: list[_Destination] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        fmt = self.fmt
        if fmt == "auto":
            fmt = "console" if _isatty(self.stream) else "json"
        if fmt not in ("json", "console"):
            raise ValueError(f"unknown log format {self.fmt!r} (choose json, console or auto)")
        self._stamp = Stamp()
        self._json_line = JsonLines(self._stamp)
        # Each JSON destination's writer: called natively (a bound write_all was called generically,
        # ~700 instructions a chunk, compiled, callgrind).
        self._json_writers: list[QueueWriter] = []
        self._others: list[_Destination] = []
        self._add(self.stream, fmt, None)
        if self.file:
            handle = open(self.file, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            self._add(handle, "json", handle)
        self.set_level(self.min_level)

    def set_level(self, min_level: str) -> None:
        """Drop events below ``min_level`` from now on (a configuration reload)."""
        self.min_level = min_level
        self._threshold = _LEVELS.get(min_level, 10)
        self._shown_levels = _levels_from(self._threshold)

    def reopen(self) -> None:
        """Reopen ``file`` by its path (after logrotate renamed it); lines queued meanwhile are kept.

        Raises:
            OSError: the file cannot be opened; the old handle stays in use.
        """
        if not self.file:
            return
        for dest in self._destinations:
            if dest.owned_stream is not None:
                handle = open(self.file, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
                old = dest.writer.replace_stream(handle)
                dest.owned_stream = handle
                old.close()

    def _add(self, stream: IO[str], fmt: str, owned: IO[str] | None) -> None:
        # The file opened here and the process's own stdout and stderr write "\n" as it is
        # (opened without ``newline=``): the writer may put UTF-8 lines straight on their buffer.
        plain = owned is not None or stream is sys.__stdout__ or stream is sys.__stderr__
        writer = QueueWriter(stream, self.max_queued, lock=self.lock, plain_newlines=plain)
        renderer: Any = (
            ConsoleRenderer(colors=_isatty(stream)) if fmt == "console" else structlog.processors.JSONRenderer(dumps)
        )
        logger = structlog.wrap_logger(
            _WriterLogger(writer),
            processors=[self._stamp, renderer],
            wrapper_class=structlog.make_filtering_bound_logger(10),
        ).bind()  # the concrete bound logger: no lazy proxy lookup per event
        by_level = {level: getattr(logger, level) for level in _LEVELS}
        self._destinations.append(_Destination(writer, logger, fmt == "json", owned, by_level))
        self._json_writers = [d.writer for d in self._destinations if d.json]
        self._others = [d for d in self._destinations if not d.json]

    def emit(self, record: Record) -> None:
        """Write one tracker record."""
        self.emit_all([record])

    def emit_all(self, records: list[Record]) -> None:
        """Write tracker records, each rendered straight to a JSON line (:class:`JsonLines`) where it can be.

        Every record takes the direct rendering, not only the per-statement
        ``query`` and per-message ``message`` events: ``session.started``,
        ``session.ready`` and ``session.ended`` are paid on every connection,
        where structlog's processor chain cost about twice the direct rendering
        (~6 against ~3 µs each, measured in-process). Records the direct rendering
        cannot promise byte for byte (secret keys, odd values) and console
        destinations still go through structlog.

        A record ``query.filter`` did not select (``logged`` False) is not written:
        the consumers beside the log (metrics, statistics) still count it.

        The direct lines are handed to each JSON writer together
        (:meth:`QueueWriter.write_all`), before any record that takes structlog's
        way so the lines keep the records' order.
        """
        shown = self._shown_levels
        json_writers = self._json_writers
        closing = b""  # the timestamp taken once: the records came from one turn of the loop (proxy/observations.py)
        lines: list[bytes] = []  # UTF-8: the writer's thread decodes them, a batch at a time
        others = self._others
        for record in records:
            level = record.level
            if json_writers and level in shown:
                if not closing:
                    closing = self._stamp.stamp(True)
                if isinstance(record, KeptRecord):
                    # The same record as before (message detail's, by its bytes, always logged): its line up
                    # to the timestamp as rendered the first time, not rendered again (the sink's part of a
                    # pgbench -M extended statement at message detail 15.4 -> 10.8 µs, pure, in-process),
                    # asked first (nine of a prepared statement's eleven records; 232.5k -> 227.3k
                    # instructions a statement with the tracker, pure, callgrind).
                    rendered = record.rendered
                    if rendered is not None and len(rendered) != 0:  # b"": the fast way cannot write it
                        lines.append(rendered + closing)
                        if others:
                            for dest in others:
                                dest.by_level[level](record.event, **record.fields)
                        continue
                elif not record.logged:
                    continue
                line = self._json_line.record_line(record, closing)
                if line is not None:
                    lines.append(line)
                    for dest in others:
                        dest.by_level[level](record.event, **record.fields)
                    continue
            elif not record.logged:
                continue
            if lines:
                for writer in json_writers:
                    writer.write_all(lines)
                lines = []
            self.log(level, record.event, **record.fields)
        if lines:
            for writer in json_writers:
                writer.write_all(lines)

    def log(self, level: str, event: str, **fields: Any) -> None:
        """Write one event with the given level name and fields."""
        if _LEVELS.get(level, 20) < self._threshold:
            return
        for dest in self._destinations:
            dest.by_level.get(level, dest.logger.info)(event, **fields)

    @property
    def dropped(self) -> int:
        """Lines dropped so far because a destination could not keep up."""
        return sum(d.writer.dropped for d in self._destinations)

    def notify_drops(self, callback: Callable[[], None] | None) -> None:
        """Have ``callback`` called (from any thread) when a destination drops lines; None: no longer.

        Once per drop until :meth:`drops_reported`: the proxy turns drops into
        ``log.dropped`` records for its metrics when they happen, where it
        polled :attr:`dropped` every second, busy or idle.
        """
        for dest in self._destinations:
            dest.writer.on_drop = callback
        self.drops_reported()

    def drops_reported(self) -> None:
        """The drops so far are taken note of: the next one calls the :meth:`notify_drops` callback again.

        Call it before reading :attr:`dropped`, so that a drop in between still calls it.
        """
        for dest in self._destinations:
            dest.writer.drops_reported()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every destination has written what it queued."""
        return all(dest.writer.flush(timeout) for dest in self._destinations)

    def close(self) -> None:
        """Flush every destination and stop the writer threads."""
        for dest in self._destinations:
            dest.writer.close()
            if dest.owned_stream is not None:
                dest.owned_stream.close()
        self._destinations.clear()
        self._json_writers = []
        self._others = []


class Sink(Protocol):
    """What the proxy writes records to: a :class:`LogSink`, or a :class:`Fanout` of it and others."""

    def emit(self, record: Record) -> None: ...
    def emit_all(self, records: list[Record]) -> None: ...
    def log(self, level: str, event: str, **fields: Any) -> None: ...
    def flush(self, timeout: float = 5.0) -> bool: ...
    def close(self) -> None: ...
    @property
    def dropped(self) -> int: ...


class RecordConsumer(Protocol):
    """A sink beside the log (metrics, statistics): it sees every record, before level filtering,
    including the ``query`` records ``query.filter`` kept out of the log (``logged`` False)."""

    def emit_all(self, records: list[Record]) -> None: ...


class Fanout:
    """The log sink plus consumers that must see the same records (metrics).

    The proxy's own events (``sink.log(...)``) become :class:`Record` values
    here, so a metric counts exactly what the log shows.
    """

    def __init__(self, log: LogSink, consumers: Sequence[RecordConsumer]) -> None:
        self.log_sink = log
        self.consumers = tuple(consumers)

    def emit(self, record: Record) -> None:
        self.emit_all([record])

    def emit_all(self, records: list[Record]) -> None:
        self.log_sink.emit_all(records)
        for consumer in self.consumers:
            if isinstance(consumer, StatementStats):
                # Called natively in the compiled build: through the protocol it was a method
                # looked up by name, ~380 instructions a chunk (callgrind).
                consumer.emit_all(records)
            else:
                consumer.emit_all(records)

    def log(self, level: str, event: str, **fields: Any) -> None:
        self.emit_all([Record(event, level, fields)])

    def flush(self, timeout: float = 5.0) -> bool:
        return self.log_sink.flush(timeout)

    def close(self) -> None:
        self.log_sink.close()

    @property
    def dropped(self) -> int:
        return self.log_sink.dropped


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


__all__ = ["Fanout", "LogSink", "QueueWriter", "RecordConsumer", "Sink"]
