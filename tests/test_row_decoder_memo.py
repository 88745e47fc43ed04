"""StatementTracker.row_decoder's memo of the last decoder made is the shared cache's decoder for the same key."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pgproxy.protocol import build as b
from pgproxy.protocol import messages as m
from pgproxy.protocol.decoding import decode_tagged
from pgproxy.protocol.values import ValueContext
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.statements import Execution, StatementTracker, _row_decoder


def _description(columns: list[tuple[str, int]]) -> m.RowDescription:
    raw = b.row_description(columns)
    msg = decode_tagged(False, raw[0], raw, 5, len(raw), "utf-8")
    assert isinstance(msg, m.RowDescription)
    return msg


# Two equal descriptions that are not the same object, and two of other shapes.
_DESCRIPTIONS = [
    _description([("n", 23)]),
    _description([("n", 23)]),
    _description([("n", 25)]),
    _description([("n", 23), ("m", 25)]),
]
_FORMATS: list[tuple[int, ...] | None] = [None, (), (0,), (1,), (1,)]
_CONTEXTS = [ValueContext(), ValueContext(), ValueContext("latin-1", "UTC", None)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(_DESCRIPTIONS) - 1),
            st.integers(0, len(_FORMATS) - 1),
            st.integers(0, len(_CONTEXTS) - 1),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_each_result_gets_the_cached_decoder_for_its_description_formats_and_context(
    results: list[tuple[int, int, int]],
) -> None:
    """One Execution after another, each described, formatted and decoded some way: the decoder the shared
    cache (_row_decoder) gives for that key, whether the tracker's memo of the last one was taken or not."""
    tracker = StatementTracker(TrackerOptions(), {"session": "s"})
    for described, formatted, context in results:
        description, formats = _DESCRIPTIONS[described], _FORMATS[formatted]
        tracker.set_value_context(_CONTEXTS[context])
        exe = Execution("extended", "SELECT", 1.0, description=description, result_formats=formats)
        decoder = tracker.row_decoder(exe)
        assert decoder is _row_decoder(description, formats, _CONTEXTS[context])
        assert exe.decoder is decoder and tracker.row_decoder(exe) is decoder
