"""One loop timer for the deadlines of many sessions, all of the same length.

Every new connection gets a start-up deadline (``proxy.startup_timeout``) and,
while it dials the upstream, a connect deadline (``proxy.connect_timeout``);
almost none ever reaches either. A timer per session cost about 3 µs on
uvloop (``call_later``, then ``cancel`` once the session is ready), and
``asyncio.timeout`` around the dial about 7 µs, per new connection.

With one fixed delay, deadlines fall in the order the sessions were added, so
a dict in insertion order is the queue: starting and stopping a session's
clock is a dict operation, and a single timer, armed for the oldest deadline
still running, expires whatever is due when it fires and re-arms for the
next. A clock stopped early leaves the timer armed for a deadline nobody
waits for any more; it then fires for nothing once and re-arms, which is
cheaper than re-arming on every stop. No deadline fires late.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)

#: Deadlines this close are due: uvloop's timers count whole milliseconds, and a
#: timer may run a fraction of one before ``loop.time()`` reaches its deadline.
_RESOLUTION: Final = 0.001


class Deadlines(Generic[K]):
    """Calls ``expire(key)`` ``delay`` seconds after :meth:`start`, unless :meth:`stop` came first.

    The running loop's clock and timers are used, from the first :meth:`start` on.

    Args:
        delay: seconds from :meth:`start` to the deadline, the same for every key.
        expire: called once per key whose deadline passed, after the key is removed.
    """

    __slots__ = ("_delay", "_due", "_expire", "_loop", "_timer")

    def __init__(self, delay: float, expire: Callable[[K], None]) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._delay = delay
        self._expire = expire
        self._due: dict[K, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def start(self, key: K) -> None:
        """Start ``key``'s clock (from now, also when it was running already)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        due = self._due
        due.pop(key, None)  # re-added at the end, where its new deadline belongs
        due[key] = loop.time() + self._delay
        if self._timer is None:
            self._arm(loop)

    def stop(self, key: K) -> None:
        """Stop ``key``'s clock; nothing happens if it is not running."""
        self._due.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def __len__(self) -> int:
        return len(self._due)

    def close(self) -> None:
        """Stop every clock and the timer."""
        self._due.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        oldest = next(iter(self._due.values()))
        self._timer = loop.call_at(oldest, self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None  # armed by start()
        due = self._due
        now = loop.time() + _RESOLUTION
        expired: list[K] = []
        for key, deadline in due.items():
            if deadline > now:
                break
            expired.append(key)
        for key in expired:
            del due[key]
        if due:
            self._arm(loop)
        for key in expired:  # last: an expiry may start or stop other clocks
            self._expire(key)
