"""Typed, immutable PostgreSQL protocol messages.

Class and field names follow the PostgreSQL documentation, chapter "Frontend/
Backend Protocol", section "Message Formats". Fields that carry credentials are
declared with ``secret()`` so that every renderer can find and withhold them
without a list of its own (see :func:`secret_fields`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar


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
    """Base of every decoded message.

    ``direction`` is a class attribute: ``"frontend"``, ``"backend"`` or
    ``"both"`` for messages that travel either way (CopyData, CopyDone) and
    pseudo-messages the conversation itself produces.
    """

    direction: ClassVar[str] = "both"

    @property
    def type(self) -> str:
        """The message type name, as in the PostgreSQL documentation."""
        return type(self).__name__


# --------------------------------------------------------------------------- startup phase (frontend)


@dataclass(frozen=True, slots=True)
class StartupMessage(Message):
    """Untagged packet that opens a session: protocol version and parameters."""

    direction: ClassVar[str] = "frontend"
    protocol_major: int
    protocol_minor: int
    parameters: tuple[tuple[str, str], ...]

    @property
    def params(self) -> dict[str, str]:
        return dict(self.parameters)


@dataclass(frozen=True, slots=True)
class SSLRequest(Message):
    direction: ClassVar[str] = "frontend"


@dataclass(frozen=True, slots=True)
class GSSENCRequest(Message):
    direction: ClassVar[str] = "frontend"


@dataclass(frozen=True, slots=True)
class CancelRequest(Message):
    """Sent on a fresh connection; the secret key is 4 bytes (3.0) or up to 256 (3.2)."""

    direction: ClassVar[str] = "frontend"
    process_id: int
    secret_key: bytes = secret()


@dataclass(frozen=True, slots=True)
class UnknownStartupPacket(Message):
    """An untagged packet whose code is none of the documented ones."""

    direction: ClassVar[str] = "frontend"
    code: int
    payload: bytes


# --------------------------------------------------------------------------- frontend, tagged


@dataclass(frozen=True, slots=True)
class Bind(Message):
    direction: ClassVar[str] = "frontend"
    portal: str
    statement: str
    parameter_formats: tuple[int, ...]
    parameters: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]

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
    direction: ClassVar[str] = "frontend"
    kind: str  # "S" prepared statement, "P" portal
    name: str


@dataclass(frozen=True, slots=True)
class CopyData(Message):
    data: bytes


@dataclass(frozen=True, slots=True)
class CopyDone(Message):
    pass


@dataclass(frozen=True, slots=True)
class CopyFail(Message):
    direction: ClassVar[str] = "frontend"
    message: str


@dataclass(frozen=True, slots=True)
class Describe(Message):
    direction: ClassVar[str] = "frontend"
    kind: str  # "S" prepared statement, "P" portal
    name: str


@dataclass(frozen=True, slots=True)
class Execute(Message):
    direction: ClassVar[str] = "frontend"
    portal: str
    max_rows: int  # 0 = no limit


@dataclass(frozen=True, slots=True)
class Flush(Message):
    direction: ClassVar[str] = "frontend"


@dataclass(frozen=True, slots=True)
class FunctionCall(Message):
    direction: ClassVar[str] = "frontend"
    function_oid: int
    argument_formats: tuple[int, ...]
    arguments: tuple[bytes | None, ...]
    result_format: int

    def argument_format(self, index: int) -> int:
        """Format code of argument ``index`` (0 text, 1 binary), same rules as Bind."""
        return format_code(self.argument_formats, index)


@dataclass(frozen=True, slots=True)
class Parse(Message):
    direction: ClassVar[str] = "frontend"
    statement: str
    query: str
    parameter_types: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Query(Message):
    direction: ClassVar[str] = "frontend"
    query: str


@dataclass(frozen=True, slots=True)
class Sync(Message):
    direction: ClassVar[str] = "frontend"


@dataclass(frozen=True, slots=True)
class Terminate(Message):
    direction: ClassVar[str] = "frontend"


@dataclass(frozen=True, slots=True)
class PasswordMessage(Message):
    """Cleartext password, or ``md5`` + hex digest; never logged."""

    direction: ClassVar[str] = "frontend"
    password: str = secret()


@dataclass(frozen=True, slots=True)
class SASLInitialResponse(Message):
    direction: ClassVar[str] = "frontend"
    mechanism: str
    data: bytes | None = secret()


@dataclass(frozen=True, slots=True)
class SASLResponse(Message):
    direction: ClassVar[str] = "frontend"
    data: bytes = secret()


@dataclass(frozen=True, slots=True)
class GSSResponse(Message):
    direction: ClassVar[str] = "frontend"
    data: bytes = secret()


# --------------------------------------------------------------------------- backend


@dataclass(frozen=True, slots=True)
class SSLResponse(Message):
    """The single unframed byte answering SSLRequest: ``S`` accept, ``N`` refuse."""

    direction: ClassVar[str] = "backend"
    answer: str


@dataclass(frozen=True, slots=True)
class GSSENCResponse(Message):
    """The single unframed byte answering GSSENCRequest: ``G`` accept, ``N`` refuse."""

    direction: ClassVar[str] = "backend"
    answer: str


@dataclass(frozen=True, slots=True)
class Authentication(Message):
    """Base of the AuthenticationXxx family (tag ``R``)."""

    direction: ClassVar[str] = "backend"
    method: ClassVar[str] = "unknown"


@dataclass(frozen=True, slots=True)
class AuthenticationOk(Authentication):
    method: ClassVar[str] = "ok"


@dataclass(frozen=True, slots=True)
class AuthenticationKerberosV5(Authentication):
    method: ClassVar[str] = "kerberos_v5"


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword(Authentication):
    method: ClassVar[str] = "cleartext_password"


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password(Authentication):
    method: ClassVar[str] = "md5"
    salt: bytes = secret()


@dataclass(frozen=True, slots=True)
class AuthenticationGSS(Authentication):
    method: ClassVar[str] = "gss"


@dataclass(frozen=True, slots=True)
class AuthenticationGSSContinue(Authentication):
    method: ClassVar[str] = "gss"
    data: bytes = secret()


@dataclass(frozen=True, slots=True)
class AuthenticationSSPI(Authentication):
    method: ClassVar[str] = "sspi"


@dataclass(frozen=True, slots=True)
class AuthenticationSASL(Authentication):
    method: ClassVar[str] = "sasl"
    mechanisms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue(Authentication):
    method: ClassVar[str] = "sasl"
    data: bytes = secret()


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal(Authentication):
    method: ClassVar[str] = "sasl"
    data: bytes = secret()


@dataclass(frozen=True, slots=True)
class AuthenticationUnknown(Authentication):
    code: int
    data: bytes = secret()


@dataclass(frozen=True, slots=True)
class BackendKeyData(Message):
    """Cancellation key: 4 bytes under protocol 3.0, up to 256 under 3.2."""

    direction: ClassVar[str] = "backend"
    process_id: int
    secret_key: bytes = secret()


@dataclass(frozen=True, slots=True)
class BindComplete(Message):
    direction: ClassVar[str] = "backend"


@dataclass(frozen=True, slots=True)
class CloseComplete(Message):
    direction: ClassVar[str] = "backend"


@dataclass(frozen=True, slots=True)
class CommandComplete(Message):
    """Completion tag, split: ``INSERT 0 5`` is command ``INSERT`` with 5 rows."""

    direction: ClassVar[str] = "backend"
    tag: str
    command: str
    rows: int | None


@dataclass(frozen=True, slots=True)
class CopyInResponse(Message):
    direction: ClassVar[str] = "backend"
    format: int  # 0 textual, 1 binary
    column_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyOutResponse(Message):
    direction: ClassVar[str] = "backend"
    format: int
    column_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyBothResponse(Message):
    direction: ClassVar[str] = "backend"
    format: int
    column_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DataRow(Message):
    """One result row: raw column values (``None`` for SQL NULL), undecoded."""

    direction: ClassVar[str] = "backend"
    values: tuple[bytes | None, ...]


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(Message):
    direction: ClassVar[str] = "backend"


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

    direction: ClassVar[str] = "backend"
    fields: tuple[tuple[str, str], ...]

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


@dataclass(frozen=True, slots=True)
class ErrorResponse(_ErrorOrNotice):
    pass


@dataclass(frozen=True, slots=True)
class NoticeResponse(_ErrorOrNotice):
    pass


@dataclass(frozen=True, slots=True)
class FunctionCallResponse(Message):
    direction: ClassVar[str] = "backend"
    value: bytes | None


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion(Message):
    direction: ClassVar[str] = "backend"
    newest_minor: int
    unrecognized_options: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NoData(Message):
    direction: ClassVar[str] = "backend"


@dataclass(frozen=True, slots=True)
class NotificationResponse(Message):
    direction: ClassVar[str] = "backend"
    process_id: int
    channel: str
    payload: str


@dataclass(frozen=True, slots=True)
class ParameterDescription(Message):
    direction: ClassVar[str] = "backend"
    type_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ParameterStatus(Message):
    direction: ClassVar[str] = "backend"
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ParseComplete(Message):
    direction: ClassVar[str] = "backend"


@dataclass(frozen=True, slots=True)
class PortalSuspended(Message):
    direction: ClassVar[str] = "backend"


@dataclass(frozen=True, slots=True)
class ReadyForQuery(Message):
    """``I`` idle, ``T`` in a transaction block, ``E`` in a failed transaction."""

    direction: ClassVar[str] = "backend"
    status: str


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


@dataclass(frozen=True, slots=True)
class RowDescription(Message):
    direction: ClassVar[str] = "backend"
    fields: tuple[FieldDescription, ...]


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
