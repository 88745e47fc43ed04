"""Decode DataRows into ``column name -> value`` mappings.

A :class:`RowDecoder` is built once per result (from its RowDescription and
the formats actually in force) and reused for every DataRow of that result,
so the per-row cost is cutting the row plus one decoder call per column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pgproxy.protocol.decoding import MALFORMED_DATA_ROW, cut_data_row
from pgproxy.protocol.errors import DecodeError
from pgproxy.protocol.messages import FieldDescription, RowDescription, format_code
from pgproxy.protocol.values import DEFAULT_CONTEXT, ValueContext, ValueDecoder, decoder_for

_STRUCTURAL = MALFORMED_DATA_ROW


def unique_names(names: Sequence[str]) -> tuple[str, ...]:
    """Column names made unique for use as mapping keys (``?column?``, ``?column?_2``)."""
    seen: dict[str, int] = {}
    out: list[str] = []
    for name in names:
        count = seen.get(name, 0) + 1
        seen[name] = count
        candidate = name if count == 1 else f"{name}_{count}"
        while count > 1 and candidate in seen:
            count += 1
            candidate = f"{name}_{count}"
        if count > 1:
            seen[candidate] = 1
        out.append(candidate)
    return tuple(out)


class RowDecoder:
    """Decodes the DataRows of one result set.

    Args:
        fields: the result's column descriptions.
        formats: the format code of each column actually in force. Defaults to
            the RowDescription's own codes, which are only meaningful when it
            describes a portal or a simple query; after Describe of a prepared
            statement the Bind message's result formats decide.
        ctx: session settings (encoding, time zone).
    """

    __slots__ = ("_fast", "_safe", "decoders", "fields", "formats", "names")

    def __init__(
        self,
        fields: Sequence[FieldDescription],
        formats: Sequence[int] | None = None,
        ctx: ValueContext = DEFAULT_CONTEXT,
    ) -> None:
        self.fields = tuple(fields)
        self.names = unique_names([f.name for f in self.fields])
        self.formats = tuple(formats) if formats is not None else tuple(f.format for f in self.fields)
        if len(self.formats) != len(self.fields):
            raise ValueError("one format per column is needed")
        self.decoders: tuple[ValueDecoder, ...] = tuple(
            decoder_for(f.type_oid, fmt, ctx) for f, fmt in zip(self.fields, self.formats, strict=True)
        )
        self._safe = tuple(zip(self.names, self.decoders, strict=True))
        self._fast = tuple(
            (name, decoder_for(f.type_oid, fmt, ctx, safe=False))
            for name, f, fmt in zip(self.names, self.fields, self.formats, strict=True)
        )

    @classmethod
    def for_description(
        cls,
        description: RowDescription,
        result_formats: Sequence[int] | None = None,
        ctx: ValueContext = DEFAULT_CONTEXT,
    ) -> RowDecoder:
        """Build from a RowDescription and, if known, the Bind result-format codes."""
        formats = None
        if result_formats is not None:
            codes = tuple(result_formats)
            formats = [format_code(codes, i) for i in range(len(description.fields))]
        return cls(description.fields, formats, ctx)

    def decode(self, buf: bytes, start: int, end: int) -> dict[str, Any]:
        """Decode one DataRow body (``buf[start:end]``) into a mapping.

        One pass over the body with the unguarded decoders; only a row with a
        value that does not fit its type is decoded again with the guarded
        ones, which turn such values into placeholders. ``cut_data_row`` is
        called by its module name: compiled, the ``staticmethod`` of it that the
        class held was found and called generically (``sm_call``) for every row.

        Raises:
            DecodeError: the row cannot be cut or its column count differs
                from the description's.
        """
        try:
            return cut_data_row(buf, start, end, self._fast)
        except DecodeError as exc:
            if str(exc).startswith(_STRUCTURAL):
                raise
        except Exception:  # a bad value is shown as a placeholder by the guarded pass
            pass
        return cut_data_row(buf, start, end, self._safe)
