"""Sans-IO PostgreSQL wire protocol: bytes in, frames and typed messages out.

Nothing here performs I/O, logs, or reads configuration; it imports only the
standard library (a test enforces it). The pieces:

* :mod:`~pgproxy.protocol.framing` cuts one direction into frames;
* :mod:`~pgproxy.protocol.wire` holds the two-direction state (startup,
  SSL/GSS negotiation, authentication, encoding, encryption);
* :mod:`~pgproxy.protocol.decoding` turns frames into
  :mod:`~pgproxy.protocol.messages`;
* :mod:`~pgproxy.protocol.values` and :mod:`~pgproxy.protocol.rows` decode
  column and parameter values by type OID.
"""

from pgproxy.protocol import framing, messages
from pgproxy.protocol.decoding import decode_frame, decode_tagged, split_command_tag, type_name
from pgproxy.protocol.errors import DecodeError, FramingError, ProtocolError
from pgproxy.protocol.framing import DEFAULT_MAX_FRAME, Frame, Framer, FramingMode
from pgproxy.protocol.rows import RowDecoder
from pgproxy.protocol.values import ValueContext, decode_value, decoder_for
from pgproxy.protocol.wire import Conversation, Phase

#: True when the mypyc-compiled build of this package is in use (installed
#: with ``PGPROXY_COMPILE=1``; see setup.py): the extension modules take
#: precedence over their ``.py`` sources at import.
COMPILED: bool = not str(framing.__file__).endswith(".py")

__all__ = [
    "COMPILED",
    "DEFAULT_MAX_FRAME",
    "Conversation",
    "DecodeError",
    "Frame",
    "Framer",
    "FramingError",
    "FramingMode",
    "Phase",
    "ProtocolError",
    "RowDecoder",
    "ValueContext",
    "decode_frame",
    "decode_tagged",
    "decode_value",
    "decoder_for",
    "messages",
    "split_command_tag",
    "type_name",
]
