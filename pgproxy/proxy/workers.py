"""``proxy.workers = N``: N proxy processes behind one listening port.

One pgproxy process saturates one core (decoding and logging are Python on
one event loop). With ``proxy.workers`` above 1 the process forks that many
workers; each runs the whole single-process proxy — its own event loop,
sessions, tracker and log sink — and listens on the same address with
``SO_REUSEPORT``, so the kernel spreads new connections across them. A session
lives and ends in the worker that accepted it.

What the workers share, and how it stays correct:

- **Session ids** are unique across workers: each worker's ids start with one
  random prefix of the parent plus the worker's index.
- **Log lines never interleave** on a shared stdout or log file: each worker's
  writer thread holds one cross-process lock while it writes a batch of whole
  lines (``QueueWriter(lock=...)``), whatever the lines' length (a pipe makes
  only writes up to PIPE_BUF atomic, and hex dumps are longer).
- **Signals**: the parent forwards SIGTERM, SIGINT and SIGHUP to every worker
  exactly once (the workers sit in their own process group, so a terminal's
  Ctrl-C reaches only the parent); each worker drains as the single process
  does. If a worker dies on its own, the parent stops the others and exits
  with that worker's status: a supervisor restarts the whole proxy rather
  than it running on with part of its capacity.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final

#: Highest ``proxy.workers``: the worker index takes two hex digits of the session id.
MAX_WORKERS: Final = 256
_FORWARDED: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG: Final = 1


@dataclass(frozen=True, slots=True)
class Worker:
    """This process's place among the workers.

    Attributes:
        index: 0 .. count-1.
        count: how many workers share the listening address.
        session_prefix: the start of every session id this worker hands out.
        log_lock: held while a batch of log lines is written (shared by all workers).
    """

    index: int
    count: int
    session_prefix: str
    log_lock: Any


class _SharedLock:
    """A cross-process lock that a worker killed mid-write cannot hold forever.

    After ``timeout`` seconds the batch is written without it: a rare
    interleaved line beats a log that stops for good.
    """

    __slots__ = ("_acquired", "_lock", "_timeout")

    def __init__(self, lock: Any, timeout: float = 2.0) -> None:
        self._lock = lock
        self._timeout = timeout
        self._acquired = False

    def __enter__(self) -> None:
        self._acquired = self._lock.acquire(timeout=self._timeout)

    def __exit__(self, *_exc: object) -> None:
        if self._acquired:
            self._acquired = False
            self._lock.release()


_current: Worker | None = None


def current_worker() -> Worker | None:
    """The worker identity of this process; None when pgproxy runs as one process."""
    return _current


def run_workers(count: int, run_one: Callable[[], int]) -> int:
    """Fork ``count`` workers that each call ``run_one()``; wait for them all.

    Must be called before any thread or event loop exists in this process.

    Returns:
        0 when every worker exited with 0, else the first non-zero status
        (128 + the signal number for a worker killed by a signal).
    """
    if not 1 < count <= MAX_WORKERS:
        raise ValueError(f"workers must be between 2 and {MAX_WORKERS}, not {count}")
    lock = _SharedLock(multiprocessing.get_context("fork").Lock())
    token = secrets.token_hex(2)
    children: dict[int, int] = {}  # pid -> index
    parent = os.getpid()
    for index in range(count):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child (covered by tests/test_workers.py)
            os._exit(_child(Worker(index, count, f"{token}{index:02x}", lock), run_one, parent))
        children[pid] = index
    return _supervise(children)


def _child(worker: Worker, run_one: Callable[[], int], parent: int) -> int:  # pragma: no cover - in the child
    global _current
    _current = worker
    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent, which forwards it once
    with contextlib.suppress(OSError, AttributeError):  # Linux: end with the parent even if it is killed
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl
        return 1
    try:
        code = run_one()
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _supervise(children: dict[int, int]) -> int:
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = stopping or signum != signal.SIGHUP
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    status = 0
    try:
        while children:
            try:
                pid, raw = os.wait()
            except ChildProcessError:
                break
            if pid not in children:
                continue
            del children[pid]
            code = os.waitstatus_to_exitcode(raw)
            code = 128 - code if code < 0 else code
            status = status or code
            if not stopping and children:
                # A worker ended on its own: stop the rest, report its status.
                stopping = True
                forward(signal.SIGTERM, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
