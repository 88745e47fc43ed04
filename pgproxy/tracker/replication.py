"""Replication streams summarised (sans-IO): one record per CopyBoth stream, not one per message.

A walsender connection (``replication=true`` or ``database``) streams WAL or
logical changes for hours; logging each CopyData would drown everything else.
:class:`ReplicationStreams` watches the frames of such a session and returns
``replication.streamed`` when a stream ends (CopyDone, an error, or the session
closing), and ``replication.progress`` at most once per ``progress_interval``
while one runs: bytes and messages each way, XLogData and keepalives, the
start LSN of the first and of the last XLogData, the end of WAL the server
last reported, and the last position the client confirmed as flushed. Per-message events for these streams are left to ``wire`` detail.
"""

from __future__ import annotations

from typing import Any, Final

from pgproxy.protocol.framing import Frame
from pgproxy.protocol.replication import ReplicationKind, decode_replication_message, format_lsn
from pgproxy.tracker.records import Record, round_ms

REPLICATION_STREAMED: Final = "replication.streamed"
REPLICATION_PROGRESS: Final = "replication.progress"

_COPY_BOTH_RESPONSE: Final = ord("W")
_COPY_DATA: Final = ord("d")
_COPY_DONE: Final = ord("c")
_ERROR_RESPONSE: Final = ord("E")
_COMMAND_COMPLETE: Final = ord("C")
#: Seconds between ``replication.progress`` records of one long-running stream.
DEFAULT_PROGRESS_INTERVAL: Final = 60.0


class _Stream:
    __slots__ = (
        "bytes_from_client",
        "bytes_from_server",
        "client_done",
        "first_lsn",
        "flushed_lsn",
        "keepalives",
        "last_lsn",
        "messages_from_client",
        "messages_from_server",
        "started_at",
        "status_updates",
        "wal_bytes",
        "wal_end",
        "written_lsn",
        "xlog_messages",
    )

    def __init__(self, now: float) -> None:
        self.started_at = now
        self.bytes_from_client = self.bytes_from_server = 0
        self.messages_from_client = self.messages_from_server = 0
        self.xlog_messages = self.keepalives = self.status_updates = self.wal_bytes = 0
        self.first_lsn: int | None = None
        self.last_lsn: int | None = None
        self.flushed_lsn: int | None = None
        self.wal_end: int | None = None
        self.written_lsn: int | None = None
        self.client_done = False


class ReplicationStreams:
    """Summaries of the CopyBoth streams of one replication session.

    Args:
        context: fields every record carries (session, user, application_name...).
        progress_interval: seconds between progress records of a running stream.
    """

    def __init__(self, context: dict[str, Any], progress_interval: float = DEFAULT_PROGRESS_INTERVAL) -> None:
        self.context = context
        self.progress_interval = progress_interval
        self.stream: _Stream | None = None
        self.streams = 0
        self._next_progress = 0.0

    @property
    def streaming(self) -> bool:
        """A CopyBoth stream is running (its CopyData are summarised, not logged one by one)."""
        return self.stream is not None

    def feed(self, frames: list[Frame], from_server: bool, now: float) -> list[Record]:
        """Account for frames of either direction; records for streams that ended or report progress."""
        out: list[Record] = []
        for tag, buf, start, end in frames:
            stream = self.stream
            if stream is None:
                if from_server and tag == _COPY_BOTH_RESPONSE:
                    self.stream = _Stream(now)
                    self.streams += 1
                    self._next_progress = now + self.progress_interval
                continue
            if tag == _COPY_DATA:
                size = end - start if buf is not None else end
                if from_server:
                    stream.messages_from_server += 1
                    stream.bytes_from_server += size
                else:
                    stream.messages_from_client += 1
                    stream.bytes_from_client += size
                if buf is not None:
                    self._header(stream, memoryview(buf)[start:end], from_server)
            elif not from_server:
                if tag == _COPY_DONE:
                    stream.client_done = True
            elif tag in (_COPY_DONE, _ERROR_RESPONSE, _COMMAND_COMPLETE):
                # The server's CopyDone (or its error) ends the stream; the
                # client may have asked first with its own CopyDone.
                if tag == _ERROR_RESPONSE:
                    ended_by = "error"
                else:
                    ended_by = "client" if stream.client_done else "server"
                out.append(self._record(REPLICATION_STREAMED, now, ended_by=ended_by))
                self.stream = None
        if self.stream is not None and now >= self._next_progress:
            self._next_progress = now + self.progress_interval
            out.append(self._record(REPLICATION_PROGRESS, now))
        return out

    def closed(self, now: float) -> list[Record]:
        """The session ended while a stream ran."""
        if self.stream is None:
            return []
        record = self._record(REPLICATION_STREAMED, now, ended_by="session_end")
        self.stream = None
        return [record]

    def _header(self, stream: _Stream, payload: memoryview, from_server: bool) -> None:
        msg = decode_replication_message(payload, from_server)
        kind = msg.kind
        if kind is ReplicationKind.XLOG_DATA:
            stream.xlog_messages += 1
            stream.wal_bytes += msg.data_bytes
            if stream.first_lsn is None:
                stream.first_lsn = msg.lsn
            stream.last_lsn = msg.lsn
            stream.wal_end = msg.wal_end or stream.wal_end
        elif kind is ReplicationKind.PRIMARY_KEEPALIVE:
            stream.keepalives += 1
            stream.wal_end = msg.wal_end or stream.wal_end
        elif kind is ReplicationKind.STANDBY_STATUS_UPDATE:
            stream.status_updates += 1
            if msg.written:  # 0 means "not known" (InvalidXLogRecPtr)
                stream.written_lsn = msg.written
            if msg.lsn:
                stream.flushed_lsn = msg.lsn

    def _record(self, event: str, now: float, **extra: Any) -> Record:
        stream = self.stream
        assert stream is not None
        fields: dict[str, Any] = {
            **{k: v for k, v in self.context.items() if k != "db.system.name"},
            "duration_ms": round_ms((now - stream.started_at) * 1000.0),
            "messages_from_server": stream.messages_from_server,
            "bytes_from_server": stream.bytes_from_server,
            "messages_from_client": stream.messages_from_client,
            "bytes_from_client": stream.bytes_from_client,
            "xlog_data_messages": stream.xlog_messages,
            "xlog_data_bytes": stream.wal_bytes,
            "keepalives": stream.keepalives,
            "status_updates": stream.status_updates,
        }
        if stream.first_lsn is not None:
            fields["start_lsn"] = format_lsn(stream.first_lsn)
        if stream.last_lsn is not None:
            fields["last_lsn"] = format_lsn(stream.last_lsn)
        if stream.wal_end is not None:
            fields["server_wal_end"] = format_lsn(stream.wal_end)
        if stream.written_lsn is not None:
            fields["written_lsn"] = format_lsn(stream.written_lsn)
        if stream.flushed_lsn is not None:
            fields["flushed_lsn"] = format_lsn(stream.flushed_lsn)
        fields.update(extra)
        return Record(event, "info", fields)
