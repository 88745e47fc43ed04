"""Decode framed message bodies into typed messages, table-driven by tag.

One dict per direction maps the tag byte to a decoder, with the documentation's
name beside each entry (asyncpg's ``coreproto.pyx`` habit). A decoder receives
the frame's buffer and body bounds plus the session's text encoding; it raises
:class:`DecodeError` on a body that does not fit the layout, which
:func:`decode_frame` turns into a :class:`Malformed` message.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

from pgproxy.protocol import messages as m
from pgproxy.protocol.errors import DecodeError
from pgproxy.protocol.framing import FRAMING_ERROR, SINGLE_BYTE, TLS_RECORD, UNTAGGED, Frame

_I16 = struct.Struct("!h").unpack_from
_U16 = struct.Struct("!H").unpack_from
_I32 = struct.Struct("!i").unpack_from
_U32 = struct.Struct("!I").unpack_from
_FIELD = struct.Struct("!IhIhih").unpack_from  # RowDescription field after its name
#: Running as the compiled build's extension module: integers are then read byte by
#: byte, natively, where a struct call stays a Python call (pgproxy.protocol.framing does the same).
_COMPILED: Final = not __file__.endswith(".py")
#: A byte as its character, without a call to chr() (Describe's and Close's kind).
_KINDS: Final = tuple(chr(i) for i in range(256))

#: Startup packet codes ("Message Formats": StartupMessage, SSLRequest, ...).
SSL_REQUEST_CODE: Final = 80877103
GSSENC_REQUEST_CODE: Final = 80877104
CANCEL_REQUEST_CODE: Final = 80877102


class AuthState:
    """What a frontend ``p`` message means, set by the last Authentication request.

    The ``p`` tag is shared by PasswordMessage, SASLInitialResponse,
    SASLResponse and GSSResponse; only the preceding AuthenticationXxx tells
    them apart ("Message Formats", PasswordMessage).
    """

    PASSWORD: Final = "password"
    SASL_INITIAL: Final = "sasl_initial"
    SASL_CONTINUE: Final = "sasl_continue"
    GSS: Final = "gss"


Decoder = Callable[[bytes, int, int, str], m.Message]


class _Reader:
    """Sequential reader over ``buf[pos:end]`` that raises DecodeError past the end."""

    __slots__ = ("buf", "encoding", "end", "pos")

    def __init__(self, buf: bytes, pos: int, end: int, encoding: str) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end
        self.encoding = encoding

    def _need(self, n: int) -> int:
        p = self.pos
        if p + n > self.end:
            raise DecodeError(f"needs {n} more bytes at body offset {p}, {self.end - p} left")
        self.pos = p + n
        return p

    def int8(self) -> int:
        return self.buf[self._need(1)]

    def int16(self) -> int:
        return int(_I16(self.buf, self._need(2))[0])

    def int32(self) -> int:
        return int(_I32(self.buf, self._need(4))[0])

    def uint32(self) -> int:
        return int(_U32(self.buf, self._need(4))[0])

    def byte(self) -> str:
        return chr(self.buf[self._need(1)])

    def raw(self, n: int) -> bytes:
        if n < 0:
            raise DecodeError(f"negative length {n}")
        p = self._need(n)
        return self.buf[p : p + n]

    def rest(self) -> bytes:
        p = self.pos
        self.pos = self.end
        return self.buf[p : self.end]

    def cstring(self) -> str:
        buf = self.buf
        try:
            nul = buf.index(0, self.pos, self.end)
        except ValueError:
            raise DecodeError(f"unterminated string at body offset {self.pos}") from None
        s = buf[self.pos : nul].decode(self.encoding, "backslashreplace")
        self.pos = nul + 1
        return s

    def count(self) -> int:
        """An Int16 count: unsigned on the wire (PostgreSQL reads it with pq_getmsgint(.., 2))."""
        return int(_U16(self.buf, self._need(2))[0])

    def int16_array(self) -> tuple[int, ...]:
        n = self.count()
        p = self._need(2 * n)
        return struct.unpack_from(f"!{n}h", self.buf, p)

    def int32_array(self, unsigned: bool = False) -> tuple[int, ...]:
        n = self.count()
        p = self._need(4 * n)
        return struct.unpack_from(f"!{n}{'I' if unsigned else 'i'}", self.buf, p)

    def values(self) -> tuple[bytes | None, ...]:
        """Int16 count, then per value an Int32 length (-1 = NULL) and the bytes."""
        n = self.count()
        return tuple(self.value() for _ in range(n))

    def value(self) -> bytes | None:
        length = self.int32()
        if length == -1:
            return None
        return self.raw(length)

    def done(self) -> None:
        if self.pos != self.end:
            raise DecodeError(f"{self.end - self.pos} unexpected trailing bytes")


# --------------------------------------------------------------------------- frontend


def decode_startup_packet(buf: bytes, start: int, end: int, encoding: str = "utf-8") -> m.Message:
    """Decode the body of an untagged startup-phase packet (code word first)."""
    r = _Reader(buf, start, end, encoding)
    code = r.uint32()
    if code == SSL_REQUEST_CODE:
        r.done()
        return m.SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.done()
        return m.GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        pid = r.int32()
        key = r.rest()
        if not 4 <= len(key) <= 256:
            raise DecodeError(f"cancel key of {len(key)} bytes, expected 4..256")
        return m.CancelRequest(process_id=pid, secret_key=key)
    major, minor = code >> 16, code & 0xFFFF
    if major == 3:
        # Every new connection sends one: split at the NULs when the list is
        # well-formed (pairs of a non-empty name and a value, then one NUL),
        # else the reader below, with its checks and error texts.
        fields = buf[start + 4 : end - 1].split(b"\x00") if end - start > 4 and buf[end - 1] == 0 else None
        if fields is not None and len(fields) % 2 == 1 and fields[-1] == b"" and all(fields[0:-1:2]):
            return m.StartupMessage(
                protocol_major=major,
                protocol_minor=minor,
                parameters=tuple(
                    (fields[i].decode(encoding, "backslashreplace"), fields[i + 1].decode(encoding, "backslashreplace"))
                    for i in range(0, len(fields) - 1, 2)
                ),
            )
        return _read_startup_message(r, major, minor)
    return m.UnknownStartupPacket(code=code, payload=r.rest())


def _read_startup_message(r: _Reader, major: int, minor: int) -> m.StartupMessage:
    """A StartupMessage's parameter list by the reader: the general way, with its checks and error texts.

    :func:`decode_startup_packet` takes it when its one-split fast path does
    not apply; tests hold the two to the same messages and errors.
    """
    buf = r.buf
    params: list[tuple[str, str]] = []
    while r.pos < r.end and buf[r.pos] != 0:
        name = r.cstring()
        params.append((name, r.cstring()))
    if r.pos >= r.end:
        raise DecodeError("startup parameters are not terminated")
    r.pos += 1
    r.done()
    return m.StartupMessage(protocol_major=major, protocol_minor=minor, parameters=tuple(params))


#: What a body decoder or field reader raises on a body that does not fit:
#: :func:`decode_tagged` makes these Malformed, and a caller of the ``read_*``
#: readers takes them as its cue to decode the general way. (Not ``Final``:
#: mypyc left a cross-module ``Final`` tuple unset in the compiled build.)
UNREADABLE_BODY: tuple[type[Exception], ...] = (DecodeError, struct.error, UnicodeError, ValueError)


#: Bind's fields: portal, statement, parameter formats, parameters, result formats.
BindFields = tuple[str, str, tuple[int, ...], tuple[bytes | None, ...], tuple[int, ...]]


def _bind(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    portal, statement, fmts, params, results = read_bind(buf, start, end, enc)
    return m.Bind(portal, statement, fmts, params, results)


def read_bind(buf: bytes, start: int, end: int, enc: str) -> BindFields:
    """A Bind body's fields, without the message object (the query-detail hot path reads these).

    The one reading of a Bind: :func:`_bind` builds its message from it.
    Plain index arithmetic instead of the generic _Reader; every read is
    bounds-checked all the same. An empty name is not decoded, and the
    16-bit counts are read byte by byte (no struct call); under mypyc the
    parameter lengths are too, natively (callgrind, tracker per pgbench -M
    prepared statement: 63.7k -> 57.1k compiled, 172.9k -> 168.6k pure).

    Raises:
        DecodeError, ValueError, UnicodeError: as :func:`decode_tagged` catches them.
    """
    if start < end and buf[start] == 0:  # the unnamed portal: no call to find its end
        portal = ""
        pos = start + 1
    else:
        nul = buf.index(0, start, end)
        portal = buf[start:nul].decode(enc, "backslashreplace")
        pos = nul + 1
    if pos < end and buf[pos] == 0:  # the unnamed statement
        statement = ""
        pos += 1
    else:
        if _COMPILED:  # a short name's NUL found natively, without index()'s argument parsing
            nul = pos
            while nul < end and buf[nul] != 0:
                nul += 1
            if nul == end:
                raise ValueError("subsection not found")  # what index() raises
        else:
            nul = buf.index(0, pos, end)
        statement = buf[pos:nul].decode(enc, "backslashreplace")
        pos = nul + 1
    if pos + 2 <= end and buf[pos] == 0 and buf[pos + 1] == 0:  # no format codes: all text
        fmts: tuple[int, ...] = ()
        pos += 2
    else:
        fmts, pos = _int16_list(buf, pos, end)
    if pos + 2 > end:
        raise DecodeError("Bind truncated before the parameter count")
    count = buf[pos] << 8 | buf[pos + 1]
    pos += 2
    by_index = _COMPILED
    params: list[bytes | None] = []
    for _ in range(count):
        if pos + 4 > end:
            raise DecodeError("Bind truncated in a parameter length")
        if by_index:
            length = buf[pos] << 24 | buf[pos + 1] << 16 | buf[pos + 2] << 8 | buf[pos + 3]
            if length >= 0x80000000:
                length -= 0x100000000
        else:
            (length,) = _I32(buf, pos)
        pos += 4
        if length == -1:
            params.append(None)
            continue
        if length < 0 or pos + length > end:
            raise DecodeError(f"Bind parameter length {length} runs past the message")
        params.append(buf[pos : pos + length])
        pos += length
    if pos + 2 <= end and buf[pos] == 0 and buf[pos + 1] == 0:  # no result format codes
        results: tuple[int, ...] = ()
        pos += 2
    else:
        results, pos = _int16_list(buf, pos, end)
    if pos != end:
        raise DecodeError(f"{end - pos} unexpected trailing bytes")
    return portal, statement, fmts, tuple(params), results


def _int16_list(buf: bytes, pos: int, end: int) -> tuple[tuple[int, ...], int]:
    if pos + 2 > end:
        raise DecodeError("truncated before a count")
    (n,) = _U16(buf, pos)
    pos += 2
    if pos + 2 * n > end:
        raise DecodeError("truncated in a list of Int16")
    if n == 0:
        return (), pos
    if n == 1:
        return _I16(buf, pos), pos + 2
    return struct.unpack_from(f"!{n}h", buf, pos), pos + 2 * n


def _close(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    kind, name = read_kind_and_name(buf, start, end, enc)
    return m.Close(kind, name)


def _describe(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    kind, name = read_kind_and_name(buf, start, end, enc)
    return m.Describe(kind, name)


def read_kind_and_name(buf: bytes, start: int, end: int, enc: str) -> tuple[str, str]:
    """A Describe or Close body: the kind byte (``S`` or ``P``) and the name.

    One ``find`` when the body is well formed (the query-detail hot path reads
    a Describe per extended-protocol statement); the generic _Reader, with its
    checks and error texts, otherwise.
    """
    if end - start == 2 and buf[start + 1] == 0:  # the unnamed portal or statement: no find
        return _KINDS[buf[start]], ""
    if end - start >= 2 and buf.find(0, start + 1, end) == end - 1:
        return _KINDS[buf[start]], buf[start + 1 : end - 1].decode(enc, "backslashreplace")
    return _kind_and_name_by_reader(_Reader(buf, start, end, enc))


def _kind_and_name_by_reader(r: _Reader) -> tuple[str, str]:
    """Describe's and Close's layout by the reader: the general way (tests hold the fast way to it)."""
    kind = r.byte()
    name = r.cstring()
    r.done()
    return kind, name


def _copy_data(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    return m.CopyData(buf[start:end])


def _copy_done(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    _empty(start, end)
    return m.CopyDone()


def _copy_fail(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    r = _Reader(buf, start, end, enc)
    msg = r.cstring()
    r.done()
    return m.CopyFail(msg)


def _execute(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    portal, max_rows = read_execute(buf, start, end, enc)
    return m.Execute(portal, max_rows)


def read_execute(buf: bytes, start: int, end: int, enc: str) -> tuple[str, int]:
    """An Execute body: the portal name and the row limit (the one reading; :func:`_execute` uses it).

    The unnamed portal's empty name is not decoded; under mypyc the limit is
    read byte by byte, natively (see read_bind).
    """
    if start < end and buf[start] == 0:  # the unnamed portal: no call to find its end
        nul = start
        portal = ""
    else:
        nul = buf.index(0, start, end)
        portal = buf[start:nul].decode(enc, "backslashreplace")
    if end - nul != 5:
        raise DecodeError(f"Execute has {end - nul - 1} bytes after the portal name, expected 4")
    if _COMPILED:
        limit = buf[nul + 1] << 24 | buf[nul + 2] << 16 | buf[nul + 3] << 8 | buf[nul + 4]
        return portal, limit - 0x100000000 if limit >= 0x80000000 else limit
    return portal, int(_I32(buf, nul + 1)[0])


def _function_call(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    r = _Reader(buf, start, end, enc)
    oid = r.uint32()
    fmts = r.int16_array()
    args = r.values()
    result = r.int16()
    r.done()
    return m.FunctionCall(oid, fmts, args, result)


def _parse(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    name, query, types = read_parse(buf, start, end, enc)
    return m.Parse(name, query, types)


def read_parse(buf: bytes, start: int, end: int, enc: str) -> tuple[str, str, tuple[int, ...]]:
    """A Parse body: statement name, query text and parameter type OIDs.

    Two ``find``s when the body is well formed (the query-detail hot path
    reads a Parse per unnamed extended-protocol statement); the generic
    _Reader, with its checks and error texts, otherwise.
    """
    # The unnamed statement's empty name is seen by its NUL, without a find (see read_bind).
    name_end = start if start < end and buf[start] == 0 else buf.find(0, start, end)
    if name_end >= 0 and end - name_end >= 4 and buf[end - 3] == 0 and buf[end - 2] == 0 and buf[end - 1] == 0:
        # No parameter types (libpq sends none unless told them): the query's NUL is the
        # body's fourth byte from the end when its text holds no other. The slice is
        # decoded anyway and `in` is one memchr; find's argument parsing cost ~1,300
        # instructions compiled (callgrind).
        text = buf[name_end + 1 : end - 3]
        if 0 not in text:
            return (
                buf[start:name_end].decode(enc, "backslashreplace") if name_end != start else "",
                text.decode(enc, "backslashreplace"),
                (),
            )
    query_end = buf.find(0, name_end + 1, end) if name_end >= 0 else -1
    if query_end >= 0 and query_end + 3 <= end:
        n = buf[query_end + 1] << 8 | buf[query_end + 2]
        if query_end + 3 + 4 * n == end:
            types: tuple[int, ...] = struct.unpack_from(f"!{n}I", buf, query_end + 3) if n else ()
            return (
                buf[start:name_end].decode(enc, "backslashreplace") if name_end != start else "",
                buf[name_end + 1 : query_end].decode(enc, "backslashreplace"),
                types,
            )
    return _parse_by_reader(_Reader(buf, start, end, enc))


def _parse_by_reader(r: _Reader) -> tuple[str, str, tuple[int, ...]]:
    """Parse's layout by the reader: the general way (tests hold the fast way to it)."""
    name = r.cstring()
    query = r.cstring()
    types = r.int32_array(unsigned=True)
    r.done()
    return name, query, types


def _query(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    return m.Query(read_query(buf, start, end, enc))


def read_query(buf: bytes, start: int, end: int, enc: str) -> str:
    """A Query body: its text. One memchr when well formed; the generic _Reader's checks and error texts otherwise.

    The text is sliced to be decoded anyway, and ``0 not in`` it is one memchr:
    ``find(0, start, end)``'s argument parsing cost ~1,300 instructions compiled
    (callgrind).
    """
    if end > start and buf[end - 1] == 0:
        text = buf[start : end - 1]
        if 0 not in text:
            return text.decode(enc, "backslashreplace")
    return _query_by_reader(_Reader(buf, start, end, enc))


def _query_by_reader(r: _Reader) -> str:
    """Query's layout by the reader: the general way (tests hold the fast way to it)."""
    q = r.cstring()
    r.done()
    return q


def _empty(start: int, end: int) -> None:
    if end != start:
        raise DecodeError(f"{end - start} unexpected bytes in an empty message")


def _singleton(cls: type[m.Message]) -> Decoder:
    instance = cls()

    def decode(buf: bytes, start: int, end: int, enc: str) -> m.Message:
        _empty(start, end)
        return instance

    return decode


def _password(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    r = _Reader(buf, start, end, enc)
    pw = r.cstring()
    r.done()
    return m.PasswordMessage(pw)


def _sasl_initial(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    r = _Reader(buf, start, end, enc)
    mech = r.cstring()
    data = r.value()
    r.done()
    return m.SASLInitialResponse(mech, data)


def _sasl_response(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    return m.SASLResponse(buf[start:end])


def _gss_response(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    return m.GSSResponse(buf[start:end])


PASSWORD_FAMILY: dict[str, Decoder] = {
    AuthState.PASSWORD: _password,  # PasswordMessage
    AuthState.SASL_INITIAL: _sasl_initial,  # SASLInitialResponse
    AuthState.SASL_CONTINUE: _sasl_response,  # SASLResponse
    AuthState.GSS: _gss_response,  # GSSResponse
}

FRONTEND: dict[int, tuple[str, Decoder]] = {
    ord("B"): ("Bind", _bind),
    ord("C"): ("Close", _close),
    ord("d"): ("CopyData", _copy_data),
    ord("c"): ("CopyDone", _copy_done),
    ord("f"): ("CopyFail", _copy_fail),
    ord("D"): ("Describe", _describe),
    ord("E"): ("Execute", _execute),
    ord("H"): ("Flush", _singleton(m.Flush)),
    ord("F"): ("FunctionCall", _function_call),
    ord("P"): ("Parse", _parse),
    ord("Q"): ("Query", _query),
    ord("S"): ("Sync", _singleton(m.Sync)),
    ord("X"): ("Terminate", _singleton(m.Terminate)),
    ord("p"): ("PasswordMessage", _password),  # refined by AuthState, see PASSWORD_FAMILY
}

# --------------------------------------------------------------------------- backend

_AUTH_SIMPLE: dict[int, m.Authentication] = {
    0: m.AuthenticationOk(),
    2: m.AuthenticationKerberosV5(),
    3: m.AuthenticationCleartextPassword(),
    7: m.AuthenticationGSS(),
    9: m.AuthenticationSSPI(),
}


def _authentication(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    if end - start == 4:  # AuthenticationOk and the other code-only requests: every login has one
        simple = _AUTH_SIMPLE.get(int(_I32(buf, start)[0]))
        if simple is not None:
            return simple
    return _read_authentication(_Reader(buf, start, end, enc))


def _read_authentication(r: _Reader) -> m.Message:
    """An authentication request by the reader: the general way (tests hold :func:`_authentication` to it)."""
    code = r.int32()
    simple = _AUTH_SIMPLE.get(code)
    if simple is not None:
        r.done()
        return simple
    if code == 5:  # AuthenticationMD5Password
        salt = r.raw(4)
        r.done()
        return m.AuthenticationMD5Password(salt)
    if code == 8:
        return m.AuthenticationGSSContinue(r.rest())
    if code == 10:  # AuthenticationSASL: list of mechanism names, ended by an empty one
        mechs: list[str] = []
        while True:
            name = r.cstring()
            if not name:
                break
            mechs.append(name)
        r.done()
        return m.AuthenticationSASL(tuple(mechs))
    if code == 11:
        return m.AuthenticationSASLContinue(r.rest())
    if code == 12:
        return m.AuthenticationSASLFinal(r.rest())
    return m.AuthenticationUnknown(code, r.rest())


def _backend_key_data(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    if 8 <= end - start <= 260:  # every login has one: without the reader (~20k -> ~8k instructions, callgrind)
        return m.BackendKeyData(int(_I32(buf, start)[0]), buf[start + 4 : end])
    return _read_backend_key_data(_Reader(buf, start, end, enc))


def _read_backend_key_data(r: _Reader) -> m.Message:
    """BackendKeyData by the reader: the general way, with its checks and error texts (tests hold the two to it)."""
    pid = r.int32()
    key = r.rest()
    if not 4 <= len(key) <= 256:
        raise DecodeError(f"cancel key of {len(key)} bytes, expected 4..256")
    return m.BackendKeyData(pid, key)


def split_command_tag(tag: str) -> tuple[str, int | None]:
    """Split a CommandComplete tag into its command and row count.

    ``INSERT oid rows`` carries the count last; ``SELECT 5``, ``UPDATE 3``,
    ``COPY 10``... carry it as the only number; ``CREATE TABLE`` carries none.
    """
    head, _, last = tag.rpartition(" ")
    if head and last.isdigit():
        if head.startswith("INSERT "):
            head = "INSERT"
        return head, int(last)
    return tag, None


#: (Final: never rebound, so the compiled build reads it without a lookup in the module's dict.)
_COMMAND_COMPLETE_CACHE: Final[dict[bytes, m.CommandComplete]] = {}


class _LastCommandComplete:
    """The command tag :func:`known_command_complete` last found, and its message.

    A busy session repeats one tag ("SELECT 1"): comparing the body with the
    last one found is one memcmp, where the cache's lookup hashes a new bytes
    object and probes the dict (~450 instructions compiled, callgrind). The
    cache never replaces an entry, so the memo answers what the cache would.
    """

    __slots__ = ("message", "raw")

    def __init__(self) -> None:
        self.raw = b"\x00"  # never a command tag's body (the NUL ends it)
        self.message: m.CommandComplete | None = None


_LAST_COMMAND_COMPLETE: Final = _LastCommandComplete()


def known_command_complete(buf: bytes, start: int, end: int) -> m.CommandComplete | None:
    """A CommandComplete body read before (the cache :func:`_command_complete` keeps), else None.

    The query-detail walk asks this first and decodes the general way only on
    None: a statement's CommandComplete is then one comparison with the last
    one found (or one dict lookup), without the decoder table and the handler
    dispatch.
    """
    if end <= start or buf[end - 1] != 0:
        return None
    raw = buf[start : end - 1]
    last = _LAST_COMMAND_COMPLETE
    if raw == last.raw:
        return last.message
    message = _COMMAND_COMPLETE_CACHE.get(raw)
    if message is not None:
        last.raw = raw
        last.message = message
    return message


def _command_complete(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    if end <= start or buf[end - 1] != 0:
        raise DecodeError("unterminated command tag")
    raw = buf[start : end - 1]
    cached = _COMMAND_COMPLETE_CACHE.get(raw)
    if cached is not None:  # the same few tags ("SELECT 1", "UPDATE 1") recur endlessly
        return cached
    tag = raw.decode(enc, "backslashreplace")
    command, rows = split_command_tag(tag)
    msg = m.CommandComplete(tag, command, rows)
    if len(_COMMAND_COMPLETE_CACHE) < 1024 and raw.isascii():
        _COMMAND_COMPLETE_CACHE[bytes(raw)] = msg
    return msg


def _copy_response(cls: type[m.CopyInResponse | m.CopyOutResponse | m.CopyBothResponse]) -> Decoder:
    def decode(buf: bytes, start: int, end: int, enc: str) -> m.Message:
        r = _Reader(buf, start, end, enc)
        fmt = r.int8()
        cols = r.int16_array()
        r.done()
        return cls(fmt, cols)

    return decode


#: Prefix of errors about a DataRow's shape (as opposed to one value's content).
MALFORMED_DATA_ROW: Final = "malformed DataRow"


def cut_data_row(
    buf: bytes, start: int, end: int, columns: tuple[tuple[Any, Callable[[bytes], Any]], ...]
) -> dict[Any, Any]:
    """Cut a DataRow body and decode each value: ``{key: decode(value)}``, None for NULL.

    The one DataRow walker (message decoding, row decoding and hex-dump masking
    all cut rows here); cutting and decoding are fused in one loop because row
    decoding is the hot path of message detail.

    Args:
        columns: (key, decoder) per column, as many as the row must have.

    Raises:
        DecodeError: the body is not a well-formed DataRow of ``len(columns)``
            values (the message starts with :data:`MALFORMED_DATA_ROW`).
    """
    if end - start < 2 or _U16(buf, start)[0] != len(columns):
        count = _U16(buf, start)[0] if end - start >= 2 else 0
        raise DecodeError(f"{MALFORMED_DATA_ROW}: {count} columns, {len(columns)} expected")
    pos = start + 2
    out: dict[Any, Any] = {}
    unpack = _I32
    for key, decode in columns:
        if pos + 4 > end:
            raise DecodeError(f"{MALFORMED_DATA_ROW}: truncated in a length word")
        (length,) = unpack(buf, pos)
        pos += 4
        if length < 0:
            if length != -1:
                raise DecodeError(f"{MALFORMED_DATA_ROW}: value length {length}")
            out[key] = None
            continue
        nxt = pos + length
        if nxt > end:
            raise DecodeError(f"{MALFORMED_DATA_ROW}: a value runs past the message end")
        out[key] = decode(buf[pos:nxt])
        pos = nxt
    if pos != end:
        raise DecodeError(f"{MALFORMED_DATA_ROW}: {end - pos} unexpected trailing bytes")
    return out


def _raw(value: bytes) -> bytes:
    return value


_RAW_COLUMNS: dict[int, tuple[tuple[int, Callable[[bytes], bytes]], ...]] = {}


def data_row_values(buf: bytes, start: int, end: int) -> tuple[bytes | None, ...]:
    """Cut a DataRow body into its raw column values (``None`` for NULL), with :func:`cut_data_row`."""
    count = _U16(buf, start)[0] if end - start >= 2 else 0
    columns = _RAW_COLUMNS.get(count)
    if columns is None:
        columns = tuple((i, _raw) for i in range(count))
        if count <= 64:
            _RAW_COLUMNS[count] = columns
    return tuple(cut_data_row(buf, start, end, columns).values())


def _data_row(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    return m.DataRow(data_row_values(buf, start, end))


def _error_fields(buf: bytes, start: int, end: int, enc: str) -> tuple[tuple[str, str], ...]:
    r = _Reader(buf, start, end, enc)
    out: list[tuple[str, str]] = []
    while True:
        code = r.int8()
        if code == 0:
            break
        out.append((chr(code), r.cstring()))
    r.done()
    return tuple(out)


def _error_response(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    return m.ErrorResponse(_error_fields(buf, start, end, enc))


def _notice_response(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    return m.NoticeResponse(_error_fields(buf, start, end, enc))


def _function_call_response(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    r = _Reader(buf, start, end, enc)
    value = r.value()
    r.done()
    return m.FunctionCallResponse(value)


def _negotiate_protocol_version(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    r = _Reader(buf, start, end, enc)
    # Documented as the newest minor version, but PostgreSQL sends the whole
    # version code (PG_PROTOCOL(3, n) = 3 << 16 | n): keep the minor part.
    newest = r.int32() & 0xFFFF
    n = r.int32()
    if n < 0:
        raise DecodeError(f"negative option count {n}")
    opts = tuple(r.cstring() for _ in range(n))
    r.done()
    return m.NegotiateProtocolVersion(newest, opts)


def _notification_response(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    r = _Reader(buf, start, end, enc)
    pid = r.int32()
    channel = r.cstring()
    payload = r.cstring()
    r.done()
    return m.NotificationResponse(pid, channel, payload)


def _parameter_description(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    r = _Reader(buf, start, end, enc)
    oids = r.int32_array(unsigned=True)
    r.done()
    return m.ParameterDescription(oids)


def _parameter_status(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    # A dozen per new connection: two finds instead of the generic _Reader
    # (about a third of the cost), with _Reader's checks and error texts.
    nul = buf.find(0, start, end)
    if nul < 0:
        raise DecodeError(f"unterminated string at body offset {start}")
    pos = nul + 1
    value_end = buf.find(0, pos, end)
    if value_end < 0:
        raise DecodeError(f"unterminated string at body offset {pos}")
    if value_end + 1 != end:
        raise DecodeError(f"{end - value_end - 1} unexpected trailing bytes")
    return m.ParameterStatus(
        buf[start:nul].decode(enc, "backslashreplace"), buf[pos:value_end].decode(enc, "backslashreplace")
    )


_READY = {ord(status): m.ReadyForQuery(status) for status in "ITE"}


def _ready_for_query(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    # Immutable, so the three possible messages are shared rather than rebuilt.
    if end - start != 1:
        raise DecodeError(f"ReadyForQuery body of {end - start} bytes, expected 1")
    ready = _READY.get(buf[start])
    if ready is None:
        raise DecodeError(f"transaction status {chr(buf[start])!r}")
    return ready


def _row_description(buf: bytes, start: int, end: int, enc: str) -> m.Message:
    if end - start < 2:
        raise DecodeError("RowDescription without a field count")
    (n,) = _U16(buf, start)
    pos = start + 2
    out: list[m.FieldDescription] = []
    for _ in range(n):
        try:
            nul = buf.index(0, pos, end)
        except ValueError:
            raise DecodeError("unterminated column name") from None
        name = buf[pos:nul].decode(enc, "backslashreplace")
        pos = nul + 1
        if pos + 18 > end:
            raise DecodeError("RowDescription truncated")
        table, column, type_oid, size, modifier, fmt = _FIELD(buf, pos)
        pos += 18
        out.append(m.FieldDescription(name, table, column, type_oid, size, modifier, fmt))
    if pos != end:
        raise DecodeError(f"{end - pos} unexpected trailing bytes in RowDescription")
    return m.RowDescription(tuple(out))


BACKEND: dict[int, tuple[str, Decoder]] = {
    ord("R"): ("Authentication", _authentication),
    ord("K"): ("BackendKeyData", _backend_key_data),
    ord("2"): ("BindComplete", _singleton(m.BindComplete)),
    ord("3"): ("CloseComplete", _singleton(m.CloseComplete)),
    ord("C"): ("CommandComplete", _command_complete),
    ord("d"): ("CopyData", _copy_data),
    ord("c"): ("CopyDone", _copy_done),
    ord("G"): ("CopyInResponse", _copy_response(m.CopyInResponse)),
    ord("H"): ("CopyOutResponse", _copy_response(m.CopyOutResponse)),
    ord("W"): ("CopyBothResponse", _copy_response(m.CopyBothResponse)),
    ord("D"): ("DataRow", _data_row),
    ord("I"): ("EmptyQueryResponse", _singleton(m.EmptyQueryResponse)),
    ord("E"): ("ErrorResponse", _error_response),
    ord("V"): ("FunctionCallResponse", _function_call_response),
    ord("v"): ("NegotiateProtocolVersion", _negotiate_protocol_version),
    ord("n"): ("NoData", _singleton(m.NoData)),
    ord("N"): ("NoticeResponse", _notice_response),
    ord("A"): ("NotificationResponse", _notification_response),
    ord("t"): ("ParameterDescription", _parameter_description),
    ord("S"): ("ParameterStatus", _parameter_status),
    ord("1"): ("ParseComplete", _singleton(m.ParseComplete)),
    ord("s"): ("PortalSuspended", _singleton(m.PortalSuspended)),
    ord("Z"): ("ReadyForQuery", _ready_for_query),
    ord("T"): ("RowDescription", _row_description),
}


def type_name(frontend: bool, tag: int) -> str:
    """Documented message type name for a tag, or ``Unknown``."""
    entry = (FRONTEND if frontend else BACKEND).get(tag)
    return entry[0] if entry else "Unknown"


def decode_tagged(
    frontend: bool, tag: int, buf: bytes, start: int, end: int, encoding: str = "utf-8", auth_state: str | None = None
) -> m.Message:
    """Decode one tagged message body; never raises on bad input.

    Args:
        frontend: direction of the message.
        tag: the type byte.
        buf, start, end: the body is ``buf[start:end]``.
        encoding: Python codec of the session's client_encoding.
        auth_state: for frontend ``p`` messages, the :class:`AuthState` set by
            the last Authentication request (``None`` means PasswordMessage).
    """
    if frontend:
        entry = FRONTEND.get(tag)
        if entry is not None and tag == 0x70 and auth_state is not None:  # 'p'
            decoder = PASSWORD_FAMILY.get(auth_state, _password)
            entry = (decoder.__name__, decoder)
    else:
        entry = BACKEND.get(tag)
    if entry is None:
        return m.Unknown(chr(tag), bytes(buf[start:end]))
    name, decoder = entry
    try:
        return decoder(buf, start, end, encoding)
    except UNREADABLE_BODY as exc:
        return m.Malformed(chr(tag), name, str(exc), end - start + 4)


def decode_frame(frontend: bool, frame: Frame, encoding: str = "utf-8", auth_state: str | None = None) -> m.Message:
    """Decode any :data:`Frame` the framer produced, pseudo frames included.

    Framing errors are not decoded here: the conversation reports them as
    :class:`Desynchronized` with the framer's error details.
    """
    tag, buf, start, end = frame
    if buf is None:
        if tag == FRAMING_ERROR:
            return m.Desynchronized("frontend" if frontend else "backend", 0, "framing error", b"")
        return m.Oversized(chr(tag), type_name(frontend, tag), end + 4)
    if tag >= 0:
        return decode_tagged(frontend, tag, buf, start, end, encoding, auth_state)
    if tag == UNTAGGED:
        try:
            return decode_startup_packet(buf, start, end, encoding)
        except (DecodeError, struct.error, UnicodeError) as exc:
            return m.Malformed("", "StartupMessage", str(exc), end - start + 4)
    if tag == SINGLE_BYTE:
        return m.SSLResponse(chr(buf[start]))
    if tag == TLS_RECORD:
        return m.EncryptionStarted("direct_tls")
    return m.Unknown("", bytes(buf[start:end]))
