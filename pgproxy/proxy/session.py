"""One proxied client session: two asyncio protocols glued back to back.

Forward first: every chunk received from one side is written to the other
side *before* it is shown to the tracker, and a tracker failure only switches
the session to opaque passthrough (shared/STYLE.md section 3). Flow control is
cross-wired: a full write buffer towards one peer pauses reading from the
other, so memory does not grow with the size of a result.

Start-up is the one phase where the proxy acts on its own: it reads the
client's first packet to answer SSLRequest/GSSENCRequest itself (``refuse``
mode), to forward CancelRequest on a fresh upstream connection, and to answer
with an ErrorResponse when the upstream cannot be reached.
"""

from __future__ import annotations

import _socket
import asyncio
import collections
import enum
import socket
import ssl
import struct
import time
from typing import TYPE_CHECKING, Any, Final

from pgproxy.protocol.build import SSL_REQUEST, cancel_request, error_response
from pgproxy.protocol.decoding import CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, SSL_REQUEST_CODE
from pgproxy.protocol.framing import MAX_STARTUP_PACKET
from pgproxy.protocol.sasl import SCRAM_PLUS, NeedMoreData, SaslOfferFilter, sasl_initial_mechanism
from pgproxy.proxy.address import host_port
from pgproxy.proxy.hangup import peer_hung_up
from pgproxy.proxy.observations import emit_records
from pgproxy.proxy.tls import ALPN_POSTGRESQL, HandshakeState, TLSChannel, describe_error
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.session import SessionTracker, Side

if TYPE_CHECKING:
    from pgproxy.proxy.server import ProxyServer
    from pgproxy.tracker.records import Record

_TLS_HANDSHAKE: Final = 0x16
#: Bytes shown to the tracker in one step; a larger chunk is shown in slices. (Final: compiled,
#: a plain module global is a dictionary lookup and an int unboxing on every relayed chunk.)
OBSERVE_SLICE: Final = 4096
#: Bytes waiting for the tracker beyond which reading the session pauses.
OBSERVE_BACKLOG_PAUSE: Final = 1 << 20
_NEGOTIATION_NAMES: Final = {SSL_REQUEST_CODE: "SSLRequest", GSSENC_REQUEST_CODE: "GSSENCRequest"}
_TERMINATE: Final = b"X\x00\x00\x00\x04"  # Terminate ("Message Formats"): a clean goodbye to the server
# The dial's task, made directly and named: the loop's create_task leaves the name to the Task, which
# formats "Task-N" for every connection, and then wraps the call (callgrind, a task created and
# awaited: ~19.7k -> ~17.7k instructions). The name also says what the task is in a task dump.
_TASK: Final = asyncio.Task
_DIAL_TASK_NAME: Final = "pgproxy.dial"
# The clock every relayed chunk reads, held by this module: compiled, ``time.monotonic()`` looked the
# function up on the module at every call (a generic attribute lookup, ~270 instructions, twice a round trip).
_monotonic: Final = time.monotonic


class State(enum.Enum):
    STARTUP = "startup"
    """Reading the client's first packet(s)."""
    CONNECTING = "connecting"
    """Dialling the upstream; client bytes are buffered (uvloop may deliver them even while paused)."""
    RELAY = "relay"
    """Both connections up: bytes flow both ways."""
    CLOSING = "closing"
    CLOSED = "closed"


# A session's state is asked a dozen and a half times per connection: module
# constants, as an enum class's attribute (``State.RELAY``) costs about 800
# instructions more per access under CPython 3.11 (callgrind).
_IN_STARTUP: Final = State.STARTUP
_CONNECTING: Final = State.CONNECTING
_RELAYING: Final = State.RELAY
_CLOSING: Final = State.CLOSING
_CLOSED: Final = State.CLOSED


class Refusal(enum.Enum):
    """Why a client was refused before its session began: ``session.refused``'s ``refusal`` field.

    A closed set, so that the metric labelled by it stays bounded; the
    record's ``reason`` is the sentence for a person. The values are also the
    close reason ``session.ended`` reports.
    """

    TLS_REFUSED = "tls_refused"
    """The client wants TLS (or GSS) encryption that ``tls.client_mode`` does not offer."""
    TLS_PROTOCOL_VIOLATION = "tls_protocol_violation"
    """Bytes after an SSLRequest before pgproxy answered it (CVE-2021-23214)."""
    REPEATED_NEGOTIATION = "repeated_negotiation"
    """A second SSLRequest or GSSENCRequest on one connection (FATAL 0A000)."""
    CHANNEL_BINDING_REFUSED = "channel_binding_refused"
    """SCRAM-SHA-256-PLUS that cannot verify through pgproxy's own certificate (FATAL 28000)."""


class _ReadGate:
    """Idempotent pause/resume of a transport's reading, by reason.

    Reading resumes only when every reason that paused it is gone: the
    upstream connect and a full peer buffer must not resume each other.
    """

    __slots__ = ("reasons", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self.reasons and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self.reasons:
            return
        self.reasons.discard(reason)
        if not self.reasons and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


# What limit_socket_buffers uses, bound once: compiled, each name read on its module at every call
# (seven of them) cost ~1.7k of its ~5.9k instructions per upstream connection (callgrind).
_RAW_SOCKET: Final = _socket.socket
_AF_INET: Final = int(socket.AF_INET)
_SOCK_STREAM: Final = int(socket.SOCK_STREAM)
_SOL_SOCKET: Final = socket.SOL_SOCKET
_SO_SNDBUF: Final = socket.SO_SNDBUF
_SO_RCVBUF: Final = socket.SO_RCVBUF


def limit_socket_buffers(sock: Any, size: int) -> None:
    """Cap the kernel buffers of one of the proxy's sockets (``proxy.socket_buffer``).

    A proxy adds a second socket pair between client and server; with the
    kernel's autotuned buffers (megabytes on loopback) the server can run
    megabytes further ahead of a client that stopped reading than it could
    direct, and a cancelled COPY then finishes before its cancel arrives
    (issue 7). Capped, the path holds about what a direct connection holds.

    ``sock`` is a listening TCP socket (its accepted sockets inherit the
    sizes) or a transport's socket. TCP_NODELAY needs no call of ours: both
    uvloop and asyncio set it on every TCP transport.
    """
    if not size or sock is None:
        return
    # One plain socket object for both options: the socket a uvloop transport
    # hands out builds a new Python socket for every setsockopt call. (try, not
    # contextlib.suppress: that is three Python calls on every upstream connection.)
    try:
        raw = _RAW_SOCKET(_AF_INET, _SOCK_STREAM, 0, sock.fileno())  # family unused by SOL_SOCKET
        try:
            raw.setsockopt(_SOL_SOCKET, _SO_SNDBUF, size)
            raw.setsockopt(_SOL_SOCKET, _SO_RCVBUF, size)
        finally:
            raw.detach()
    except OSError:
        pass


class ClientSession(asyncio.Protocol):
    """The client-facing protocol, owner of the whole session."""

    # What a session rarely changes starts as a class attribute, read through the
    # instance until the session sets its own: CPython 3.11 keeps at most 30 of an
    # instance's attributes in its compact layout, and a session that set 40 in
    # __init__ paid ~4.5k instructions to move them to a dict of their own, and a
    # slower access ever after (pure Python, callgrind). None of these is read
    # more than once or twice on a connection's usual way.
    _cap_buffers = False  # set for Unix sockets: TCP ones inherit the listener's capped sizes
    #: Options from a reload, adopted at the session's next quiet point (see adopt()).
    pending_options: TrackerOptions | None = None
    _backlog_bytes = 0
    _draining = False
    _after_drain: Any = None  # the session's end, waiting for the tracker to catch up
    undecoded_bytes = 0
    _connect_expired = False  # proxy.connect_timeout cancelled the dial
    _cancel_connection = False
    _negotiated: frozenset[int] = frozenset()  # SSLRequest/GSSENCRequest codes answered (refuse mode)
    _direct_tls = False
    _binding_end_to_end = False  # pgproxy presents the server's own certificate
    _guard_ssl_answer = False  # passthrough: the server's answer to the client's SSLRequest is judged
    # Seen while its reads were paused (check_hangup): from then on it is read whatever the server's queue.
    # Safe: after a FIN or a reset no byte follows, so what is read is what the socket's buffer holds.
    _client_hung_up = False

    def __init__(self, server: ProxyServer, cap_buffers: bool = False) -> None:
        self.server = server
        if cap_buffers:
            self._cap_buffers = True
        self.config = server.config
        self.sink = server.sink
        self.session_id = server.new_session_id()
        self.state = _IN_STARTUP
        self.client: asyncio.Transport | None = None
        self.upstream: UpstreamSide | None = None
        self.client_reads = _ReadGate()
        self.upstream_reads = _ReadGate()
        self.pending = bytearray()  # client bytes not yet forwarded (start-up only)
        self.pending_since = 0.0  # when the oldest of them arrived
        self.tracker: SessionTracker | None = None
        self.decoding = True  # False after a tracker failure: opaque passthrough
        # Bytes forwarded but not yet shown to the tracker (see _observe): chunk, offset, direction, arrival.
        self._backlog: collections.deque[tuple[bytes, int, bool, float]] = collections.deque()
        self._ended = False  # session.ended is logged; the server still holds it while its upstream flushes
        self.bytes_from_client = 0
        self.bytes_from_server = 0
        self.close_reason: str | None = None
        self.peer: tuple[str, int] | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._startup_clock = False  # in server.startup_deadlines (proxy.startup_timeout)
        self.client_tls: TLSChannel | None = None  # terminate mode, once the client asked for TLS
        self._sasl_filter: SaslOfferFilter | None = None  # backend bytes during authentication
        self._binding_check = False  # hold the client's SASL choice until it is judged (TLS -> TLS)
        # Relaying in plaintext, decoded, nothing pending but the chunks themselves (see _plain_relay):
        # data_received and upstream_data then ask this one question instead of a dozen.
        self._relay_plain = False
        # While _relay_plain: the two transports' ``write`` and ``is_closing``, bound once. Compiled, a
        # method of a transport (typed Any or asyncio.Transport) was looked up by name per relayed chunk
        # (PyObject_VectorcallMethod); a bound method held here is called as it is.
        self._server_write: Any = None
        self._server_closing: Any = None
        self._client_write: Any = None
        self._client_closing: Any = None
        # Where the relay's chunks wait for the end of the loop's turn (see proxy/observations.py).
        self._observations = server.observations
        self._stamped = True  # while _relay_plain: chunks are stamped with their arrival (see _plain_relay)

    # ------------------------------------------------------------------ client side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass (no typing.cast: a Python call per connection)
        client: asyncio.Transport = transport  # type: ignore[assignment]
        self.client = client
        self.client_reads.transport = client
        server = self.server
        if self._cap_buffers:
            limit_socket_buffers(client.get_extra_info("socket"), self.config.socket_buffer)
        client.set_write_buffer_limits(high=server.write_buffer_high, low=server.write_buffer_low)
        peer = client.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.tracker = SessionTracker(
            self.session_id,
            self.server.tracker_options,
            client=self.peer,
            server=(self.config.upstream_host, self.config.upstream_port),
        )
        self.server.session_opened(self)
        if self.state is _IN_STARTUP and self.config.startup_timeout > 0:
            self.server.startup_deadlines.start(self)
            self._startup_clock = True

    def data_received(self, data: bytes) -> None:
        # The request's timestamp is taken when its bytes reach the proxy,
        # before they are forwarded: PostgreSQL starts its clock later, so a
        # duration measured from here can never be shorter than the server's.
        if self._relay_plain:  # the general way below, for a plaintext relay past start-up
            if self._server_closing():  # the server is gone; the client is being closed
                return
            stamp = _monotonic() if self._stamped else None
            self._server_write(data)
            self.bytes_from_client += len(data)
            if self._backlog or len(data) > OBSERVE_SLICE:
                self._observe(data, True, stamp or _monotonic())
                return
            # Shown to the tracker at the end of the loop's turn, with the turn's other chunks, when turns bring
            # several (proxy/observations.py); else now.
            if not self._observations.add(self, data, True, stamp):
                self._show(data, True, stamp)
            return
        now = _monotonic()
        tls = self.client_tls
        if tls is not None:
            try:
                data = tls.receive(data)
            except ssl.SSLError as exc:
                self._client_tls_failed(describe_error(exc))
                return
            if not data:
                return
        if self.state is _RELAYING:
            upstream = self.upstream
            assert upstream is not None and upstream.transport is not None
            if upstream.transport.is_closing():  # the server is gone; the client is being closed
                return
            if self._binding_check:
                self.pending += data
                self._check_channel_binding()
                self._relay_plain = self._plain_relay()
                return
            upstream.send(data)
            self.bytes_from_client += len(data)
            if self.decoding:
                self._observe_relayed(data, True, now)
            return
        if self.state in (_CLOSING, _CLOSED):
            return
        if not self.pending:
            self.pending_since = now
        self.pending += data
        if self.state is _CONNECTING and len(self.pending) > self.server.write_buffer_high:
            self.client_reads.pause("connecting")
        if self.state is _IN_STARTUP:
            self._startup()

    def eof_received(self) -> bool:
        self.close_reason = self.close_reason or "client_closed"
        return False  # let the transport close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if (
            self.state is _IN_STARTUP
            and self._negotiated
            and self.client_tls is None
            and self.close_reason in (None, "client_closed")
        ):
            self._client_refused_plaintext()
        if self.close_reason is None:
            self.close_reason = "client_error" if exc else "client_closed"
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        upstream = self.upstream
        self._cancel_orphaned_statement()
        if upstream is not None and upstream.transport is not None and not upstream.transport.is_closing():
            # Never write_eof(): PostgreSQL does not half-close, and uvloop can
            # crash on it under churn (issue 3). The requests still queued
            # are delivered first, with the server's answers read meanwhile.
            upstream.flush_and_close()
        self._finish(exc)

    def _client_refused_plaintext(self) -> None:
        """The client hung up after our 'N': it requires encryption that ``refuse`` mode does not offer."""
        kinds = " or ".join(_NEGOTIATION_NAMES[c].removesuffix("Request") for c in sorted(self._negotiated))
        self.close_reason = Refusal.TLS_REFUSED.value
        self._log_refused(
            Refusal.TLS_REFUSED,
            f"the client requires encryption ({kinds}) and tls.client_mode is refuse",
            change='set tls.client_mode = "passthrough" (sessions are then relayed encrypted, not decoded), '
            "or connect with sslmode=prefer or disable",
        )

    def _cancel_orphaned_statement(self) -> None:
        """The client vanished while a statement ran: cancel it, as the client no longer can.

        Without this the backend would run the statement to its end before
        noticing the closed socket (unless client_connection_check_interval is set).
        """
        self._observations.flush()  # the request just relayed counts as outstanding
        tracker = self.tracker
        if tracker is None or self.state is not _RELAYING or self.close_reason not in ("client_closed", "client_error"):
            # Only a client that vanished first: when the server dropped the
            # session (a restart, pg_terminate_backend) there is nothing to cancel.
            return
        if tracker.terminated or not tracker.request_outstanding:
            return  # said goodbye (most sessions), or nothing running: no property calls asked for nothing
        pid, key = tracker.backend_pid, tracker.cancel_key
        if pid is not None and key is not None:
            packet = cancel_request(pid, key)
            self.server.forward_cancel(self, packet, reason="client_vanished")

    def server_buffer_full(self) -> None:
        """The server reads slower than the client sends (COPY IN, a pipeline behind a long statement): stop reading the client.

        A client that hangs up meanwhile would go unseen until the server's
        queue has room, its running statement cancelled only then: so the
        paused client's socket is checked for a hang-up every
        ``HANGUP_CHECK_INTERVAL`` (``server.hangup_checks``, see proxy/hangup.py).
        """
        if self._client_hung_up:
            return  # it sends nothing more: what it left is bounded by the socket's buffer
        self.client_reads.pause("server_buffer_full")
        if self.state is _RELAYING:
            self.server.hangup_checks.start(self)

    def server_buffer_drained(self) -> None:
        self.server.hangup_checks.stop(self)
        self.client_reads.resume("server_buffer_full")

    def check_hangup(self) -> None:
        """Called by the server's ``hangup_checks``: has the paused client gone?

        If so, its reads resume whatever the server's queue: the bytes it sent
        before its FIN are forwarded, then the end of the stream closes the
        session the usual way (connection_lost), which cancels the statement
        the client left running. After a reset, the bytes already in the
        socket's buffer are read too, then the read fails and ends it.
        """
        client = self.client
        if "server_buffer_full" not in self.client_reads.reasons or client is None or client.is_closing():
            return
        if not peer_hung_up(client):
            self.server.hangup_checks.start(self)
            return
        self._client_hung_up = True
        self.client_reads.resume("server_buffer_full")

    def pause_writing(self) -> None:
        # The client reads slower than the server sends: stop reading the server.
        self.upstream_reads.pause("client_buffer_full")

    def resume_writing(self) -> None:
        self.upstream_reads.resume("client_buffer_full")

    # ------------------------------------------------------------------ start-up

    def _startup(self) -> None:
        """Act on complete start-up packets in ``pending``."""
        while self.state is _IN_STARTUP and self.pending:
            buf = self.pending
            if buf[0] == _TLS_HANDSHAKE and self.client_tls is None:
                if self.config.tls_client_mode == "refuse":
                    self._log_refused(
                        Refusal.TLS_REFUSED,
                        "direct TLS (sslnegotiation=direct) while tls.client_mode is refuse",
                        change='set tls.client_mode = "terminate" (decoded) or "passthrough" (relayed encrypted)',
                    )
                    self._close_client(Refusal.TLS_REFUSED.value)
                    return
                if self.config.tls_client_mode == "terminate":
                    hello = bytes(buf)
                    buf.clear()
                    self._accept_client_tls(hello, direct=True)
                    return
                self._connect()
                return
            if len(buf) < 8:
                return
            length, code = struct.unpack_from("!II", buf)
            if length < 8 or length > MAX_STARTUP_PACKET:
                # Not a packet we understand: let the server judge it, unchanged.
                self._connect()
                return
            if len(buf) < length:
                return
            if code == SSL_REQUEST_CODE and self.config.tls_client_mode == "terminate" and self.client_tls is None:
                packet = bytes(buf[:length])
                del buf[:length]
                self.bytes_from_client += len(packet)
                self._observe(packet, True, self.pending_since)
                if buf:
                    # Bytes before our answer could be injected by a man in the
                    # middle (CVE-2021-23214): PostgreSQL refuses them too.
                    self._log_refused(
                        Refusal.TLS_PROTOCOL_VIOLATION, "the client sent data after SSLRequest before the answer"
                    )
                    self._close_client(Refusal.TLS_PROTOCOL_VIOLATION.value)
                    return
                self._negotiated = self._negotiated | {code}
                assert self.client is not None
                self.client.write(b"S")
                self.bytes_from_server += 1
                self._accept_client_tls(b"", direct=False)
                return
            if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE) and (
                self.config.tls_client_mode != "passthrough"
                or self.client_tls is not None
                # GSS encryption cannot be passed through a TLS upstream leg.
                or (code == GSSENC_REQUEST_CODE and self.server.upstream_tls.mode.asks)
            ):
                packet = bytes(buf[:length])
                del buf[:length]
                self.bytes_from_client += len(packet)
                self._observe(packet, True, self.pending_since)
                if code in self._negotiated:
                    self._repeated_negotiation(code)
                    return
                self._negotiated = self._negotiated | {code}
                self._client_send(b"N")
                self._observe(b"N", False, _monotonic())
                self.bytes_from_server += 1
                continue
            if code == CANCEL_REQUEST_CODE:
                packet = bytes(buf[:length])
                del buf[:length]
                self._cancel_connection = True
                self.server.forward_cancel(self, packet)
                self._close_client("cancel_request")
                return
            self._connect()
            return

    def _repeated_negotiation(self, code: int) -> None:
        """A second SSLRequest (or GSSENCRequest) on one connection: PostgreSQL's answer, then close.

        PostgreSQL negotiates each kind of encryption once per connection;
        a repeated request is not a request code it knows any more, so it is
        judged as a protocol version and refused (``ProcessStartupPacket``).
        Answering forever would let one socket spin the loop at 100 % CPU.
        """
        name = _NEGOTIATION_NAMES[code]
        self._log_refused(
            Refusal.REPEATED_NEGOTIATION,
            f"a second {name} on one connection (PostgreSQL negotiates encryption once per connection)",
            change="fix the client: send one SSLRequest and at most one GSSENCRequest, then the StartupMessage",
        )
        self._reply_and_close(
            error_response(
                "FATAL",
                "0A000",
                f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
                f"{name} was already answered on this connection",
            ),
            Refusal.REPEATED_NEGOTIATION.value,
        )

    def _reply_and_close(self, reply: bytes, reason: str) -> None:
        """Send the client one message of the proxy's own (an ErrorResponse), then close it."""
        if self.client is not None and not self.client.is_closing():
            self._client_send(reply)
            self.bytes_from_server += len(reply)
            self._observe(reply, False, _monotonic())
        self._close_client(reason)

    def startup_timed_out(self) -> None:
        """``proxy.startup_timeout`` elapsed before the session became ready: close it, blaming the right side.

        A silent or slow client gets PostgreSQL's own style of error
        (57014 ``canceling authentication due to timeout``) where the protocol
        allows one; an upstream that accepted the connection but does not
        answer gets ``upstream.unresponsive`` and the client FATAL 08006
        naming it. Sessions the tracker can no longer follow (encrypted,
        decoder failure) are not judged. Called by the server's
        ``startup_deadlines``.
        """
        self._startup_clock = False
        timeout = self.config.startup_timeout
        if self.state is _CONNECTING:
            if self._connect_task is not None:
                self._connect_task.cancel()
            self._upstream_unreachable(f"not connected within proxy.startup_timeout ({timeout:g}s)")
            return
        if self.state not in (_IN_STARTUP, _RELAYING):
            return
        tracker = self.tracker
        wait = tracker.startup_wait() if tracker is not None and self.decoding else None
        if self.state is _IN_STARTUP:
            client_owes = True
            handshaking = self.client_tls is not None and self.client_tls.state is HandshakeState.HANDSHAKING
            awaiting = "the TLS handshake" if handshaking else "the startup packet"
            at_boundary = not handshaking  # mid-handshake, no PostgreSQL message can reach the client
        elif wait is None:
            return  # ready, or no longer decodable: nothing to judge
        else:
            client_owes = wait.owed_by is Side.CLIENT
            awaiting = wait.awaiting
            at_boundary = wait.at_boundary
        self.server.counters["startup_timeouts"] += 1
        if client_owes:
            self.sink.log(
                "warning",
                "session.timed_out",
                session=self.session_id,
                reason="startup_timeout",
                waiting_for="client",
                awaiting=awaiting,
                timeout_s=timeout,
                **{"client.address": self.peer[0] if self.peer else None},
            )
            reply = error_response(
                "FATAL",
                "57014",
                "canceling authentication due to timeout",
                f"pgproxy did not receive {awaiting} within proxy.startup_timeout ({timeout:g}s)",
            )
            close_reason = "startup_timeout"
        else:
            target = host_port(self.config.upstream_host, self.config.upstream_port)
            self.server.counters["upstream_failures"] += 1
            self.sink.log(
                "error",
                "upstream.unresponsive",
                session=self.session_id,
                upstream=target,
                awaiting=awaiting,
                timeout_s=timeout,
                **{"client.address": self.peer[0] if self.peer else None},
            )
            reply = error_response(
                "FATAL",
                "08006",
                f"pgproxy: the upstream server {target} accepted the connection but did not answer "
                f"{awaiting} within {timeout:g}s",
            )
            close_reason = "upstream_unresponsive"
        if at_boundary:
            self._reply_and_close(reply, close_reason)
        else:
            self._close_client(close_reason)
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.abort()

    def _startup_settled(self) -> None:
        """Stop the start-up clock once the session is ready (or can no longer be judged)."""
        tracker = self.tracker
        if self._startup_clock and (not self.decoding or tracker is None or tracker.startup_wait() is None):
            self.server.startup_deadlines.stop(self)
            self._startup_clock = False

    def _connect(self) -> None:
        self.state = _CONNECTING
        # The client is still read while the dial runs (its bytes wait in ``pending``): pausing and
        # resuming every connection's reads cost two epoll changes, i.e. io_uring submissions of libuv's
        # (strace: 8 against a plain forwarder's 4 per connection), and hid a client that left meanwhile.
        # Only one that sends more than a write buffer's worth before the server is there is paused.
        self._connect_task = _TASK(self._dial(), loop=self.server.loop, name=_DIAL_TASK_NAME)
        self.server.connect_deadlines.start(self)

    def connect_timed_out(self) -> None:
        """``proxy.connect_timeout`` elapsed while dialling the upstream (TLS negotiation included): cancel the dial.

        Called by the server's ``connect_deadlines``; the dial reports it, as
        ``asyncio.timeout`` would have raised TimeoutError.
        """
        task = self._connect_task
        if task is not None and not task.done():
            self._connect_expired = True
            task.cancel()

    async def _dial(self) -> None:
        cfg = self.config
        side = UpstreamSide(self)
        server = self.server
        failure: str | None = None
        try:
            await server.loop.create_connection(lambda: side, cfg.upstream_host, cfg.upstream_port)
            if server.upstream_tls_asks and self._wants_upstream_tls():
                failure = await self._negotiate_upstream_tls(side)
        except asyncio.CancelledError:
            side.close()
            task = self._connect_task
            # Cancelled by connect_timed_out alone (not also by the start-up clock or the client leaving).
            if not self._connect_expired or task is None or task.uncancel() > 0:
                raise
            self._dial_timed_out(side)
            return
        except TimeoutError:
            side.close()
            self._dial_timed_out(side)
            return
        except OSError as exc:
            side.close()
            self._upstream_unreachable(exc.strerror or str(exc) or type(exc).__name__)
            return
        finally:
            self.server.connect_deadlines.stop(self)
        if failure is not None:
            side.close()
            self._upstream_unreachable(failure, tls=True)
            return
        if self.state is not _CONNECTING:  # the client left meanwhile
            side.close()
            return
        self.upstream = side
        if side.tls is not None:
            # Plaintext clients must not be offered SCRAM-SHA-256-PLUS; TLS
            # clients' choice of it is judged (see _check_channel_binding).
            terminated = self.client_tls is not None
            self._sasl_filter = SaslOfferFilter(drop=frozenset() if terminated else frozenset((SCRAM_PLUS,)))
            if terminated:
                own = self.server.client_certificate_der
                self._binding_end_to_end = own is not None and own == side.tls.peer_certificate_der()
        data = bytes(self.pending)
        self.pending = bytearray()
        self.state = _RELAYING
        if data:
            side.send(data)
            self.bytes_from_client += len(data)
            self._observe(data, True, self.pending_since)
        early = side.take_early()
        if early:
            self.upstream_data(early)
        self.client_reads.resume("connecting")
        self._relay_plain = self._plain_relay()

    def _dial_timed_out(self, side: UpstreamSide) -> None:
        what = "TLS negotiation" if side.transport is not None else "connect"
        self._upstream_unreachable(f"{what} timeout after {self.config.connect_timeout:g}s")

    def _wants_upstream_tls(self) -> bool:
        """False when the first packet is the client's own SSLRequest or TLS (passthrough): it goes through.

        The client's TLS then runs end to end; should the server answer its
        SSLRequest with ``N`` while ``tls.upstream_mode`` insists on TLS, the
        client gets an error instead (see :meth:`upstream_data`).
        """
        buf = self.pending
        if not buf:
            return True
        if buf[0] == _TLS_HANDSHAKE:
            return False
        if len(buf) >= 8:
            (code,) = struct.unpack_from("!I", buf, 4)
            if code == SSL_REQUEST_CODE:
                self._guard_ssl_answer = self.server.upstream_tls.mode.insists
                return False
        return True

    async def _negotiate_upstream_tls(self, side: UpstreamSide) -> str | None:
        """SSLRequest to the server, then the TLS handshake; the reason it failed, or None.

        ``prefer`` accepts an ``N`` and continues in plaintext; the stricter
        modes fail with the server's answer named.
        """
        tls = self.server.upstream_tls
        assert side.transport is not None and tls.context is not None
        side.transport.write(SSL_REQUEST)
        answer = await side.read_early()
        if answer[:1] == b"N":
            del side.early[:1]
            if tls.mode.insists:
                return f"the server does not support SSL (it answered N to SSLRequest) and tls.upstream_mode is {tls.mode.value}"
            self.sink.log(
                "info",
                "tls.declined",
                session=self.session_id,
                leg="upstream",
                mode=tls.mode.value,
                reason="the server answered N to SSLRequest; continuing in plaintext (tls.upstream_mode = prefer)",
            )
            return None
        if answer[:1] != b"S":
            if answer[:1] == b"E":
                return "the server answered SSLRequest with an error (it does not speak TLS negotiation)"
            return f"unexpected answer to SSLRequest: {bytes(answer[:16])!r}"
        if len(answer) > 1:
            # Bytes after 'S' and before the handshake could be injected (CVE-2021-23222).
            return "the server sent unencrypted data after accepting SSL"
        side.early.clear()
        try:
            await side.start_tls(tls.context, tls.server_name)
        except ssl.SSLError as exc:
            return describe_error(exc)
        except ConnectionError as exc:
            return f"the server closed the connection during the TLS handshake ({exc})"
        assert side.tls is not None
        self.sink.log(
            "info",
            "tls.established",
            session=self.session_id,
            leg="upstream",
            mode=tls.mode.value,
            **{"tls.server.name": tls.server_name, **side.tls.info()},
        )
        if self.tracker is not None:
            self.tracker.tls_established("upstream", side.tls.info()["tls.protocol.version"])
        return None

    def _upstream_unreachable(self, reason: str, tls: bool = False) -> None:
        cfg = self.config
        target = host_port(cfg.upstream_host, cfg.upstream_port)
        self.server.counters["upstream_failures"] += 1
        self.sink.log(
            "error",
            "upstream.tls_failed" if tls else "upstream.unreachable",
            session=self.session_id,
            upstream=target,
            reason=reason,
            **{"client.address": self.peer[0] if self.peer else None},
        )
        if self.client is not None and not self.client.is_closing():
            what = "establish TLS with" if tls else "connect to"
            reply = error_response(
                "FATAL",
                "08001",
                f"pgproxy could not {what} the upstream server {target}: {reason}",
            )
            self._client_send(reply)
            self.bytes_from_server += len(reply)
            self._observe(reply, False, _monotonic())
        self._close_client("upstream_tls_failed" if tls else "upstream_unreachable")

    # ------------------------------------------------------------------ client TLS (terminate mode)

    def _client_send(self, data: bytes) -> None:
        """Write to the client, through TLS when pgproxy terminates it."""
        if self.client_tls is not None:
            self.client_tls.send(data)
        elif self.client is not None:
            self.client.write(data)

    def _accept_client_tls(self, hello: bytes, direct: bool) -> None:
        """Answer the client's TLS with pgproxy's own certificate; plaintext inside is decoded as usual."""
        assert self.client is not None
        context = self.server.client_tls_context
        assert context is not None
        self._direct_tls = direct
        self.client_tls = TLSChannel(context, True, self.client.write, on_established=self._client_tls_established)
        if hello:
            try:
                plain = self.client_tls.receive(hello)
            except ssl.SSLError as exc:
                self._client_tls_failed(describe_error(exc))
                return
            if plain:
                self.pending += plain
                self._startup()

    def _client_tls_established(self) -> None:
        tls = self.client_tls
        assert tls is not None
        info = tls.info()
        if self._direct_tls and tls.selected_alpn() != ALPN_POSTGRESQL:
            # PostgreSQL requires ALPN for direct TLS, so that a TLS connection
            # meant for another protocol cannot be confused with PostgreSQL.
            self._client_tls_failed("direct TLS without ALPN protocol 'postgresql'")
            return
        self.sink.log(
            "info",
            "tls.established",
            session=self.session_id,
            leg="client",
            negotiation="direct" if self._direct_tls else "sslrequest",
            **info,
        )
        if self.tracker is not None:
            self.tracker.tls_established("client", info["tls.protocol.version"])

    def _client_tls_failed(self, reason: str) -> None:
        self.server.counters["tls_failures"] += 1
        self.sink.log(
            "warning",
            "tls.failed",
            session=self.session_id,
            leg="client",
            reason=reason,
            **{"client.address": self.peer[0] if self.peer else None},
        )
        self.client_tls = None  # nothing more can be said to this client in TLS
        self._close_client("tls_failed")

    def _check_channel_binding(self) -> None:
        """TLS -> TLS: a client choosing SCRAM-SHA-256-PLUS gets a clear refusal unless it can verify.

        The client binds to the certificate pgproxy presented; the server
        checks the binding against its own. Unless pgproxy presents the
        server's own certificate, the server would refuse after a round trip
        with a bare "SCRAM channel binding check failed".
        """
        try:
            mechanism = sasl_initial_mechanism(self.pending)
        except NeedMoreData:
            return
        self._binding_check = False
        if mechanism == SCRAM_PLUS and not self._binding_end_to_end:
            self.server.counters["channel_binding_refused"] += 1
            reason = (
                "SCRAM channel binding cannot verify through pgproxy, which terminates TLS with its own certificate"
            )
            self._log_refused(
                Refusal.CHANNEL_BINDING_REFUSED,
                reason,
                change="connect with channel_binding=disable, or give pgproxy the server's own certificate and key",
            )
            reply = error_response(
                "FATAL",
                "28000",
                f"pgproxy: {reason}",
                detail="Connect with channel_binding=disable, or give pgproxy the server's own certificate and key "
                "(tls.client_cert_file, tls.client_key_file) so that tls-server-end-point binding verifies end to end.",
            )
            self.pending = bytearray()
            self._client_send(reply)
            self.bytes_from_server += len(reply)
            self._close_client(Refusal.CHANNEL_BINDING_REFUSED.value)
            return
        data = bytes(self.pending)
        self.pending = bytearray()
        self._relay_from_client(data)

    def _relay_from_client(self, data: bytes) -> None:
        """Forward and observe decrypted client bytes in the relay phase."""
        upstream = self.upstream
        assert upstream is not None
        upstream.send(data)
        self.bytes_from_client += len(data)
        if self.decoding:
            self._observe(data, True, _monotonic())

    def _log_refused(self, refusal: Refusal, why: str, change: str | None = None) -> None:
        """Log ``session.refused``: ``refusal`` the kind (a metric label), ``reason`` the sentence, ``change`` the fix."""
        fields = {"change": change} if change else {}
        self.sink.log(
            "warning", "session.refused", session=self.session_id, refusal=refusal.value, reason=why, **fields
        )

    def refuse(self, reply: bytes, reason: str) -> None:
        """Turn the client away before anything is relayed: send ``reply``, then close the connection.

        For the server's admission limits (``max_connections``,
        ``file_descriptors``): the caller logs the refusal and builds the
        reply (a FATAL ErrorResponse). The reply is written as is and not shown
        to the tracker, which must not mistake pgproxy's words for a server's.

        Args:
            reply: the bytes to send, an ErrorResponse of the proxy's own.
            reason: the close reason ``session.ended`` reports (``max_connections``...).
        """
        if self.client is not None and not self.client.is_closing():
            self.client.write(reply)
        self._close_client(reason)

    def _close_client(self, reason: str) -> None:
        self.close_reason = self.close_reason or reason
        self.state = _CLOSING
        self._relay_plain = False
        if self.client is not None and not self.client.is_closing():
            if self.client_tls is not None:
                self.client_tls.close()
            self.client.close()

    # ------------------------------------------------------------------ upstream side (called by UpstreamSide)

    def upstream_data(self, data: bytes) -> None:
        if self._relay_plain:  # the general way below, for a plaintext relay past start-up
            if self._client_closing():
                return
            stamp = _monotonic() if self._stamped else None  # when the response's bytes reached the proxy
            self._client_write(data)
            self.bytes_from_server += len(data)
            if self._backlog or len(data) > OBSERVE_SLICE:
                self._observe(data, False, stamp or _monotonic())
            elif not self._observations.add(self, data, False, stamp):  # see data_received
                self._show(data, False, stamp)
            # ``idle`` shows the queued chunks first; a decoder failure then clears _relay_plain.
            if self.server.draining and self.idle and self._relay_plain:
                self.shut_down()
            return
        now = _monotonic()  # when the response's bytes reached the proxy
        client = self.client
        if client is None or client.is_closing():
            return
        if self._guard_ssl_answer:
            self._guard_ssl_answer = False
            if data[:1] == b"N":  # the client would continue in plaintext to the server
                mode = self.server.upstream_tls.mode.value
                self._upstream_unreachable(
                    f"the server does not support SSL (it answered N to SSLRequest) and tls.upstream_mode is {mode}",
                    tls=True,
                )
                return
        sasl = self._sasl_filter
        if sasl is not None:
            data = sasl.feed(data)
            if sasl.done:
                self._sasl_filter = None
                self._sasl_settled(sasl)
            if not data:
                return
        if self.client_tls is not None:
            self.client_tls.send(data)
        else:
            client.write(data)
        self.bytes_from_server += len(data)
        if self.decoding:
            self._observe_relayed(data, False, now)
        if self._startup_clock:
            self._startup_settled()
        # A reload waits for the request under way to be answered (or the login to finish).
        if (
            self.pending_options is not None
            and self.tracker is not None
            and self.tracker.reconfigure(self.pending_options)
        ):
            self.pending_options = None
        if self.server.draining and self.idle:
            # Draining: the statement or transaction this session was waiting for is over.
            self.shut_down()
        self._relay_plain = self._plain_relay()

    def _plain_relay(self) -> bool:
        """Nothing but the chunks to relay and show: the fast way of data_received and upstream_data applies.

        In the relay phase, past start-up (its clock stopped), in plaintext on
        both legs (no TLS, no SCRAM offer filtered or choice held, no SSL answer
        to judge), still decoded, and no reload waiting. Asked again where the
        general way may have changed one of these; whatever ends one of them
        on the fast way (a decoder failure, closing, a reload) clears the flag.
        """
        upstream = self.upstream
        plain = (
            self.state is _RELAYING
            and upstream is not None
            and upstream.transport is not None
            and upstream.tls is None
            and self.client_tls is None
            and self.tracker is not None
            and self.decoding
            and not self._startup_clock
            and not self._binding_check
            and not self._guard_ssl_answer
            and self._sasl_filter is None
            and self.pending_options is None
        )
        self._bind_relay(upstream.transport if plain and upstream is not None else None, self.client if plain else None)
        if plain and upstream is not None and not upstream.direct:
            upstream.relay_directly()
        tracker = self.tracker if plain else None
        # Connection detail, once ready, only counts: no arrival time is read, as
        # none would be used (an event among the counted messages, an error or a
        # parameter change, is stamped by the tracker's own clock when the chunk is
        # shown, at the end of the loop's turn). Before ready (no start-up clock)
        # every chunk is stamped: setup_ms.
        self._stamped = (
            tracker is None or not tracker.ready or tracker.statements is not None or tracker.replication is not None
        )
        return plain

    def _bind_relay(self, server: Any, client: Any) -> None:
        """Hold the two transports' ``write`` and ``is_closing`` bound, for the plaintext relay; None lets them go."""
        if server is not None and client is not None:
            self._server_write, self._server_closing = server.write, server.is_closing
            self._client_write, self._client_closing = client.write, client.is_closing
        else:
            self._server_write = self._server_closing = self._client_write = self._client_closing = None

    def _sasl_settled(self, sasl: SaslOfferFilter) -> None:
        if sasl.removed:
            self.sink.log(
                "info",
                "auth.mechanisms_rewritten",
                session=self.session_id,
                offered=list(sasl.offered or ()),
                removed=list(sasl.removed),
                reason="the client reaches pgproxy without TLS, so SCRAM channel binding cannot apply; "
                "AuthenticationSASL rewritten (length corrected), the exchange itself is untouched",
            )
        elif self.client_tls is not None and sasl.offered and SCRAM_PLUS in sasl.offered:
            self._binding_check = True

    def upstream_tls_broken(self, reason: str) -> None:
        """The server's TLS stream failed after the handshake: end the session, saying why."""
        self.sink.log("error", "tls.failed", session=self.session_id, leg="upstream", reason=reason)
        self.close_reason = self.close_reason or "upstream_tls_error"
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.abort()

    def upstream_lost(self, exc: Exception | None) -> None:
        if self._ended:  # the client left first; its last requests are now delivered (or failed)
            self._let_go()
            return
        if self.close_reason is None:
            self.close_reason = "server_error" if exc else "server_closed"
        if self.client is not None and not self.client.is_closing():
            if self.client_tls is not None:
                self.client_tls.close()
            self.client.close()  # flushes what the server sent last (e.g. a FATAL error)

    # ------------------------------------------------------------------ observation

    def _observe(self, data: bytes, frontend: bool, now: float) -> None:
        """Show forwarded bytes to the tracker, stamped with when they reached the proxy.

        A small chunk is shown at once. A large one (a read can bring 256 KiB:
        tens of thousands of tiny messages) is shown in slices, a few
        milliseconds of tracker work per turn of the event loop, so that one
        session's flood cannot hold every other session's bytes; while more
        than :data:`OBSERVE_BACKLOG_PAUSE` bytes wait, reading that session
        pauses. Order and arrival times are kept: the chunks the relay queued
        for the end of the turn (proxy/observations.py) are shown first.
        """
        self._observations.flush()
        if self.tracker is None or not self.decoding:
            return
        if not self._backlog and len(data) <= OBSERVE_SLICE:
            self._show(data, frontend, now)
            return
        self._backlog.append((data, 0, frontend, now))
        self._backlog_bytes += len(data)
        if self._backlog_bytes > OBSERVE_BACKLOG_PAUSE:
            self.client_reads.pause("decoder_behind")
            self.upstream_reads.pause("decoder_behind")
        if not self._draining:
            self._draining = True
            self._drain_backlog()

    def _observe_relayed(self, data: bytes, frontend: bool, now: float) -> None:
        """:meth:`_observe` for a chunk the general way relayed (TLS on either leg, a reload waiting, start-up).

        Past start-up, with no reload waiting, nothing after the relay asks the
        tracker about this chunk (upstream_data's ``idle`` shows the queue first),
        so it is queued for the end of the turn as the plaintext relay's chunks
        are (proxy/observations.py). During start-up the start-up clock and the
        relay's choice of way read the tracker right after: shown now.
        """
        tracker = self.tracker
        if (
            not self._backlog
            and len(data) <= OBSERVE_SLICE
            and tracker is not None
            and tracker.ready
            and not self._startup_clock
            and self.pending_options is None
            and self._observations.add(self, data, frontend, now)
        ):
            return
        self._observe(data, frontend, now)

    def _drain_backlog(self, budget: float = 0.002) -> None:
        """Show queued bytes slice by slice for up to ``budget`` seconds; continue on the next loop turn."""
        backlog = self._backlog
        deadline = time.perf_counter() + budget
        while backlog and self.decoding:
            data, offset, frontend, now = backlog[0]
            piece = data[offset : offset + OBSERVE_SLICE]
            if offset + OBSERVE_SLICE < len(data):
                backlog[0] = (data, offset + OBSERVE_SLICE, frontend, now)
            else:
                backlog.popleft()
            self._backlog_bytes -= len(piece)
            self._show(piece, frontend, now)
            if time.perf_counter() > deadline:
                break
        if not self.decoding:
            self.undecoded_bytes += self._backlog_bytes
            backlog.clear()
            self._backlog_bytes = 0
        if self._backlog_bytes <= OBSERVE_BACKLOG_PAUSE // 2:
            self.client_reads.resume("decoder_behind")
            self.upstream_reads.resume("decoder_behind")
        if backlog:
            self.server.loop.call_soon(self._drain_backlog)
            return
        self._draining = False
        if self._after_drain is not None:
            end, self._after_drain = self._after_drain, None
            end()

    def _show(self, data: bytes, frontend: bool, now: float | None) -> None:
        try:
            records = self.track(data, frontend, now)
        except Exception as exc:
            self.decoding_failed(exc)
            return
        if records:
            emit_records(self.sink, records)

    def track(self, data: bytes, frontend: bool, now: float | None) -> list[Record] | None:
        """The tracker's records for relayed ``data`` (None: none, or decoding has stopped); a tracker failure raises.

        ``now``: when the bytes reached the proxy (None: not timed, see _plain_relay).
        """
        tracker = self.tracker
        if tracker is None or not self.decoding:
            return None
        return tracker.frontend(data, now) if frontend else tracker.backend(data, now)

    def decoding_failed(self, exc: Exception) -> None:
        """The tracker failed on forwarded bytes: stop decoding this session (opaque passthrough), say so once."""
        self.decoding = False
        self._relay_plain = False
        self.server.counters["decoder_failures"] += 1
        self.sink.log(
            "error",
            "session.anomaly",
            session=self.session_id,
            kind="decoder_failure",
            reason=f"{type(exc).__name__}: {exc}",
            action="switched to opaque passthrough; bytes still forwarded unchanged",
        )

    def _finish(self, exc: Exception | None) -> None:
        if self.state is _CLOSED:
            return
        self._observations.flush()  # the session's last chunks, before it ends
        self.state = _CLOSED
        self._relay_plain = False
        self._bind_relay(None, None)  # each bound method holds its transport: none outlives the session
        if self._startup_clock:
            self.server.startup_deadlines.stop(self)
            self._startup_clock = False
        self.server.hangup_checks.stop(self)
        if self._backlog:
            # The tracker has not caught up: end the session (and log it) once it
            # has, still a slice per loop turn, so the events stay complete.
            self._after_drain = lambda: self._end(exc)
            return
        self._end(exc)

    def _end(self, exc: Exception | None) -> None:
        try:
            self._log_end(exc)
        finally:
            # After session.ended is queued: whoever waits for the session set
            # to empty (a drain, a test) then finds the event. A server
            # connection still delivering the client's last requests keeps the
            # session in the set (it still holds a server connection and a
            # file descriptor, and a shutdown must wait for it or abort it);
            # upstream_lost then lets it go.
            self._ended = True
            upstream = self.upstream
            if upstream is None or upstream.transport is None or upstream.gone:
                self._let_go()

    def _let_go(self) -> None:
        """Both legs are gone and session.ended is logged: the server forgets the session, and it its upstream side.

        The two protocols refer to each other (the side's ``session``, and its
        ``data_received`` bound to :meth:`upstream_data`): a reference cycle, which
        left the whole session (tracker, conversation, framers, read gates,
        the dial's task: 24 objects) for Python's cyclic collector to find and
        free, traversing them on the way. Let go of, they are freed at once
        (callgrind, a pgbench -C-like churn, pure, connection detail: main thread 370k -> 356k instructions
        per connection).
        """
        self.server.session_closed(self)
        self.upstream = None

    def _log_end(self, exc: Exception | None) -> None:
        if self._cancel_connection:
            return
        tracker = self.tracker
        if tracker is None:
            return
        reason = self.close_reason or "closed"
        extra: dict[str, Any] = {
            "bytes_from_client": self.bytes_from_client,
            "bytes_from_server": self.bytes_from_server,
        }
        if self.undecoded_bytes:
            extra["undecoded_bytes"] = self.undecoded_bytes
        if exc is not None:
            extra["error"] = f"{type(exc).__name__}: {exc}"
        if not self.decoding:
            extra["decoding"] = "stopped after a decoder failure"
        try:
            records = tracker.closed(reason, None, extra)
        except Exception as err:
            self.sink.log(
                "error", "session.ended", session=self.session_id, reason=reason, tracker_error=str(err), **extra
            )
            return
        emit_records(self.sink, records)

    # ------------------------------------------------------------------ shutdown

    @property
    def idle(self) -> bool:
        """Safe to end now without losing work: ready, no request outstanding, outside a transaction.

        Also requires both streams to sit between messages, so that the
        administrator-shutdown error is a whole message of its own. Unknown
        (decoding stopped, e.g. TLS passthrough) counts as not idle. Asked of
        a tracker that has seen every byte relayed (the queued chunks are shown first).
        """
        self._observations.flush()
        tracker = self.tracker
        if self.state is not _RELAYING:
            return self.state is not _CONNECTING
        if tracker is None or not self.decoding or self._backlog:
            return False
        return not tracker.busy and tracker.between_messages

    def adopt(self, options: TrackerOptions) -> None:
        """Log by new options (a reload): now if no request is outstanding, else after its answer.

        A session still logging in adopts them once it is ready.
        """
        self._observations.flush()  # whether a request is outstanding: after every byte relayed
        tracker = self.tracker
        self.pending_options = None if tracker is None or tracker.reconfigure(options) else options
        if self.pending_options is not None:
            self._relay_plain = False  # upstream_data's general way adopts them after the answer
        elif self._relay_plain:
            self._relay_plain = self._plain_relay()  # the detail may have changed: stamp chunks or not

    def shut_down(self) -> None:
        """End the session the way PostgreSQL's own shutdown does.

        The client receives ``FATAL 57P01 terminating connection due to
        administrator command`` when it can be added as a whole message, the
        server receives Terminate (so its backend exits cleanly instead of
        logging an unexpected EOF), and both connections close after flushing.
        A statement still running is cancelled first: closing the socket
        alone would let it run to its end.
        """
        if self.state is _CLOSED:
            return
        self.close_reason = self.close_reason or "proxy_shutdown"
        self._observations.flush()  # a request just relayed is outstanding; a message just relayed is whole
        tracker = self.tracker
        client, upstream = self.client, self.upstream
        relaying = self.state is _RELAYING and upstream is not None and upstream.transport is not None
        if relaying and tracker is not None and tracker.request_outstanding:
            pid, key = tracker.backend_pid, tracker.cancel_key
            if pid is not None and key is not None:
                self.server.forward_cancel(self, cancel_request(pid, key), reason="proxy_shutdown")
        at_boundary = tracker is None or (self.decoding and tracker.between_messages)
        if client is not None and not client.is_closing() and at_boundary:
            reply = error_response("FATAL", "57P01", "terminating connection due to administrator command")
            self._client_send(reply)  # through TLS when pgproxy terminates it
            self.bytes_from_server += len(reply)
            self._observe(reply, False, _monotonic())
        if relaying and upstream is not None and upstream.transport is not None and not upstream.transport.is_closing():
            if tracker is not None and tracker.ready_at is not None and at_boundary:
                upstream.send(_TERMINATE)  # through TLS when the upstream leg is encrypted
            upstream.transport.close()
        self._close_client("proxy_shutdown")

    def abort(self) -> None:
        """End at once, without goodbyes (a second signal)."""
        self.close_reason = self.close_reason or "proxy_shutdown"
        if self.client is not None:
            self.client.abort()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.abort()


class UpstreamSide(asyncio.Protocol):
    """The server-facing protocol; everything it sees goes to its ClientSession.

    Until the session hands it the client's bytes (``negotiating``), what the
    server sends is kept in ``early`` for the TLS negotiation to read.
    """

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None
        self.tls: TLSChannel | None = None
        self.negotiating = True
        self.early = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._lost: Exception | None = None
        self.gone = False  # connection_lost has run
        self._flushing = False  # the client left: deliver what is queued, then close (flush_and_close)
        self.direct = False  # the transport hands the server's bytes to the session itself (relay_directly)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        upstream: asyncio.Transport = transport  # type: ignore[assignment]  # (no typing.cast: see ClientSession's)
        self.transport = upstream
        session = self.session
        server = session.server
        limit_socket_buffers(upstream.get_extra_info("socket"), session.config.socket_buffer)
        upstream.set_write_buffer_limits(high=server.write_buffer_high, low=server.write_buffer_low)
        session.upstream_reads.transport = upstream

    def data_received(self, data: bytes) -> None:
        tls = self.tls
        if tls is not None:
            try:
                data = tls.receive(data)
            except ssl.SSLError as exc:
                if self.negotiating:
                    self._wake(exc)
                    return
                self.session.upstream_tls_broken(describe_error(exc))
                return
        if self.negotiating:
            self.early += data
            self._wake(None)  # the handshake may have moved on even without plaintext
            return
        if not data:
            return
        self.session.upstream_data(data)

    def relay_directly(self) -> None:
        """In a plaintext relay, have the transport call :meth:`ClientSession.upstream_data` itself.

        Without TLS and past negotiation, :meth:`data_received` only passes
        the chunk on; skipping it saves a Python call on every server chunk.
        uvloop binds ``data_received`` once, when the protocol is set: hence
        ``set_protocol`` (asyncio's transports look it up on every read).
        """
        transport = self.transport
        if self.tls is not None or self.negotiating or transport is None or transport.is_closing():
            return
        self.direct = True
        self.data_received = self.session.upstream_data  # type: ignore[method-assign]
        transport.set_protocol(self)

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Write to the server, through TLS when the upstream leg is encrypted."""
        if self.tls is not None:
            self.tls.send(data)
        elif self.transport is not None:
            self.transport.write(data)

    async def read_early(self) -> bytearray:
        """Wait for the server's first bytes during negotiation."""
        while not self.early:
            await self._wait()
        return self.early

    async def start_tls(self, context: ssl.SSLContext, server_name: str | None) -> None:
        """Run the client side of the TLS handshake over this connection."""
        assert self.transport is not None
        self.tls = TLSChannel(context, False, self.transport.write, server_hostname=server_name)
        self.tls.start()
        while self.tls.state is HandshakeState.HANDSHAKING:
            await self._wait()

    def take_early(self) -> bytes:
        """End negotiation: bytes the server sent meanwhile, for the session to forward."""
        self.negotiating = False
        data = bytes(self.early)
        self.early.clear()
        return data

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self.tls is not None:
                self.tls.close()
            self.transport.close()

    def flush_and_close(self) -> None:
        """The client left: deliver the requests still queued towards the server, then close.

        A transport's ``close()`` stops reading at once and waits for its
        write buffer to drain. The server, though, reads the next request
        only once its answers to the earlier ones are out of its own socket
        buffers: with large answers nobody reads, both sides would wait for
        ever, keeping a backend and a file descriptor busy. So the answers
        are read (and dropped: there is nobody to give them to) until the
        last queued byte is written, and only then does the connection close.
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.get_write_buffer_size():
            self.close()
            return
        self._flushing = True
        self.session.upstream_reads.resume("client_buffer_full")  # nobody is left to wait for
        # resume_writing() is called once the buffer is empty.
        transport.set_write_buffer_limits(high=0, low=0)

    async def _wait(self) -> None:
        if self._lost is not None:
            raise self._lost
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self, exc: Exception | None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        if self.negotiating:
            self._lost = ConnectionResetError("the server closed the connection")
            self._wake(self._lost)
            return
        self.session.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.session.server_buffer_full()

    def resume_writing(self) -> None:
        if self._flushing:  # the client's last requests are all written
            self.close()
            return
        self.session.server_buffer_drained()
