"""Addresses as pgproxy logs them: ``host:port``, with IPv6 hosts in brackets (``[::1]:6432``).

The same form ``proxy.listen`` and ``proxy.upstream`` accept, so a logged
address can be pasted back into the configuration.
"""

from __future__ import annotations

from typing import Any


def host_port(host: str, port: int) -> str:
    """``127.0.0.1:6432``, ``[::1]:6432``, ``db.internal:5432``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def socket_address(name: Any) -> str:
    """A socket's ``getsockname()`` as text: ``host:port`` for TCP (IPv4 or IPv6), the path for a Unix socket."""
    if isinstance(name, tuple):
        return host_port(str(name[0]), int(name[1]))
    return name.decode() if isinstance(name, bytes) else str(name)
