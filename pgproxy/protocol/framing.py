"""Cut one direction's byte stream into PostgreSQL protocol frames.

Protocol documentation, "Message Formats": after the startup phase every
message is ``Byte1 tag | Int32 length | body`` where the length counts itself
but not the tag. During the startup phase the frontend sends untagged packets
(``Int32 length | Int32 code | payload``) and the backend may answer an
SSLRequest or GSSENCRequest with one unframed byte.

The framer is the hottest code in pgproxy, so a frame is a plain tuple rather
than an object (see :data:`Frame`): a tuple costs a third of a NamedTuple and a
fifth of a frozen dataclass, and the body is left in place inside the chunk it
arrived in (no slice, no copy) until somebody decodes it.
"""

from __future__ import annotations

import enum
import struct
from typing import TYPE_CHECKING, Final

from pgproxy.protocol.errors import FramingError

if TYPE_CHECKING:  # the compiled build's native integer type; nothing is imported at run time
    from mypy_extensions import i64

#: A framed unit: ``(tag, buf, start, end)``.
#:
#: * ``tag`` is the message type byte (0-255) or one of the negative pseudo tags
#:   below for units that carry no tag byte on the wire.
#: * ``buf[start:end]`` is the body: what follows the Int32 length (for an
#:   untagged startup packet: the code word and payload).
#: * ``buf is None`` marks an *oversized* frame whose body was streamed past
#:   without being buffered; then ``start == 0`` and ``end`` is the declared
#:   body length.
Frame = tuple[int, "bytes | None", int, int]

#: Untagged startup-phase packet (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest).
UNTAGGED: Final = -1
#: The one unframed byte a backend sends in answer to SSLRequest/GSSENCRequest.
SINGLE_BYTE: Final = -2
#: The first byte of a TLS record (0x16) where a startup packet was expected:
#: PostgreSQL 17 "direct SSL" negotiation. The framer halts after it.
TLS_RECORD: Final = -3
#: The stream could not be framed; :attr:`Framer.error` holds the details.
FRAMING_ERROR: Final = -4

#: Largest declared length PostgreSQL can produce or accept (MaxAllocSize is
#: 1 GiB - 1); anything larger means we lost the message boundaries.
PROTOCOL_MAX_LENGTH: Final = 0x3FFFFFFF
#: Same limit as the server's MAX_STARTUP_PACKET_LENGTH (src/include/libpq/pqcomm.h).
MAX_STARTUP_PACKET: Final = 10_000
#: Default for :class:`Framer`'s ``max_frame``: messages with a larger body are
#: streamed past and reported header-only. PgBouncer keeps a similar cap
#: (pkt_buf) for what it buffers; 1 MiB keeps a hostile peer from making us
#: hold more than that per direction.
DEFAULT_MAX_FRAME: Final = 1 << 20

_TAGGED_HEADER = struct.Struct("!BI").unpack_from
_INT32 = struct.Struct("!I").unpack_from
_TLS_HANDSHAKE_BYTE: Final = 0x16
_ERROR_RESPONSE_TAG: Final = 0x45  # 'E'
_BIND_TAG: Final = 0x42  # 'B'
_PARSE_TAG: Final = 0x50  # 'P'


class FramingMode(enum.Enum):
    """What the framer expects next on its direction."""

    TAGGED = "tagged"
    """Normal operation: tagged messages, as many as the data holds."""
    STARTUP = "startup"
    """Exactly one untagged startup packet, then wait for a new mode."""
    SINGLE_BYTE = "single_byte"
    """Exactly one unframed byte (an SSL/GSS answer), then wait for a new mode."""
    HALTED = "halted"
    """Nothing more is framed (encrypted, desynchronised or finished)."""


# Asked per chunk: a module constant costs an instance attribute's lookup, while
# ``FramingMode.TAGGED`` (the enum class's attribute) costs about 1,000 instructions
# under CPython 3.11 (callgrind), a sixth of framing a four-message reply.
_TAGGED: Final = FramingMode.TAGGED
#: Running as the compiled build's extension module (see pgproxy.protocol.COMPILED).
_COMPILED: Final = not __file__.endswith(".py")
_HALTED: Final = FramingMode.HALTED
_STARTUP: Final = FramingMode.STARTUP


#: What :meth:`Framer.count_tags` does with a tag (a :func:`count_table`'s bytes).
STOP: Final = 0
COUNT: Final = 1
MARK: Final = 2
OPENS: Final = 3


def count_table(marked: bytes, opening: bytes = b"", stopping: bytes = b"") -> bytes:
    """A table of 256 bytes for :meth:`Framer.count_tags`: ``MARK``, ``OPENS``, ``STOP`` at those tags, ``COUNT`` elsewhere."""
    return bytes(
        STOP if tag in stopping else MARK if tag in marked else OPENS if tag in opening else COUNT for tag in range(256)
    )


def tag_table(tags: bytes) -> bytes:
    """A table of 256 bytes for :meth:`Framer.feed_whole`: 1 at every tag in ``tags``, 0 elsewhere."""
    return bytes(1 if tag in tags else 0 for tag in range(256))


def _whole_by_index(data: bytes, accepted: bytes, max_frame: i64, tail_at: i64, tail_count: i64) -> i64:
    """:meth:`Framer.feed_whole`'s check for the compiled build: the header read byte by byte into native integers.

    Each byte goes into an ``i64`` before it is shifted: mypyc's arithmetic on
    ``int`` checks every step for overflow and the tag bit. Callgrind, the check
    of a five-message answer, compiled: ~1,000 -> ~250 instructions. The tags
    are looked up in a table, not ``tag in tags``: under mypyc that is a boxed
    int and a PySequence_Contains call, ~150 instructions a message.
    """
    pos: i64 = 0
    n: i64 = len(data)
    count: i64 = 0
    while pos < n:
        if pos == tail_at:
            return count + tail_count
        if n - pos < 5:
            return 0
        tag: i64 = data[pos]
        b1: i64 = data[pos + 1]
        b2: i64 = data[pos + 2]
        b3: i64 = data[pos + 3]
        b4: i64 = data[pos + 4]
        length: i64 = b1 << 24 | b2 << 16 | b3 << 8 | b4
        if length > max_frame or length < 4 or not accepted[tag]:
            return 0
        pos += 1 + length
        count += 1
    return count if pos == n else 0


def _length_at(data: bytes, at: i64) -> i64:
    """The length field of a message whose tag is at ``at``, read as :func:`_whole_by_index` reads it (compiled build)."""
    b1: i64 = data[at + 1]
    b2: i64 = data[at + 2]
    b3: i64 = data[at + 3]
    b4: i64 = data[at + 4]
    return b1 << 24 | b2 << 16 | b3 << 8 | b4


class Framer:
    """Incremental framer for one direction of one conversation.

    Feed it chunks of any size; it returns the frames completed by each chunk
    and keeps at most one incomplete frame (bounded by ``max_frame``) buffered.
    In STARTUP and SINGLE_BYTE mode it stops after one unit so that the owner
    can switch mode before the rest of the chunk is looked at; call
    ``feed(b"")`` after switching to frame what is still buffered.

    Args:
        direction: ``"frontend"`` or ``"backend"``, used in errors only.
        mode: initial mode.
        max_frame: bodies longer than this are skipped in streaming fashion.
    """

    __slots__ = (
        "_need",
        "_offset",
        "_pending",
        "_skip",
        "direction",
        "error",
        "last",
        "marks",
        "max_frame",
        "mode",
        "opened",
        "watched",
    )

    def __init__(
        self, direction: str, mode: FramingMode = FramingMode.TAGGED, max_frame: int = DEFAULT_MAX_FRAME
    ) -> None:
        self.direction = direction
        self.mode = mode
        self.max_frame = max_frame
        self.error: FramingError | None = None
        self._pending = bytearray()
        self._need = 0  # total bytes the pending partial unit needs before it is worth rescanning
        self._skip = 0  # body bytes of an oversized frame still to stream past
        self._offset = 0  # stream offset of the first byte in _pending (or of the next chunk)
        #: After :meth:`count_tags`: where the body of the chunk's last message marked ``MARK`` starts, or -1.
        self.watched = -1
        #: After :meth:`count_tags`: how many messages were marked ``MARK``, and whether one marked ``OPENS``
        #: came after the last of them (or, with none marked, at all).
        self.marks = 0
        self.opened = False
        #: After :meth:`count_tags`: where the last whole message it counted starts, or -1.
        self.last = -1

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._pending)

    @property
    def skipping(self) -> int:
        """Body bytes of an oversized frame that are still to be streamed past."""
        return self._skip

    def passed(self, n: int) -> None:
        """Count ``n`` bytes of whole messages its owner framed without it (the conversation's login burst).

        Only between messages in tagged mode (nothing buffered or skipped):
        the stream offsets of later errors stay exact.
        """
        self._offset += n

    def pass_whole(self, n: int) -> bool:
        """:meth:`passed` for ``n`` bytes of whole messages, if the framer sits between messages in tagged mode.

        False, with nothing changed, otherwise (something held back or streamed
        past, another mode): the owner then feeds the bytes the general way.
        The state afterwards is what :meth:`feed` leaves after a chunk of whole messages.
        """
        if self._pending or self._skip or self.mode is not _TAGGED:
            return False
        self._offset += n
        self._need = 0
        return True

    def pass_startup(self, n: int) -> bool:
        """:meth:`feed` for a whole startup packet of ``n`` bytes its owner reads itself, in STARTUP mode with nothing held back.

        False, with nothing changed, otherwise. The state afterwards is what
        feed leaves after such a packet (the owner then sets the next mode).
        """
        if self._pending or self._skip or self.mode is not _STARTUP:
            return False
        self._offset += n
        self._need = 0
        return True

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add a chunk and return every frame it completes, in order."""
        if type(data) is bytes and not self._pending and not self._skip and self.mode is _TAGGED:
            # The common case, asked first (a chunk of whole messages, nothing held
            # back): the general way below, minus its questions.
            out: list[Frame] = []
            consumed = self._scan_tagged(data, out)
            if consumed < len(data) and self.mode is _TAGGED and not self._skip:
                self._pending = bytearray(data[consumed:]) if consumed else bytearray(data)
            self._offset += consumed
            return out
        if self.mode is _HALTED:
            self._offset += len(data)
            return []
        if self._skip:
            n = len(data)
            if n <= self._skip:
                self._skip -= n
                self._offset += n
                return []
            data = data[self._skip :]
            self._offset += self._skip
            self._skip = 0
        if self._pending:
            if len(self._pending) + len(data) < self._need:
                self._pending += data
                return []
            self._pending += data
            buf = bytes(self._pending)
            self._pending = bytearray()
        elif type(data) is bytes:
            buf = data
        else:
            buf = bytes(data)
        if not buf:
            return []
        out = []
        if self.mode is FramingMode.TAGGED:
            consumed = self._scan_tagged(buf, out)
        elif self.mode is FramingMode.STARTUP:
            consumed = self._scan_startup(buf, out)
        elif buf[0] == _ERROR_RESPONSE_TAG:
            # Servers before 7.x-era SSL support answer SSLRequest with a
            # regular ErrorResponse instead of one byte ("SSL Session Encryption").
            self.mode = FramingMode.TAGGED
            consumed = self._scan_tagged(buf, out)
        else:
            out.append((SINGLE_BYTE, buf, 0, 1))
            self._need = 0
            consumed = 1
        rest = len(buf) - consumed
        if rest and self.mode is not FramingMode.HALTED and not self._skip:
            self._pending = bytearray(buf[consumed:]) if consumed else bytearray(buf)
        else:
            self._need = 0
        self._offset += consumed
        return out

    def feed_whole(self, data: bytes, accepted: bytes, tail_at: int = -1, tail_count: int = 0) -> int:
        """Take a chunk of whole messages whose owner reads them itself: how many, or 0 (nothing changed).

        Only the common case is taken: TAGGED mode with nothing held back or
        streamed past, every message whole (the chunk ends where one does), its
        length plausible and within ``max_frame``, its tag accepted (``accepted``
        is a :func:`tag_table`: nonzero at a tag taken). Otherwise 0 is returned
        and :meth:`feed` takes the same chunk. The stream offset moves past the
        chunk, as :meth:`feed` would move it.

        ``tail_at`` is where the chunk ends in a run of ``tail_count`` whole
        messages that qualify, as its owner found (a driver's usual Describe,
        Execute and Sync, by one ``endswith``), or -1: when the walk reaches it on
        a message boundary, the run is counted without reading its headers.
        """
        if self._pending or self._skip or self.mode is not _TAGGED:
            return 0
        if _COMPILED:
            count = _whole_by_index(data, accepted, self.max_frame, tail_at, tail_count)
            if count:
                self._offset += len(data)
            return count
        # The interpreter's walk is feed_whole_from's, from the chunk's start.
        return self.feed_whole_from(data, accepted, 0, 0, tail_at, tail_count)

    def feed_whole_from(
        self, data: bytes, accepted: bytes, head_end: int, head_count: int, tail_at: int, tail_count: int
    ) -> int:
        """:meth:`feed_whole`'s walk, the interpreter's, for a chunk whose owner may have found how it starts too.

        ``head_end`` is where a run of ``head_count`` whole messages that
        qualify starts the chunk (bytes this framer took before, found by one
        ``startswith``; 0: none): the walk starts there. A method of its own:
        two more arguments cost :meth:`feed_whole`, the compiled build's native
        walk, ~30 instructions a statement (callgrind), and the compiled build
        keeps no memo of how answers start.
        """
        if self._pending or self._skip or self.mode is not _TAGGED:
            return 0
        pos = head_end
        n = len(data)
        max_frame = self.max_frame
        count = head_count
        # The header by struct (see _scan_tagged); a table lookup, not ``tag in tags`` (see _whole_by_index).
        while pos < n:
            if pos == tail_at:
                count += tail_count
                pos = n
                break
            if n - pos < 5:
                return 0
            tag, length = _TAGGED_HEADER(data, pos)
            if length > max_frame or length < 4 or not accepted[tag]:
                return 0
            pos += 1 + length
            count += 1
        if pos != n:
            return 0
        self._offset += n
        return count

    def feed_one(self, data: bytes, end: int) -> bool:
        """:meth:`feed_whole` for a chunk its owner expects to start with one message ending at ``end``: True if so.

        Only the common case is taken: TAGGED mode with nothing held back or
        streamed past, the first message (its tag checked by the owner) whole,
        within ``max_frame`` and ending at ``end`` (its length says so), where
        the chunk ends or where a run of whole messages the owner found the
        chunk to end in starts (libpq's Describe, Execute and Sync, by one
        ``endswith``). Otherwise False is returned, nothing has changed, and
        :meth:`feed_whole` or :meth:`feed` takes the same chunk. A
        simple-protocol client's Query comes alone in its chunk (a Bind before
        libpq's three: :meth:`feed_bind`): one header read instead of
        :meth:`feed_whole`'s loop, and the owner reads it without a loop of its
        own (pure, callgrind, instructions a statement: pgbench -S ~6k, -M
        prepared ~4.6k less than the walk).
        """
        if self._pending or self._skip or self.mode is not _TAGGED or end < 5 or end - 1 > self.max_frame:
            return False
        length: i64 = _length_at(data, 0) if _COMPILED else _INT32(data, 1)[0]
        if length != end - 1:
            return False
        self._offset += len(data)
        return True

    def feed_bind(self, data: bytes, end: int) -> int:
        """:meth:`feed_one` for a Bind, or a Parse and a Bind, ending at ``end``: where the Bind starts, or -1.

        How libpq sends an extended-protocol statement: a Bind (a prepared
        statement's, pgbench -M prepared) or a Parse and a Bind (the unnamed
        statement's, -M extended) before its Describe, Execute and Sync, which
        the owner found at ``end`` by one ``endswith``. The first message (a Bind
        or a Parse) and the Bind after a Parse must be whole, within
        ``max_frame`` and end at ``end`` (see :meth:`feed_one`). The Bind starts
        at 0 when it is the first message; -1: nothing changed, :meth:`feed_whole`
        or :meth:`feed` takes the same chunk. The one reading of such a chunk's
        start for query detail, message detail and the pure build's count at
        connection detail (pure, callgrind, the tracker per statement: -M
        extended 114.8k -> 107.4k instructions against the walk).
        """
        if self._pending or self._skip or self.mode is not _TAGGED or end < 5 or end > len(data):
            return -1
        first = data[0]
        length: i64 = _length_at(data, 0) if _COMPILED else _INT32(data, 1)[0]
        if first == _BIND_TAG:  # feed_one's case: the Bind alone before the tail
            if length != end - 1 or length > self.max_frame:
                return -1
            self._offset += len(data)
            return 0
        at: i64 = 1 + length
        if first != _PARSE_TAG or length < 4 or length > self.max_frame or at > end - 5 or data[at] != _BIND_TAG:
            return -1
        length = _length_at(data, at) if _COMPILED else _INT32(data, at + 1)[0]
        if length != end - at - 1 or length > self.max_frame:
            return -1
        self._offset += len(data)
        return at

    def count_tags(self, data: bytes | bytearray | memoryview, table: bytes, end: int = -1) -> int:
        """:meth:`feed` for a caller that only counts: how many whole messages the chunk completes, or -1.

        ``table`` (256 bytes, see :func:`count_table`) says what each tag is:
        ``STOP`` (the chunk is declined), ``COUNT``, ``MARK`` (counted in
        :attr:`marks`, its body's start in :attr:`watched`) or ``OPENS`` (sets
        :attr:`opened`, which a later ``MARK`` clears). Only the common case is
        taken: TAGGED mode with nothing held back or streamed past, every
        length plausible and within ``max_frame``, no ``STOP`` tag. Otherwise
        -1 is returned and nothing has changed: call :meth:`feed` with the same
        chunk. A partial last message is held back as :meth:`feed` holds it.

        ``end`` (if not -1) is where the chunk ends in a run of whole messages
        its owner found by one ``endswith`` and accounts for itself: the walk
        stops there, and must land there (-1 otherwise, nothing changed).
        :attr:`last` is set to where the last message counted starts (-1: none).

        No frame (a tuple each, in a list) and no list of tags is built: what
        connection detail needs per chunk once a session is ready is three
        numbers (compiled, callgrind, per pgbench -S round trip: the tracker's
        earlier way, a bytearray of tags scanned again, ~7.9k instructions, this one ~1k).
        """
        if self._pending or self._skip or self.mode is not _TAGGED:
            return -1
        if _COMPILED and type(data) is bytes:
            return self._count_by_index(data, table, end)
        n = len(data)
        limit = n if end < 0 else end
        last = limit - 5
        pos = count = marks = 0
        watched = previous = -1
        opened = False
        max_frame = self.max_frame
        need = 0
        while pos <= last:
            tag, length = _TAGGED_HEADER(data, pos)
            kind = table[tag]
            if length > max_frame or length < 4 or not kind:
                return -1
            after = pos + 1 + length
            if after > limit:
                need = after - pos
                break
            if kind == MARK:
                marks += 1
                watched = pos + 5
                opened = False
            elif kind == OPENS:
                opened = True
            count += 1
            previous = pos
            pos = after
        if pos == n:  # the usual chunk: whole messages
            self._offset += n
            self.marks = marks
            self.watched = watched
            self.opened = opened
            self.last = previous
            return count
        return self._counted(data, n, end, pos, need, count, marks, watched, opened, previous)

    def _count_by_index(self, data: bytes, table: bytes, end: i64) -> int:
        """:meth:`count_tags`' walk for the compiled build: native integers (see :func:`_whole_by_index`)."""
        n: i64 = len(data)
        limit: i64 = n if end < 0 else end
        last: i64 = limit - 5
        pos: i64 = 0
        count: i64 = 0
        marks: i64 = 0
        watched: i64 = -1
        previous: i64 = -1
        opened = False
        max_frame: i64 = self.max_frame
        need: i64 = 0
        while pos <= last:
            tag: i64 = data[pos]
            kind: i64 = table[tag]
            length = _length_at(data, pos)
            if length > max_frame or length < 4 or kind == STOP:
                return -1
            after: i64 = pos + 1 + length
            if after > limit:
                need = after - pos
                break
            if kind == MARK:
                marks += 1
                watched = pos + 5
                opened = False
            elif kind == OPENS:
                opened = True
            count += 1
            previous = pos
            pos = after
        if pos == n:  # the usual chunk: whole messages
            self._offset += n
            self.marks = marks
            self.watched = watched
            self.opened = opened
            self.last = previous
            return count
        return self._counted(data, n, end, pos, need, count, marks, watched, opened, previous)

    def _counted(
        self,
        data: bytes | bytearray | memoryview,
        n: int,
        end: int,
        pos: int,
        need: int,
        count: int,
        marks: int,
        watched: int,
        opened: bool,
        previous: int,
    ) -> int:
        """:meth:`count_tags`' end for a chunk that does not end where its walk did: its owner's run, or a partial message."""
        if end >= 0:
            if pos != end:
                return -1  # the walk did not land where the owner's run starts
            self._offset += n
        else:  # a partial last message, held back
            self._need = need or 5  # (as feed: the header's 5 bytes when not even they are here)
            self._pending = bytearray(data[pos:])
            self._offset += pos
        self.marks = marks
        self.watched = watched
        self.opened = opened
        self.last = previous
        return count

    def _scan_tagged(self, buf: bytes, out: list[Frame]) -> int:
        pos = 0
        n = len(buf)
        app = out.append
        max_frame = self.max_frame
        unpack = _TAGGED_HEADER
        # Under mypyc the header is read natively byte by byte, where struct's unpack_from
        # stays a Python call (~1,100 instructions a message compiled, 9 in a pgbench -M prepared
        # transaction: 74.2k -> 63.7k per statement, callgrind); the interpreter prefers struct.
        by_index = _COMPILED
        self._need = 0
        while n - pos >= 5:
            if by_index:
                tag = buf[pos]
                length = buf[pos + 1] << 24 | buf[pos + 2] << 16 | buf[pos + 3] << 8 | buf[pos + 4]
            else:
                tag, length = unpack(buf, pos)
            end = pos + 1 + length
            if length > max_frame or length < 4:
                if length < 4 or length > PROTOCOL_MAX_LENGTH:
                    self._fail(buf, pos, f"message length {length} for tag {tag!r} is impossible", out)
                    return n
                body = length - 4
                app((tag, None, 0, body))
                available = n - pos - 5
                if available >= body:
                    pos += 5 + body
                    continue
                self._skip = body - available
                return n
            if end > n:
                self._need = end - pos
                break
            app((tag, buf, pos + 5, end))
            pos = end
        else:
            if pos < n:
                self._need = 5
        return pos

    def _scan_startup(self, buf: bytes, out: list[Frame]) -> int:
        self._need = 0
        if buf[0] == _TLS_HANDSHAKE_BYTE:
            out.append((TLS_RECORD, buf, 0, 1))
            self.mode = FramingMode.HALTED
            return len(buf)
        if len(buf) < 4:
            self._need = 4
            return 0
        (length,) = _INT32(buf, 0)
        if length < 8 or length > MAX_STARTUP_PACKET:
            self._fail(buf, 0, f"startup packet length {length} outside 8..{MAX_STARTUP_PACKET}", out)
            return len(buf)
        if length > len(buf):
            self._need = length
            return 0
        out.append((UNTAGGED, buf, 4, length))
        return length

    def _fail(self, buf: bytes, pos: int, reason: str, out: list[Frame]) -> None:
        self.error = FramingError(self.direction, self._offset + pos, reason, buf[pos : pos + 32])
        self.mode = FramingMode.HALTED
        out.append((FRAMING_ERROR, None, 0, 0))
