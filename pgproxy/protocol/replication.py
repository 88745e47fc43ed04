"""The messages inside CopyData on a replication connection ("Streaming Replication Protocol").

After ``START_REPLICATION`` the server answers CopyBothResponse and both sides
exchange CopyData whose first byte says what it carries:

* from the server: ``w`` XLogData (WAL, or a logical decoding message, with
  its start and end LSN) and ``k`` primary keepalive;
* from the client: ``r`` standby status update (written, flushed, applied
  LSNs) and ``h`` hot standby feedback.

Only these headers are decoded; the WAL or change data itself is counted,
never shown. Stdlib only, no I/O.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

_XLOG_DATA = struct.Struct("!QQq")  # start LSN, end of WAL on the server, send time
_KEEPALIVE = struct.Struct("!Qq?")  # end of WAL on the server, send time, reply requested
_STATUS_UPDATE = struct.Struct("!QQQq?")  # written, flushed, applied, send time, reply requested


class ReplicationKind(enum.Enum):
    """What a replication CopyData carries, by its first byte."""

    XLOG_DATA = "xlog_data"
    PRIMARY_KEEPALIVE = "primary_keepalive"
    STANDBY_STATUS_UPDATE = "standby_status_update"
    HOT_STANDBY_FEEDBACK = "hot_standby_feedback"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class ReplicationMessage:
    """The decoded header of one replication CopyData payload.

    Attributes:
        kind: what it is.
        lsn: XLogData: the LSN its data starts at; keepalive: the server's WAL end;
            status update: the flushed LSN.
        wal_end: XLogData and keepalive: the end of WAL on the server.
        data_bytes: XLogData: bytes of WAL or logical change data carried.
        written, applied: status update positions.
        reply_requested: keepalive and status update flag.
    """

    kind: ReplicationKind
    lsn: int | None = None
    wal_end: int | None = None
    data_bytes: int = 0
    written: int | None = None
    applied: int | None = None
    reply_requested: bool = False


def decode_replication_message(payload: bytes | memoryview, from_server: bool) -> ReplicationMessage:
    """Decode the header of a replication CopyData payload; unknown or short payloads are ``OTHER``."""
    if not payload:
        return ReplicationMessage(ReplicationKind.OTHER)
    kind = payload[0]
    try:
        if from_server and kind == 0x77:  # 'w' XLogData
            start, wal_end, _sent = _XLOG_DATA.unpack_from(payload, 1)
            return ReplicationMessage(
                ReplicationKind.XLOG_DATA, lsn=start, wal_end=wal_end, data_bytes=len(payload) - 1 - _XLOG_DATA.size
            )
        if from_server and kind == 0x6B:  # 'k' primary keepalive
            wal_end, _sent, reply = _KEEPALIVE.unpack_from(payload, 1)
            return ReplicationMessage(
                ReplicationKind.PRIMARY_KEEPALIVE, lsn=wal_end, wal_end=wal_end, reply_requested=reply
            )
        if not from_server and kind == 0x72:  # 'r' standby status update
            written, flushed, applied, _sent, reply = _STATUS_UPDATE.unpack_from(payload, 1)
            return ReplicationMessage(
                ReplicationKind.STANDBY_STATUS_UPDATE,
                lsn=flushed,
                written=written,
                applied=applied,
                reply_requested=reply,
            )
        if not from_server and kind == 0x68:  # 'h' hot standby feedback
            return ReplicationMessage(ReplicationKind.HOT_STANDBY_FEEDBACK)
    except struct.error:
        pass
    return ReplicationMessage(ReplicationKind.OTHER)


def format_lsn(lsn: int) -> str:
    """An LSN as PostgreSQL prints it (``pg_lsn``): two hexadecimal halves, ``16/B374D848``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def is_replication_connection(value: str | None) -> bool:
    """Whether the ``replication`` start-up parameter makes this a walsender connection.

    ``database`` means logical replication; the boolean spellings PostgreSQL
    accepts (``true``, ``on``, ``yes``, ``1``) mean physical replication.
    """
    if value is None:
        return False
    return value.strip().lower() in ("database", "true", "on", "yes", "1")
