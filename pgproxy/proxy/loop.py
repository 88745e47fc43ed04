"""Pick the event loop in one place: uvloop when asked for and importable."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory(kind: str) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """A loop factory for ``kind`` (``"uvloop"`` or ``"asyncio"``) and what was actually chosen.

    Falling back from uvloop to asyncio is reported through the returned name
    (the caller logs it), never silent.
    """
    if kind == "uvloop":
        try:
            import uvloop

            return uvloop.new_event_loop, "uvloop"
        except ImportError:
            return asyncio.new_event_loop, "asyncio (uvloop not installed)"
    if kind == "asyncio":
        return asyncio.new_event_loop, "asyncio"
    raise ValueError(f"unknown event loop {kind!r} (choose uvloop or asyncio)")


def run(main: Coroutine[Any, Any, T], kind: str = "uvloop") -> T:
    """Run ``main`` to completion on a fresh loop of the requested kind."""
    factory, _name = loop_factory(kind)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
