"""The two-direction wire state machine of one PostgreSQL conversation.

It owns both framers and the little protocol state that decides how bytes are
cut and what a tag means ("Message Flow" in the PostgreSQL documentation):

* the startup phase, where the frontend sends untagged packets and an
  SSLRequest/GSSENCRequest is answered by one unframed byte;
* direct TLS (PostgreSQL 17): a first frontend byte 0x16;
* the authentication exchange, which decides what a frontend ``p`` means;
* ``client_encoding``, which decides how text is decoded;
* encryption and desynchronisation, after which nothing is framed.

Feed it bytes with :meth:`Conversation.receive_frontend` and
:meth:`Conversation.receive_backend`; each returns the frames completed, which
:meth:`Conversation.decode` turns into typed messages on demand, so that a
caller which only counts DataRows never pays for decoding them.
"""

from __future__ import annotations

import enum

from pgproxy.protocol import messages as m
from pgproxy.protocol.decoding import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    SSL_REQUEST_CODE,
    AuthState,
    decode_frame,
    decode_startup_packet,
    decode_tagged,
)
from pgproxy.protocol.encodings import python_codec
from pgproxy.protocol.errors import FramingError
from pgproxy.protocol.framing import (
    DEFAULT_MAX_FRAME,
    FRAMING_ERROR,
    SINGLE_BYTE,
    TLS_RECORD,
    UNTAGGED,
    Frame,
    Framer,
    FramingMode,
)

_TAG_AUTH = ord("R")
_TAG_PARAMETER_STATUS = ord("S")
_TAG_BACKEND_KEY = ord("K")
_TAG_READY = ord("Z")
_TAG_ERROR = ord("E")
_STARTUP_WATCH = frozenset((_TAG_AUTH, _TAG_PARAMETER_STATUS, _TAG_BACKEND_KEY, _TAG_READY, _TAG_ERROR))


class Phase(enum.Enum):
    """Where the conversation is, as far as framing is concerned."""

    STARTUP = "startup"
    """Waiting for a startup packet from the frontend."""
    NEGOTIATING = "negotiating"
    """SSLRequest or GSSENCRequest sent; the backend's one-byte answer is due."""
    AUTHENTICATING = "authenticating"
    """StartupMessage sent; authentication and backend start-up under way."""
    READY = "ready"
    """The first ReadyForQuery was seen: normal operation."""
    CANCELLING = "cancelling"
    """The connection carried a CancelRequest; nothing else follows."""
    ENCRYPTED = "encrypted"
    """TLS or GSS encryption started; the bytes are opaque from here on."""
    DESYNCHRONIZED = "desynchronized"
    """A framing error: message boundaries were lost; nothing is decoded."""
    CLOSED = "closed"
    """Terminate was sent or the backend failed the start-up."""


class Conversation:
    """Sans-IO state of both directions of one frontend/backend conversation.

    Args:
        max_frame: bodies longer than this are streamed past and reported as
            :class:`~pgproxy.protocol.messages.Oversized`.

    Attributes:
        phase: current :class:`Phase`.
        encoding: Python codec for text, following ``client_encoding``.
        parameters: the last value of every ParameterStatus seen.
        startup: the StartupMessage, once seen.
        backend_pid: from BackendKeyData.
        auth_state: what a frontend ``p`` message means now.
        error: the framing error that desynchronised the stream, if any.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.frontend = Framer("frontend", FramingMode.STARTUP, max_frame)
        self.backend = Framer("backend", FramingMode.TAGGED, max_frame)
        self.phase = Phase.STARTUP
        self.encoding = "utf-8"
        self.parameters: dict[str, str] = {}
        self.startup: m.StartupMessage | None = None
        self.backend_pid: int | None = None
        self.backend_key: bytes | None = None  # cancellation secret: never logged
        self.auth_state: str | None = None
        self.auth_method: str | None = None
        self.error: FramingError | None = None
        #: How many ParameterStatus for ``client_encoding`` or ``TimeZone`` (the
        #: settings that change how values decode) were followed: a caller that
        #: decodes values compares it with the count it last saw.
        self.value_settings_reported = 0
        #: How many ParameterStatus could not be followed (malformed; the message
        #: is kept for :meth:`decoded_backend`): while it stands still, every
        #: ParameterStatus received was followed.
        self.parameters_malformed = 0
        # Messages decoded for the state above during the last receive_backend
        # call, by frame start (with the frame's buffer): the tracker takes them
        # instead of decoding the same frames again (start-up sends ~15).
        self._decoded: dict[int, tuple[object, m.Message]] = {}
        # The StartupMessage decoded to read client_encoding: (buffer, start, encoding used, message).
        self._decoded_startup: tuple[object, int, str, m.Message] | None = None
        self._negotiating: int = 0  # code of the pending SSL/GSSENC request

    # ----------------------------------------------------------------- feeding

    def receive_frontend(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Frames completed by a chunk the frontend sent."""
        framer = self.frontend
        frames = framer.feed(data)
        if framer.mode is FramingMode.TAGGED:
            if frames and frames[-1][0] == FRAMING_ERROR:
                self._desync(framer)
            return frames
        out: list[Frame] = []
        while frames:
            out.extend(frames)
            for frame in frames:
                self._on_frontend_unit(frame)
            if framer.mode in (FramingMode.HALTED, FramingMode.SINGLE_BYTE) or not framer.buffered:
                break
            frames = framer.feed(b"")
        return out

    def receive_backend(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Frames completed by a chunk the backend sent."""
        framer = self.backend
        frames = framer.feed(data)
        if self._decoded:
            self._decoded = {}
        if self.phase is Phase.READY:
            for frame in frames:
                if frame[0] == _TAG_PARAMETER_STATUS:
                    self._on_parameter_status(frame)
            if frames and frames[-1][0] == FRAMING_ERROR:  # the framer halts after one: always the last
                self._desync(framer)
            return frames
        out: list[Frame] = []
        while frames:
            out.extend(frames)
            for frame in frames:
                tag = frame[0]
                if tag == _TAG_PARAMETER_STATUS:  # a dozen per login: straight to it
                    self._on_parameter_status(frame)
                elif tag in _STARTUP_WATCH or tag < 0:
                    self._on_backend_unit(frame)
            if framer.mode is FramingMode.HALTED or not framer.buffered:
                break
            frames = framer.feed(b"")
        return out

    # ----------------------------------------------------------------- decoding

    def decode(self, frame: Frame, frontend: bool) -> m.Message:
        """Typed message for a frame this conversation produced."""
        tag = frame[0]
        if tag >= 0 and frame[1] is not None:
            return decode_tagged(frontend, tag, frame[1], frame[2], frame[3], self.encoding, self.auth_state)
        if tag == FRAMING_ERROR:
            err = self.error
            if err is None:
                return m.Desynchronized("frontend" if frontend else "backend", 0, "framing error", b"")
            return m.Desynchronized(err.direction, err.offset, err.reason, err.excerpt)
        if tag == SINGLE_BYTE and frame[1] is not None:
            answer = chr(frame[1][frame[2]])
            if self._negotiating == GSSENC_REQUEST_CODE:
                return m.GSSENCResponse(answer)
            return m.SSLResponse(answer)
        return decode_frame(frontend, frame, self.encoding, self.auth_state)

    def decode_frontend(self, frame: Frame) -> m.Message:
        return self.decode(frame, True)

    def decode_backend(self, frame: Frame) -> m.Message:
        return self.decode(frame, False)

    def decoded_backend(self, frame: Frame) -> m.Message | None:
        """The message the last :meth:`receive_backend` already decoded for ``frame`` (to follow the state), if any.

        Start-up's authentication requests and BackendKeyData are decoded
        here to follow the conversation; a caller that wants the message too
        takes it rather than decoding the frame a second time. A well-formed
        ParameterStatus is followed without building a message (a login brings
        a dozen): only a malformed one is kept, for the caller to report.
        """
        entry = self._decoded.get(frame[2])
        if entry is not None and entry[0] is frame[1]:
            return entry[1]
        return None

    def decoded_frontend(self, frame: Frame) -> m.Message | None:
        """The StartupMessage the conversation already decoded for ``frame`` (to read its encoding), if any.

        Only when decoding it again would give the same message: the caller
        decodes with the encoding in force now, which the StartupMessage's own
        ``client_encoding`` may have changed.
        """
        entry = self._decoded_startup
        if entry is not None and entry[0] is frame[1] and entry[1] == frame[2] and entry[2] == self.encoding:
            return entry[3]
        return None

    def assume_established(self) -> None:
        """Start mid-conversation (a capture that missed the start-up): both sides tagged."""
        self.phase = Phase.READY
        self.frontend.mode = FramingMode.TAGGED
        self.backend.mode = FramingMode.TAGGED

    def tls_terminated(self) -> None:
        """A proxy in the middle accepted the frontend's TLS itself: inside it, start-up begins afresh.

        The SSLRequest seen last is not answered on this stream (the answer
        went into the TLS session's set-up), and the first plaintext
        packet inside TLS is a startup packet again.
        """
        self.phase = Phase.STARTUP
        self._negotiating = 0
        self.frontend.mode = FramingMode.STARTUP
        self.backend.mode = FramingMode.TAGGED

    @property
    def decoding(self) -> bool:
        """False once the conversation is encrypted or desynchronised."""
        return self.phase not in (Phase.ENCRYPTED, Phase.DESYNCHRONIZED)

    # ----------------------------------------------------------------- state

    def _on_frontend_unit(self, frame: Frame) -> None:
        tag, buf, start, end = frame
        if tag == TLS_RECORD:
            self._encrypted()
            return
        if tag == FRAMING_ERROR:
            self._desync(self.frontend)
            return
        if tag != UNTAGGED or buf is None:
            return
        code = int.from_bytes(buf[start : start + 4], "big")
        if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
            self.phase = Phase.NEGOTIATING
            self._negotiating = code
            self.backend.mode = FramingMode.SINGLE_BYTE
        elif code == CANCEL_REQUEST_CODE:
            self.phase = Phase.CANCELLING
            self.frontend.mode = FramingMode.HALTED
        else:
            msg = decode_startup_packet(buf, start, end) if code >> 16 == 3 else None
            if isinstance(msg, m.StartupMessage):
                self._decoded_startup = (buf, start, "utf-8", msg)
                self.startup = msg
                encoding = msg.params.get("client_encoding")
                if encoding:
                    self.encoding = python_codec(encoding)
            self.phase = Phase.AUTHENTICATING
            self.frontend.mode = FramingMode.TAGGED
            self.backend.mode = FramingMode.TAGGED

    def _on_backend_unit(self, frame: Frame) -> None:
        tag, buf, start, end = frame
        if tag == FRAMING_ERROR:
            self._desync(self.backend)
        elif tag == SINGLE_BYTE and buf is not None:
            answer = buf[start]
            if answer in (0x53, 0x47):  # 'S' TLS accepted, 'G' GSS accepted
                self._encrypted()
            else:
                self.phase = Phase.STARTUP
                self.backend.mode = FramingMode.TAGGED
        elif buf is None:
            return
        elif tag == _TAG_AUTH:
            msg = decode_tagged(False, tag, buf, start, end, self.encoding)
            self._decoded[start] = (buf, msg)
            self._on_authentication(msg)
        elif tag == _TAG_PARAMETER_STATUS:
            self._on_parameter_status(frame)
        elif tag == _TAG_BACKEND_KEY:
            key = decode_tagged(False, tag, buf, start, end, self.encoding)
            self._decoded[start] = (buf, key)
            if isinstance(key, m.BackendKeyData):
                self.backend_pid = key.process_id
                self.backend_key = key.secret_key
        elif tag == _TAG_READY:
            self.phase = Phase.READY
            self.auth_state = None
        elif tag == _TAG_ERROR and self.phase in (Phase.AUTHENTICATING, Phase.NEGOTIATING, Phase.STARTUP):
            # A start-up failure (bad password, unknown database...) ends the session.
            self.phase = Phase.CLOSED

    def _on_authentication(self, msg: m.Message) -> None:
        if isinstance(msg, (m.AuthenticationCleartextPassword, m.AuthenticationMD5Password)):
            self.auth_state = AuthState.PASSWORD
        elif isinstance(msg, m.AuthenticationSASL):
            self.auth_state = AuthState.SASL_INITIAL
        elif isinstance(msg, m.AuthenticationSASLContinue):
            self.auth_state = AuthState.SASL_CONTINUE
        elif isinstance(msg, (m.AuthenticationGSS, m.AuthenticationSSPI, m.AuthenticationGSSContinue)):
            self.auth_state = AuthState.GSS
        elif isinstance(msg, m.AuthenticationOk):
            self.auth_state = None
        if isinstance(msg, m.Authentication) and not isinstance(
            msg,
            (m.AuthenticationOk, m.AuthenticationSASLContinue, m.AuthenticationSASLFinal, m.AuthenticationGSSContinue),
        ):
            self.auth_method = msg.method
        elif isinstance(msg, m.AuthenticationOk) and self.auth_method is None:
            self.auth_method = "trust"

    def _on_parameter_status(self, frame: Frame) -> None:
        tag, buf, start, end = frame
        if buf is None:
            return
        # "name NUL value NUL" is read with one split, without a message object
        # (a third of the decoder's cost); anything else is decoded the general
        # way, which reports it as Malformed.
        parts = buf[start : end - 1].split(b"\x00") if end > start and buf[end - 1] == 0 else None
        if parts is not None and len(parts) == 2:
            encoding = self.encoding
            name = parts[0].decode(encoding, "backslashreplace")
            value = parts[1].decode(encoding, "backslashreplace")
        else:
            msg = decode_tagged(False, tag, buf, start, end, self.encoding)
            self._decoded[start] = (buf, msg)
            if not isinstance(msg, m.ParameterStatus):
                self.parameters_malformed += 1
                return
            name, value = msg.name, msg.value
        self.parameters[name] = value
        if name == "client_encoding":
            self.encoding = python_codec(value)
            self.value_settings_reported += 1
        elif name == "TimeZone":
            self.value_settings_reported += 1

    def _encrypted(self) -> None:
        self.phase = Phase.ENCRYPTED
        self.frontend.mode = FramingMode.HALTED
        self.backend.mode = FramingMode.HALTED

    def _desync(self, framer: Framer) -> None:
        self.phase = Phase.DESYNCHRONIZED
        if self.error is None:
            self.error = framer.error
        self.frontend.mode = FramingMode.HALTED
        self.backend.mode = FramingMode.HALTED
