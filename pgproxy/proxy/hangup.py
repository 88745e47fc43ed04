"""Whether a peer hung up on a socket the proxy has stopped reading.

Flow control stops reading a client while the server's queue is full (a
pipeline behind a long statement, a COPY IN faster than the server). A client
that closes then is not seen: its FIN or RST waits in a socket nobody polls
for reading, and the statement it left behind runs to its end for nobody,
holding a backend meanwhile. PostgreSQL has the same blind spot for its own
clients, and ``client_connection_check_interval`` answers it the way this
module does: a zero-timeout ``poll`` for ``POLLRDHUP`` (the peer shut its
side: a FIN, taken in order, so every byte it sent before is already in the
socket), ``POLLHUP`` or ``POLLERR`` (a reset).

The check is cheap (one ``poll`` system call) and runs only for paused
clients, once per :data:`HANGUP_CHECK_INTERVAL`.

What it cannot see: a FIN the client's kernel still holds behind data the
proxy's full receive buffer has no room for (it arrives once the proxy reads
again, or the client's kernel gives up and resets the connection), and a
client whose host vanished without a FIN or a reset. Where the platform lacks
``POLLRDHUP``, only resets are seen.
"""

from __future__ import annotations

import select
from typing import Any, Final

#: Seconds between two checks of a paused client (the longest a hang-up goes unseen).
HANGUP_CHECK_INTERVAL: Final = 1.0

_HUNG_UP: Final = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


def peer_hung_up(transport: Any) -> bool:
    """Whether the peer of ``transport``'s socket closed its side or reset the connection.

    Pending unread bytes do not hide a FIN behind them (``POLLRDHUP``), unlike
    a ``MSG_PEEK`` read. A transport without a socket (closed) says no: its
    own ``connection_lost`` is on the way.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:  # a failure here must not stop the other sessions' checks (one Deadlines timer runs them all)
        fd = sock.fileno()
        if fd < 0:
            return False
        poller = select.poll()
        poller.register(fd, _HUNG_UP)
        return any(events & _HUNG_UP for _fd, events in poller.poll(0))
    except OSError:
        return False
