"""One timer for many sessions' deadlines: each key expires once, in order, never before its deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from pgproxy.proxy.deadlines import Deadlines
from pgproxy.proxy.loop import loop_factory

DELAY = 0.05


def _run(loop_name: str, scenario: Coroutine[Any, Any, None]) -> None:
    factory, _ = loop_factory(loop_name)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario)


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
def test_keys_expire_in_order_once_their_delay_passed_unless_stopped(loop_name: str) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        expired: list[tuple[str, float]] = []
        done = loop.create_future()

        def expire(key: str) -> None:
            expired.append((key, loop.time()))
            if key == "d":
                done.set_result(None)

        deadlines: Deadlines[str] = Deadlines(DELAY, expire)
        started = {}
        for key in "abcd":  # one loop turn: nothing can expire before the checks below
            started[key] = loop.time()
            deadlines.start(key)
        deadlines.stop("b")  # ready in time: never expires
        deadlines.stop("never started")
        assert "a" in deadlines and "b" not in deadlines and len(deadlines) == 3
        await asyncio.wait_for(done, 10)
        assert [key for key, _ in expired] == ["a", "c", "d"]
        for key, at in expired:
            assert at >= started[key] + DELAY - 0.001  # the timer's resolution
        assert len(deadlines) == 0

    _run(loop_name, scenario())


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
def test_a_restarted_clock_expires_after_those_started_before_and_expiries_may_start_clocks(loop_name: str) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        expired: list[str] = []
        done = loop.create_future()

        def expire(key: str) -> None:
            expired.append(key)
            if key == "a":
                deadlines.start("again")  # from inside an expiry
            if key == "again":
                done.set_result(None)

        deadlines: Deadlines[str] = Deadlines(DELAY, expire)
        for key in "abc":
            deadlines.start(key)
        deadlines.start("a")  # restarted: its deadline is now the last
        await asyncio.wait_for(done, 10)
        assert expired == ["b", "c", "a", "again"]

    _run(loop_name, scenario())


def test_close_stops_every_clock() -> None:
    async def scenario() -> None:
        expired: list[str] = []
        deadlines: Deadlines[str] = Deadlines(DELAY / 5, expired.append)
        deadlines.start("a")
        deadlines.close()
        await asyncio.sleep(DELAY)
        assert expired == [] and len(deadlines) == 0

    _run("uvloop", scenario())
