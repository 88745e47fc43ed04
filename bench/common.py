"""Helpers the benchmark and soak scripts share (imported as ``common``: each script runs as ``python bench/<name>.py``)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time


def proxy_command(port: int, upstream: int, detail: str, python: str | None = None) -> list[str]:
    """``python -m pgproxy`` on 127.0.0.1:``port`` in front of 127.0.0.1:``upstream``, JSON lines at ``detail``: how every script runs it.

    ``python``: another interpreter than this one (its environment must hold pgproxy's dependencies).
    """
    return [
        python or sys.executable, "-m", "pgproxy", "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{upstream}",
        "--log-detail", detail, "--log-format", "json",
    ]  # fmt: skip


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0) -> None:
    """Return once something accepts TCP connections on 127.0.0.1:``port``.

    Args:
        port: the port the started process is meant to listen on.
        proc: that process; its exit ends the wait at once, not at the timeout.
        timeout: seconds before giving up.

    Raises:
        RuntimeError: ``proc`` exited, or nothing listened within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process meant to listen on {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout:g} s")
