"""Typed, immutable PostgreSQL protocol messages.

Class and field names follow the PostgreSQL documentation, chapter "Frontend/
Backend Protocol", section "Message Formats". Fields that carry credentials are
declared with ``secret()`` so that every renderer can find and withhold them
without a list of its own (see :func:`secret_fields`).

The classes decoded per statement or per row, and at every start-up, write
their ``__init__`` out (the same ``object.__setattr__`` per field that
``dataclass(frozen=True)`` generates, so they stay frozen): the compiled build
(mypyc) runs a written-out ``__init__`` natively, where the generated one is
interpreted Python (constructing a Bind: 2.4 -> 0.2 µs compiled; the same in
pure Python). tests/test_conversation.py holds every class's ``__init__`` to its
fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Final


def secret(default: Any = dataclasses.MISSING) -> Any:
    """Declare a field that must never be logged (passwords, SASL payloads, keys)."""
    if default is dataclasses.MISSING:
        return field(metadata={"secret": True}, repr=False)
    return field(default=default, metadata={"secret": True}, repr=False)


_SECRET_FIELDS: dict[type, frozenset[str]] = {}


def secret_fields(cls: type) -> frozenset[str]:
    """Names of the fields of a message class declared with :func:`secret` (memoised)."""
    found = _SECRET_FIELDS.get(cls)
    if found is None:
        found = frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("secret"))
        _SECRET_FIELDS[cls] = found
    return found


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every decoded message."""

    @property
    def type(self) -> str:
        """The message type name, as in the PostgreSQL documentation."""
        return type(self).__name__

    @property
    def direction(self) -> str:
        """Who sends it: ``"frontend"``, ``"backend"``, or ``"both"`` for messages
        that travel either way (CopyData, CopyDone) and pseudo-messages the
        conversation itself produces (see :data:`DIRECTIONS`)."""
        return DIRECTIONS.get(type(self), "both")


# --------------------------------------------------------------------------- startup phase (frontend)


@dataclass(frozen=True, slots=True)
class StartupMessage(Message):
    """Untagged packet that opens a session: protocol version and parameters."""

    protocol_major: int
    protocol_minor: int
    parameters: tuple[tuple[str, str], ...]

    def __init__(self, protocol_major: int, protocol_minor: int, parameters: tuple[tuple[str, str], ...]) -> None:
        object.__setattr__(self, "protocol_major", protocol_major)
        object.__setattr__(self, "protocol_minor", protocol_minor)
        object.__setattr__(self, "parameters", parameters)

    @property
    def params(self) -> dict[str, str]:
        return dict(self.parameters)


@dataclass(frozen=True, slots=True)
class SSLRequest(Message):
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest(Message):
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest(Message):
    """Sent on a fresh connection; the secret key is 4 bytes (3.0) or up to 256 (3.2)."""

    process_id: int
    secret_key: bytes = secret()


@dataclass(frozen=True, slots=True)
class UnknownStartupPacket(Message):
    """An untagged packet whose code is none of the documented ones."""

    code: int
    payload: bytes


# --------------------------------------------------------------------------- frontend, tagged


@dataclass(frozen=True, slots=True)
class Bind(Message):
    portal: str
    statement: str
    parameter_formats: tuple[int, ...]
    parameters: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]

    def __init__(
        self,
        portal: str,
        statement: str,
        parameter_formats: tuple[int, ...],
        parameters: tuple[bytes | None, ...],
        result_formats: tuple[int, ...],
    ) -> None:
        object.__setattr__(self, "portal", portal)
        object.__setattr__(self, "statement", statement)
        object.__setattr__(self, "parameter_formats", parameter_formats)
        object.__setattr__(self, "parameters", parameters)
        object.__setattr__(self, "result_formats", result_formats)

    def parameter_format(self, index: int) -> int:
        """Format code of parameter ``index`` (0 text, 1 binary) per the Bind rules."""
        return format_code(self.parameter_formats, index)

    def result_format(self, index: int) -> int:
        """Format code of result column ``index`` per the Bind rules."""
        return format_code(self.result_formats, index)


def format_code(codes: tuple[int, ...], index: int) -> int:
    """Format code of item ``index`` under Bind's rules ("Message Formats", Bind).

    Zero codes mean all text, one code applies to all, else one per item.
    """
    if not codes:
        return 0
    if len(codes) == 1:
        return codes[0]
    return codes[index] if index < len(codes) else 0


@dataclass(frozen=True, slots=True)
class Close(Message):
    kind: str  # "S" prepared statement, "P" portal
    name: str

    def __init__(self, kind: str, name: str) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "name", name)


@dataclass(frozen=True, slots=True)
class CopyData(Message):
    data: bytes

    def __init__(self, data: bytes) -> None:
        object.__setattr__(self, "data", data)


@dataclass(frozen=True, slots=True)
class CopyDone(Message):
    pass


@dataclass(frozen=True, slots=True)
class CopyFail(Message):
    message: str

    def __init__(self, message: str) -> None:
        object.__setattr__(self, "message", message)


@dataclass(frozen=True, slots=True)
class Describe(Message):
    kind: str  # "S" prepared statement, "P" portal
    name: str

    def __init__(self, kind: str, name: str) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "name", name)


@dataclass(frozen=True, slots=True)
class Execute(Message):
    portal: str
    max_rows: int  # 0 = no limit

    def __init__(self, portal: str, max_rows: int) -> None:
        object.__setattr__(self, "portal", portal)
        object.__setattr__(self, "max_rows", max_rows)


@dataclass(frozen=True, slots=True)
class Flush(Message):
    pass


@dataclass(frozen=True, slots=True)
class FunctionCall(Message):
    function_oid: int
    argument_formats: tuple[int, ...]
    arguments: tuple[bytes | None, ...]
    result_format: int

    def __init__(
        self,
        function_oid: int,
        argument_formats: tuple[int, ...],
        arguments: tuple[bytes | None, ...],
        result_format: int,
    ) -> None:
        object.__setattr__(self, "function_oid", function_oid)
        object.__setattr__(self, "argument_formats", argument_formats)
        object.__setattr__(self, "arguments", arguments)
        object.__setattr__(self, "result_format", result_format)

    def argument_format(self, index: int) -> int:
        """Format code of argument ``index`` (0 text, 1 binary), same rules as Bind."""
        return format_code(self.argument_formats, index)


@dataclass(frozen=True, slots=True)
class Parse(Message):
    statement: str
    query: str
    parameter_types: tuple[int, ...]

    def __init__(self, statement: str, query: str, parameter_types: tuple[int, ...]) -> None:
        object.__setattr__(self, "statement", statement)
        object.__setattr__(self, "query", query)
        object.__setattr__(self, "parameter_types", parameter_types)


@dataclass(frozen=True, slots=True)
class Query(Message):
    query: str

    def __init__(self, query: str) -> None:
        object.__setattr__(self, "query", query)


@dataclass(frozen=True, slots=True)
class Sync(Message):
    pass


@dataclass(frozen=True, slots=True)
class Terminate(Message):
    pass


@dataclass(frozen=True, slots=True)
class PasswordMessage(Message):
    """Cleartext password, or ``md5`` + hex digest; never logged."""

    password: str = secret()


@dataclass(frozen=True, slots=True)
class SASLInitialResponse(Message):
    mechanism: str
    data: bytes | None = secret()


@dataclass(frozen=True, slots=True)
class SASLResponse(Message):
    data: bytes = secret()


@dataclass(frozen=True, slots=True)
class GSSResponse(Message):
    data: bytes = secret()


# --------------------------------------------------------------------------- backend


@dataclass(frozen=True, slots=True)
class SSLResponse(Message):
    """The single unframed byte answering SSLRequest: ``S`` accept, ``N`` refuse."""

    answer: str


@dataclass(frozen=True, slots=True)
class GSSENCResponse(Message):
    """The single unframed byte answering GSSENCRequest: ``G`` accept, ``N`` refuse."""

    answer: str


@dataclass(frozen=True, slots=True)
class Authentication(Message):
    """Base of the AuthenticationXxx family (tag ``R``)."""

    @property
    def method(self) -> str:
        """The authentication method it names (see :data:`AUTHENTICATION_METHODS`)."""
        return AUTHENTICATION_METHODS.get(type(self), "unknown")


@dataclass(frozen=True, slots=True)
class AuthenticationOk(Authentication):
    pass


@dataclass(frozen=True, slots=True)
class AuthenticationKerberosV5(Authentication):
    pass


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword(Authentication):
    pass


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password(Authentication):
    salt: bytes = secret()


@dataclass(frozen=True, slots=True)
class AuthenticationGSS(Authentication):
    pass


@dataclass(frozen=True, slots=True)
class AuthenticationGSSContinue(Authentication):
    data: bytes = secret()


@dataclass(frozen=True, slots=True)
class AuthenticationSSPI(Authentication):
    pass


@dataclass(frozen=True, slots=True)
class AuthenticationSASL(Authentication):
    mechanisms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue(Authentication):
    data: bytes = secret()


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal(Authentication):
    data: bytes = secret()


@dataclass(frozen=True, slots=True)
class AuthenticationUnknown(Authentication):
    code: int
    data: bytes = secret()


@dataclass(frozen=True, slots=True)
class BackendKeyData(Message):
    """Cancellation key: 4 bytes under protocol 3.0, up to 256 under 3.2."""

    process_id: int
    secret_key: bytes = secret()

    def __init__(self, process_id: int, secret_key: bytes) -> None:
        object.__setattr__(self, "process_id", process_id)
        object.__setattr__(self, "secret_key", secret_key)


@dataclass(frozen=True, slots=True)
class BindComplete(Message):
    pass


@dataclass(frozen=True, slots=True)
class CloseComplete(Message):
    pass


@dataclass(frozen=True, slots=True)
class CommandComplete(Message):
    """Completion tag, split: ``INSERT 0 5`` is command ``INSERT`` with 5 rows."""

    tag: str
    command: str
    rows: int | None

    def __init__(self, tag: str, command: str, rows: int | None) -> None:
        object.__setattr__(self, "tag", tag)
        object.__setattr__(self, "command", command)
        object.__setattr__(self, "rows", rows)


@dataclass(frozen=True, slots=True)
class CopyInResponse(Message):
    format: int  # 0 textual, 1 binary
    column_formats: tuple[int, ...]

    def __init__(self, format: int, column_formats: tuple[int, ...]) -> None:
        object.__setattr__(self, "format", format)
        object.__setattr__(self, "column_formats", column_formats)


@dataclass(frozen=True, slots=True)
class CopyOutResponse(Message):
    format: int
    column_formats: tuple[int, ...]

    def __init__(self, format: int, column_formats: tuple[int, ...]) -> None:
        object.__setattr__(self, "format", format)
        object.__setattr__(self, "column_formats", column_formats)


@dataclass(frozen=True, slots=True)
class CopyBothResponse(Message):
    format: int
    column_formats: tuple[int, ...]

    def __init__(self, format: int, column_formats: tuple[int, ...]) -> None:
        object.__setattr__(self, "format", format)
        object.__setattr__(self, "column_formats", column_formats)


@dataclass(frozen=True, slots=True)
class DataRow(Message):
    """One result row: raw column values (``None`` for SQL NULL), undecoded."""

    values: tuple[bytes | None, ...]

    def __init__(self, values: tuple[bytes | None, ...]) -> None:
        object.__setattr__(self, "values", values)


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(Message):
    pass


#: Field codes of ErrorResponse/NoticeResponse ("Error and Notice Message Fields").
ERROR_FIELD_NAMES: dict[str, str] = {
    "S": "severity_localized",
    "V": "severity",
    "C": "sqlstate",
    "M": "message",
    "D": "detail",
    "H": "hint",
    "P": "position",
    "p": "internal_position",
    "q": "internal_query",
    "W": "where",
    "s": "schema",
    "t": "table",
    "c": "column",
    "d": "data_type",
    "n": "constraint",
    "F": "file",
    "L": "line",
    "R": "routine",
}


@dataclass(frozen=True, slots=True)
class _ErrorOrNotice(Message):
    """Shared shape of ErrorResponse and NoticeResponse: (code, value) pairs."""

    fields: tuple[tuple[str, str], ...]

    def __init__(self, fields: tuple[tuple[str, str], ...]) -> None:
        object.__setattr__(self, "fields", fields)

    def get(self, code: str) -> str | None:
        for c, value in self.fields:
            if c == code:
                return value
        return None

    @property
    def severity(self) -> str:
        """Non-localised severity (``V``, since 9.6), else the localised one."""
        return self.get("V") or self.get("S") or ""

    @property
    def sqlstate(self) -> str:
        return self.get("C") or ""

    @property
    def message(self) -> str:
        return self.get("M") or ""

    def named_fields(self) -> dict[str, str | int]:
        """Every field by its documented name; positions and line as integers."""
        out: dict[str, str | int] = {}
        for code, value in self.fields:
            name = ERROR_FIELD_NAMES.get(code, f"field_{code}")
            if code in ("P", "p", "L") and value.isdigit():
                out[name] = int(value)
            else:
                out[name] = value
        if "severity" not in out and "severity_localized" in out:
            out["severity"] = out["severity_localized"]
        return out


@dataclass(frozen=True, slots=True, init=False)
class ErrorResponse(_ErrorOrNotice):
    pass


@dataclass(frozen=True, slots=True, init=False)
class NoticeResponse(_ErrorOrNotice):
    pass


@dataclass(frozen=True, slots=True)
class FunctionCallResponse(Message):
    value: bytes | None

    def __init__(self, value: bytes | None) -> None:
        object.__setattr__(self, "value", value)


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion(Message):
    newest_minor: int
    unrecognized_options: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NoData(Message):
    pass


@dataclass(frozen=True, slots=True)
class NotificationResponse(Message):
    process_id: int
    channel: str
    payload: str

    def __init__(self, process_id: int, channel: str, payload: str) -> None:
        object.__setattr__(self, "process_id", process_id)
        object.__setattr__(self, "channel", channel)
        object.__setattr__(self, "payload", payload)


@dataclass(frozen=True, slots=True)
class ParameterDescription(Message):
    type_oids: tuple[int, ...]

    def __init__(self, type_oids: tuple[int, ...]) -> None:
        object.__setattr__(self, "type_oids", type_oids)


@dataclass(frozen=True, slots=True)
class ParameterStatus(Message):
    name: str
    value: str

    def __init__(self, name: str, value: str) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "value", value)


@dataclass(frozen=True, slots=True)
class ParseComplete(Message):
    pass


@dataclass(frozen=True, slots=True)
class PortalSuspended(Message):
    pass


@dataclass(frozen=True, slots=True)
class ReadyForQuery(Message):
    """``I`` idle, ``T`` in a transaction block, ``E`` in a failed transaction."""

    status: str

    def __init__(self, status: str) -> None:
        object.__setattr__(self, "status", status)


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One column of a RowDescription."""

    name: str
    table_oid: int
    column_number: int
    type_oid: int
    type_size: int
    type_modifier: int
    format: int

    def __init__(
        self,
        name: str,
        table_oid: int,
        column_number: int,
        type_oid: int,
        type_size: int,
        type_modifier: int,
        format: int,
    ) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "table_oid", table_oid)
        object.__setattr__(self, "column_number", column_number)
        object.__setattr__(self, "type_oid", type_oid)
        object.__setattr__(self, "type_size", type_size)
        object.__setattr__(self, "type_modifier", type_modifier)
        object.__setattr__(self, "format", format)


@dataclass(frozen=True, slots=True)
class RowDescription(Message):
    fields: tuple[FieldDescription, ...]

    def __init__(self, fields: tuple[FieldDescription, ...]) -> None:
        object.__setattr__(self, "fields", fields)


# --------------------------------------------------------------------------- not messages of the protocol


@dataclass(frozen=True, slots=True)
class Unknown(Message):
    """A tag this protocol version does not define; kept, never an exception."""

    tag: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Malformed(Message):
    """A message whose body does not fit its tag's documented layout."""

    tag: str
    expected: str  # the message type the tag stands for
    reason: str
    length: int


@dataclass(frozen=True, slots=True)
class Oversized(Message):
    """A message longer than ``max_frame``: streamed through, recorded header-only."""

    tag: str
    expected: str
    length: int  # declared length, as on the wire (counts the length word)


@dataclass(frozen=True, slots=True)
class EncryptionStarted(Message):
    """From here on the conversation is TLS or GSS encrypted and is not decoded."""

    method: str  # "tls", "gss" or "direct_tls"


@dataclass(frozen=True, slots=True)
class Desynchronized(Message):
    """The stream could not be framed; decoding of this conversation stopped."""

    stream: str  # which direction failed
    offset: int
    reason: str
    excerpt: bytes


# --------------------------------------------------------------------------- what a message type says of itself
#
# Tables keyed by class rather than class attributes: mypyc compiles a
# dataclass's ClassVar into a field (its __init__ then wants an argument for
# it), and a table costs the pure-Python build nothing either (neither is read
# per message on the hot path).

#: Who sends each message type, as "Message Formats" marks it (F or B). A type
#: not listed travels either way: CopyData, CopyDone and the pseudo-messages.
DIRECTIONS: Final[dict[type[Message], str]] = {
    **dict.fromkeys(
        (
            StartupMessage,
            SSLRequest,
            GSSENCRequest,
            CancelRequest,
            UnknownStartupPacket,
            Bind,
            Close,
            CopyFail,
            Describe,
            Execute,
            Flush,
            FunctionCall,
            Parse,
            Query,
            Sync,
            Terminate,
            PasswordMessage,
            SASLInitialResponse,
            SASLResponse,
            GSSResponse,
        ),
        "frontend",
    ),
    **dict.fromkeys(
        (
            SSLResponse,
            GSSENCResponse,
            Authentication,
            AuthenticationOk,
            AuthenticationKerberosV5,
            AuthenticationCleartextPassword,
            AuthenticationMD5Password,
            AuthenticationGSS,
            AuthenticationGSSContinue,
            AuthenticationSSPI,
            AuthenticationSASL,
            AuthenticationSASLContinue,
            AuthenticationSASLFinal,
            AuthenticationUnknown,
            BackendKeyData,
            BindComplete,
            CloseComplete,
            CommandComplete,
            CopyInResponse,
            CopyOutResponse,
            CopyBothResponse,
            DataRow,
            EmptyQueryResponse,
            _ErrorOrNotice,
            ErrorResponse,
            NoticeResponse,
            FunctionCallResponse,
            NegotiateProtocolVersion,
            NoData,
            NotificationResponse,
            ParameterDescription,
            ParameterStatus,
            ParseComplete,
            PortalSuspended,
            ReadyForQuery,
            RowDescription,
        ),
        "backend",
    ),
}

#: The authentication method each AuthenticationXxx message names (the
#: session's ``auth_method``); ``"unknown"`` for a code not listed here.
AUTHENTICATION_METHODS: Final[dict[type[Message], str]] = {
    AuthenticationOk: "ok",
    AuthenticationKerberosV5: "kerberos_v5",
    AuthenticationCleartextPassword: "cleartext_password",
    AuthenticationMD5Password: "md5",
    AuthenticationGSS: "gss",
    AuthenticationGSSContinue: "gss",
    AuthenticationSSPI: "sspi",
    AuthenticationSASL: "sasl",
    AuthenticationSASLContinue: "sasl",
    AuthenticationSASLFinal: "sasl",
}
