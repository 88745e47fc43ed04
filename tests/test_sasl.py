"""The SASL offer rewrite and the SASL choice parser, fed whole, byte by byte and with trailing bytes."""

from __future__ import annotations

import struct

import pytest

from pgproxy.protocol import build
from pgproxy.protocol.sasl import SCRAM_PLUS, NeedMoreData, SaslOfferFilter, sasl_initial_mechanism


def _sasl_offer(*mechanisms: str) -> bytes:
    return build.message(b"R", struct.pack("!I", 10) + b"".join(m.encode() + b"\0" for m in mechanisms) + b"\0")


NEGOTIATE = build.message(b"v", struct.pack("!II", 0x30000, 0))
OFFER = _sasl_offer(SCRAM_PLUS, "SCRAM-SHA-256")
AFTER = build.message(b"R", struct.pack("!I", 11) + b"r=nonce,s=salt,i=4096")


def _run(chunks: list[bytes], drop: frozenset[str] = frozenset((SCRAM_PLUS,))) -> tuple[bytes, SaslOfferFilter]:
    sasl = SaslOfferFilter(drop=drop)
    out = b""
    for chunk in chunks:
        out += sasl.feed(chunk) if not sasl.done else chunk
    return out, sasl


@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_plus_is_removed_with_the_length_corrected(split: str) -> None:
    stream = NEGOTIATE + OFFER + AFTER
    chunks = [stream] if split == "whole" else [stream[i : i + 1] for i in range(len(stream))]
    out, sasl = _run(chunks)
    assert out == NEGOTIATE + _sasl_offer("SCRAM-SHA-256") + AFTER
    assert sasl.done and sasl.offered == (SCRAM_PLUS, "SCRAM-SHA-256") and sasl.removed == (SCRAM_PLUS,)


def test_without_plus_or_with_nothing_to_drop_nothing_changes() -> None:
    plain = _sasl_offer("SCRAM-SHA-256")
    out, sasl = _run([plain + AFTER])
    assert out == plain + AFTER and sasl.removed == ()
    out, sasl = _run([OFFER + AFTER], drop=frozenset())
    assert out == OFFER + AFTER and sasl.offered == (SCRAM_PLUS, "SCRAM-SHA-256")


def test_other_authentication_ends_the_watch() -> None:
    md5 = build.message(b"R", struct.pack("!I", 5) + b"salt")
    out, sasl = _run([md5])
    assert out == md5 and not sasl.done  # md5's answer is the client's; the watch ends at AuthenticationOk
    ok = build.authentication_ok() + build.parameter_status("a", "b")
    assert sasl.feed(ok) == ok and sasl.done
    error = build.error_response("FATAL", "28P01", "password authentication failed")
    out, sasl = _run([error + b"tail"])
    assert out == error + b"tail" and sasl.done


def test_sasl_initial_mechanism() -> None:
    body = b"SCRAM-SHA-256-PLUS\0" + struct.pack("!i", 5) + b"p=tls"
    message = build.message(b"p", body)
    assert sasl_initial_mechanism(message + b"more") == SCRAM_PLUS
    for cut in range(len(message)):
        with pytest.raises(NeedMoreData):
            sasl_initial_mechanism(message[:cut])
    assert sasl_initial_mechanism(build.message(b"X")) is None
