"""A bounded, non-blocking line writer: the event loop never waits for a log pipe.

structlog's fastest recipe writes synchronously, so a slow consumer of
stdout (a stalled ``| less``, a congested log shipper) would stall every
session. Instead, rendered lines go into a bounded in-memory queue that a
daemon thread drains into the stream. When the queue is full, lines are
dropped and counted, and the writer reports the count in a ``log.dropped``
line as soon as it can: losing log lines is preferable to slowing the
application's database traffic, and the loss is never silent.

Threads: any thread may write; only the writer thread touches the stream.
``flush()`` puts a marker in the queue and returns once the writer thread
has written everything queued before it. The drop count is changed from both
sides (a full queue on the writing side, a broken stream on the writer
thread's), so it is kept under a lock.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any, Final, TypeAlias

#: Lines held before dropping: at ~300 bytes a line, about 30 MB at most.
DEFAULT_MAX_QUEUED: Final = 100_000
#: Lines written to the stream in one call.
_BATCH: Final = 4096

#: A queued line (text, or UTF-8 bytes: see :meth:`QueueWriter.write_all`), or a flush
#: marker set once everything before it is written.
_Item: TypeAlias = str | bytes | threading.Event


def next_wait(found: int, interval: float) -> float | None:
    """How long the writer thread sleeps after a wake that found ``found`` lines; None: until the next line.

    Lines that keep coming are written once per ``interval``; a wake that found
    none means they stopped, and the thread waits for a line, not a timer.
    """
    return interval if found else None


class QueueWriter:
    """Writes lines to ``stream`` from a background thread.

    Args:
        stream: a text stream; written and flushed only by the writer thread.
        max_queued: lines held before new ones are dropped.
        name: thread name, for debugging.
        interval: seconds between wakes of the thread while lines keep coming
            (see :meth:`_run`); the first line after a quiet spell, ``flush()``
            and a queue of ``wake_threshold`` lines wake it at once.
        lock: held while a batch is written, when several processes share the
            stream (``proxy.workers``): their lines then never interleave.
        plain_newlines: the caller vouches that ``stream`` writes "\\n" as it is
            (the process's own stdout, a file opened without ``newline=``): a
            batch of UTF-8 lines then goes to a UTF-8 stream's binary buffer as
            it is (:func:`utf8_buffer`), the same bytes the text would encode to.
    """

    def __init__(
        self,
        stream: IO[str],
        max_queued: int = DEFAULT_MAX_QUEUED,
        name: str = "pgproxy-log",
        interval: float = 0.25,
        lock: Any = None,
        plain_newlines: bool = False,
    ) -> None:
        self.stream = stream
        self.plain_newlines = plain_newlines
        self._process_lock = lock if lock is not None else contextlib.nullcontext()
        self.max_queued = max_queued
        self.interval = interval
        self.wake_threshold = max(1, min(_BATCH, max_queued // 4))
        self.written = 0
        self._dropped = 0
        self._drop_lock = threading.Lock()
        #: Called, from the thread that dropped, when lines are dropped and no earlier drop
        #: waits for its owner (see :meth:`drops_reported`): whoever turns drops into records
        #: (the proxy's metrics) learns of them when they happen, rather than by polling.
        self.on_drop: Callable[[], None] | None = None
        self._drop_noticed = False
        self._reported_dropped = 0
        self._queue: deque[_Item] = deque()
        # Bound once: compiled, ``queue.extend(...)`` on a deque is a method lookup by name
        # per call (~600 of write_all's ~750 instructions, callgrind); the bound method ~150.
        self._extend: Callable[[Iterable[_Item]], None] = self._queue.extend
        self._wake = threading.Event()
        # The thread waits for a line, not for a timer: the next line queued wakes it (see _run).
        self._idle = False
        self._stream_lock = threading.Lock()  # taken per batch, and to swap the stream
        self._stopping = False
        # Not ``_thread``: compiled (setup.py), the attribute would be a C struct member ``__thread``, gcc's keyword.
        self._drainer = threading.Thread(target=self._run, name=name, daemon=True)
        self._drainer.start()

    @property
    def idle(self) -> bool:
        """Whether the thread waits for the next line rather than for its timer (nothing was left to write)."""
        return self._idle

    @property
    def dropped(self) -> int:
        """Lines lost so far: the queue was full, or the stream failed."""
        return self._dropped

    def _count_dropped(self, lines: int) -> None:
        with self._drop_lock:
            self._dropped += lines
            notify = not self._drop_noticed
            self._drop_noticed = True
        on_drop = self.on_drop
        if notify and on_drop is not None:
            try:
                on_drop()
            except Exception:  # the owner's hook must not end the writer thread, which calls it too
                pass

    def drops_reported(self) -> None:
        """The owner took note of the drops so far: the next drop calls ``on_drop`` again.

        Call it before reading :attr:`dropped`, so that a drop in between is
        not left without a call.
        """
        with self._drop_lock:
            self._drop_noticed = False

    def write(self, line: str | bytes) -> None:
        """Queue one line (without its newline; text, or UTF-8 bytes). Never blocks on the stream."""
        queue = self._queue
        if len(queue) >= self.max_queued:
            self._count_dropped(1)
            return
        queue.append(line)
        if self._idle or (len(queue) >= self.wake_threshold and not self._wake.is_set()):
            self._idle = False
            self._wake.set()

    def write_all(self, lines: Sequence[str | bytes]) -> None:
        """Queue lines in their order: what :meth:`write` does for each, in one call.

        The log sink's direct JSON lines come as UTF-8 bytes (orjson's output):
        this thread decodes a batch of them in one call, rather than the event
        loop each line (~1.2k instructions a line, compiled, callgrind). The
        stream still gets text, the same text.

        At message detail a chunk's records make a dozen lines; handing them
        over together saves a call and the queue checks per line. The lines beyond
        ``max_queued`` are dropped and counted, as one by one.
        """
        queue = self._queue
        room = self.max_queued - len(queue)
        if room >= len(lines):
            self._extend(lines)
        else:
            if room > 0:
                queue.extend(lines[:room])
            self._count_dropped(len(lines) - max(room, 0))
        if self._idle or (len(queue) >= self.wake_threshold and not self._wake.is_set()):
            self._idle = False
            self._wake.set()

    def _run(self) -> None:
        queue = self._queue
        popleft = queue.popleft  # bound once: by name it is a method lookup per line (compiled, callgrind)
        timeout: float | None = None  # None: wait for a line
        while True:
            # Every wake of this thread costs CPU, whether it finds lines or
            # not: ~80 µs for a bare ``time.sleep`` wake and ~165 µs for an
            # ``Event.wait`` timeout on this project's 2-core VM (schedstat),
            # and a wake that takes the GIL from a busy event loop costs the
            # loop too (pgbench -S through the proxy: 56.7 µs of CPU per
            # transaction at 50 wakes a second, 53.5 µs at 4). So:
            # - with nothing queued, the thread waits for a line, not a timer:
            #   an idle proxy does not wake at all (a 20 ms timer cost it
            #   8.7 ms of CPU a second), and the first line after a quiet
            #   spell is written at once;
            # - while lines keep coming, it wakes every ``interval`` (a
            #   quarter second): at most four wakes a second, however busy.
            # The writing side sets ``_wake`` when it finds ``_idle`` set; the
            # queue is looked at after ``_idle`` is set, so no line is missed.
            if timeout is None:
                self._idle = True
                if not queue and not self._stopping:
                    self._wake.wait()
                self._idle = False
            else:
                self._wake.wait(timeout)
            self._wake.clear()
            taken = len(queue)
            while queue:
                batch: list[Any] = []  # str or bytes
                texts = 0  # how many of them are str
                markers: list[threading.Event] = []
                while queue and len(batch) < _BATCH:
                    item = popleft()
                    if isinstance(item, bytes):
                        batch.append(item)
                    elif isinstance(item, str):
                        batch.append(item)
                        texts += 1
                    else:
                        markers.append(item)
                        break  # everything before the marker is in this batch
                if batch:
                    self._emit(batch, texts)
                if markers:
                    self._report_drops()
                    for marker in markers:
                        marker.set()
            self._report_drops()
            if self._stopping and not queue:
                return
            timeout = next_wait(taken, self.interval)

    def _emit(self, lines: list[Any], texts: int) -> None:
        """Write ``lines`` (``texts`` of them str, the rest UTF-8 bytes) as one piece of text."""
        count = len(lines)
        with self._stream_lock:
            stream = self.stream
            try:
                if not texts:  # all bytes (the usual batch)
                    lines.append(b"")  # the last line's newline, without copying the whole again
                    data = b"\n".join(lines)
                    buffer = utf8_buffer(stream) if self.plain_newlines else None
                    with self._process_lock:
                        if buffer is not None:
                            # Straight to the bytes: decoding a batch, then the text layer
                            # encoding it again, cost ~0.9 µs a line for batches of 2,500
                            # (a busy proxy's quarter second), against ~0.015 µs this way.
                            stream.flush()  # whatever the text layer holds goes first, as before
                            buffer.write(data)
                            buffer.flush()
                        else:
                            stream.write(data.decode())
                            stream.flush()
                else:
                    if texts == count:
                        text = "\n".join(lines) + "\n"
                    else:
                        text = "\n".join([x if isinstance(x, str) else x.decode() for x in lines]) + "\n"
                    with self._process_lock:
                        stream.write(text)
                        stream.flush()
                self.written += count
            except (OSError, ValueError):
                # A closed or broken log stream must not kill the proxy; count the loss.
                self._count_dropped(count)

    def replace_stream(self, stream: IO[str]) -> IO[str]:
        """Write to ``stream`` from the next batch on (log rotation); returns the old stream, flushed."""
        with self._stream_lock:
            old, self.stream = self.stream, stream
            try:
                old.flush()
            except (OSError, ValueError):
                pass
        return old

    def _report_drops(self) -> None:
        dropped = self._dropped
        if dropped != self._reported_dropped:
            line = json.dumps(
                {
                    "event": "log.dropped",
                    "level": "warning",
                    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "dropped_total": dropped,
                    "dropped_since_last_report": dropped - self._reported_dropped,
                }
            )
            self._reported_dropped = dropped
            try:
                with self._process_lock:
                    self.stream.write(line + "\n")
                    self.stream.flush()
            except (OSError, ValueError):
                pass

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every line queued before this call is written (and drops reported); False on timeout."""
        if not self._drainer.is_alive():
            return not self._queue
        done = threading.Event()
        self._queue.append(done)  # past max_queued on purpose: a marker is never dropped
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread (waits at most ``timeout``)."""
        self._stopping = True
        self._wake.set()
        self._drainer.join(timeout)


def utf8_buffer(stream: IO[str]) -> Any:
    """``stream``'s binary buffer when UTF-8 bytes written there are the text written to ``stream``; else None.

    A plain ``io.TextIOWrapper`` encoding UTF-8, on a system whose line
    separator is "\\n". Whether it translates "\\n" (a ``newline=`` given when
    opened) cannot be asked of it: the caller vouches for that
    (``plain_newlines``).
    """
    if type(stream) is not io.TextIOWrapper or os.linesep != "\n":
        return None
    try:
        if codecs.lookup(stream.encoding).name != "utf-8":
            return None
    except LookupError:
        return None
    return stream.buffer
