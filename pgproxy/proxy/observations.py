"""The chunks relayed in one turn of the event loop, shown to their trackers together after it.

The relay forwards a chunk first and observes it second, and observing (the
tracker, then the sinks) is most of the proxy's work per statement. Done chunk
by chunk, the two alternate within a turn: forward A, observe A, forward B,
observe B. Each switch brings a different body of code and data back into the
CPU's caches, which the kernel's socket work (and, on a shared host, the
clients' and the database's processes) evicted meanwhile. On this project's
2-core VM a query-detail round trip runs ~31k instructions (callgrind) in
~30-38 µs of user time under pgbench: far fewer instructions per nanosecond
than the same code reaches in a loop, so what it touches counts as much as
what it computes.

Queued instead, a turn's chunks (perf trace: 5.6 reads per epoll wait under pgbench's 8
clients) are all forwarded first, then shown to their trackers in the order
they arrived by one callback at the end of the turn (``call_soon``: it runs
after the turn's I/O callbacks), and their records go to the sink in one call.
pgbench -S with 8 clients through the compiled proxy, in three interleaved A/B
runs of 3 to 5 rounds of 8 s: proxy CPU per transaction (user + kernel) 63.7-68.3
-> 55.5-58.7 µs on W1 and 62.5-63.1 -> 54.2-55.4 µs on W2 prepared, the kernel's
part included (the same system calls, on warmer caches); TPS moved by +0 to +21%
(rounds on this VM vary by up to 25%). Sessions relayed the general way (TLS
on either leg) queue their chunks too once past start-up
(ClientSession._observe_relayed): with ``tls.upstream_mode = require``
(PostgreSQL 15, one A/B run of 3 rounds) 153.7 -> 125.5 µs per W1
transaction and 124.2 -> 111.5 on W2 prepared.

What stays the same:

- Arrival times are read when the bytes reach the proxy, before they are
  forwarded, and travel with the chunk: durations do not change. A record's
  log ``timestamp`` is taken when it is written, at most a turn later.
- A session's chunks reach its tracker in the order they arrived. Anything
  that asks a tracker about its state (is the session idle, is a request
  outstanding, a reload, the session's end) calls :meth:`Observations.flush`
  first, which shows every queued chunk at once, so no question is answered
  from a tracker that has not seen all the bytes relayed.
- A tracker's failure stops decoding for its session only; the records of the
  chunks shown before it are written first, so the anomaly follows them.
- What is queued is bounded by one turn's reads of at most
  ``OBSERVE_SLICE`` bytes each (larger chunks take the session's backlog, see
  ClientSession._observe, after a flush).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pgproxy.sink import Fanout, Sink

if TYPE_CHECKING:
    from pgproxy.proxy.session import ClientSession
    from pgproxy.tracker.records import Record

#: While chunks are shown at once: every this many, one is queued instead, to see how many the turn brings.
PROBE_EVERY: Final = 32
#: While queueing: after this many turns in a row that brought one chunk (or none), chunks are shown at once again.
LONE_TURNS: Final = 16


class Observing(enum.Enum):
    """When relayed chunks are shown to their trackers."""

    ADAPTIVE = "adaptive"
    """Queued to the end of the turn while turns bring several chunks, else at once (the proxy's way)."""
    QUEUED = "queued"
    """Always queued to the end of the turn (tests hold it to AT_ONCE's records)."""
    AT_ONCE = "at_once"
    """Always at once, by the session that relayed them, as before the queue existed."""


class Observations:
    """Relayed chunks waiting for the end of the loop's turn, then shown to their sessions' trackers.

    Queueing pays only when a turn brings several chunks: the end-of-turn
    callback costs ~3.5k instructions (uvloop's handle, its context, the idle
    hook; compiled, callgrind), twice a round trip for one client sending
    statements one after the other, whose turns bring one chunk each (a
    round trip 31.4k -> 40.5k). So the queue decides by what the turns bring:
    while they bring one chunk each, :meth:`add` declines (the session shows
    the chunk at once, as before) except one chunk in :data:`PROBE_EVERY`,
    queued to count its turn's; a turn of two or more chunks starts queueing,
    and :data:`LONE_TURNS` turns in a row of one chunk stop it.

    Args:
        sink: where the records of every session of the server go (the server's sink).
        observing: the policy; :attr:`Observing.ADAPTIVE` but in tests.
    """

    __slots__ = (
        "_call_soon",
        "_chunks",
        "_lone_turns",
        "_observing",
        "_on_turn_end",
        "_queueing",
        "_scheduled",
        "_sink",
        "_turn_chunks",
        "_until_probe",
    )

    def __init__(self, sink: Sink, observing: Observing = Observing.ADAPTIVE) -> None:
        self._sink = sink
        self._observing = observing
        self._chunks: list[tuple[ClientSession, bytes, bool, float | None]] = []
        # The running loop's call_soon and this end-of-turn callback, bound once (from the first chunk on):
        # compiled, looking the loop's method up made a bound method per turn.
        self._call_soon: Callable[..., Any] | None = None
        self._on_turn_end: Callable[[], None] = self._turn_ended
        self._scheduled = False  # the end-of-turn callback is in the loop's queue
        self._queueing = observing is Observing.QUEUED  # turns bring several chunks: every chunk is queued
        self._turn_chunks = 0  # chunks queued since the callback was scheduled
        self._until_probe = 1  # not queueing: chunks until one is queued to count its turn's
        self._lone_turns = 0  # queueing: turns in a row that brought at most one chunk

    def __len__(self) -> int:
        return len(self._chunks)

    @property
    def queueing(self) -> bool:
        """Whether every chunk is queued now (turns bring several), rather than shown at once by the session."""
        return self._queueing

    def add(self, session: ClientSession, data: bytes, frontend: bool, stamp: float | None) -> bool:
        """Queue ``data``, just relayed for ``session`` (from the client when ``frontend``), received at ``stamp``.

        False: not queued; the session shows it to its tracker now (turns bring
        one chunk each, see the class). Nothing is queued then, so the order holds.
        ``stamp`` None: the session does not time its chunks (connection detail,
        see ClientSession._plain_relay).
        """
        if not self._scheduled:
            if not self._queueing:
                self._until_probe -= 1
                if self._until_probe > 0 or self._observing is Observing.AT_ONCE:
                    return False
                self._until_probe = PROBE_EVERY
            call_soon = self._call_soon
            if call_soon is None:
                call_soon = self._call_soon = asyncio.get_running_loop().call_soon
            self._scheduled = True
            call_soon(self._on_turn_end)
        self._chunks.append((session, data, frontend, stamp))
        self._turn_chunks += 1
        return True

    def _turn_ended(self) -> None:
        brought, self._turn_chunks = self._turn_chunks, 0
        self._scheduled = False
        if brought > 1:
            self._queueing = True
            self._lone_turns = 0
        elif self._queueing and self._observing is Observing.ADAPTIVE:
            self._lone_turns += 1
            if self._lone_turns >= LONE_TURNS:
                self._queueing = False
                self._until_probe = PROBE_EVERY
        self.flush()

    def flush(self) -> None:
        """Show every queued chunk to its session's tracker now, in arrival order, and emit their records."""
        chunks = self._chunks
        if not chunks:
            return
        self._chunks = []
        records: list[Record] = []
        for session, data, frontend, stamp in chunks:
            try:
                found = session.track(data, frontend, stamp)
            except Exception as exc:
                if records:  # the records before the failure first: the anomaly follows them
                    emit_records(self._sink, records)
                    records = []
                session.decoding_failed(exc)
                continue
            if found:
                records += found
        if records:
            emit_records(self._sink, records)


def emit_records(sink: Sink, records: list[Record]) -> None:
    """Hands records to the sink: a :class:`Fanout` (the proxy's usual sink) by a native call.

    Compiled, a call through the :class:`Sink` protocol is a method looked up
    by name and its arguments parsed, ~400 instructions a call (callgrind); the
    isinstance test makes the usual case a direct call. Every place the proxy
    hands over a session's records goes through here.
    """
    if isinstance(sink, Fanout):
        sink.emit_all(records)
    else:
        sink.emit_all(records)
