"""Map PostgreSQL encoding names (client_encoding) to Python codecs.

Names from the PostgreSQL documentation, "Character Set Support", table
"PostgreSQL Character Sets". Text is always decoded with
``errors="backslashreplace"``, so a wrong guess shows up as escapes in a log
line rather than as an exception.
"""

from __future__ import annotations

import codecs

_PG_TO_PYTHON: dict[str, str] = {
    "UTF8": "utf-8",
    "UNICODE": "utf-8",
    # SQL_ASCII promises nothing about bytes >= 0x80; latin-1 maps every byte.
    "SQL_ASCII": "latin-1",
    "LATIN1": "latin-1",
    "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5",
    "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7",
    "ISO_8859_8": "iso8859-8",
    "WIN866": "cp866",
    "WIN874": "cp874",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "WIN1253": "cp1253",
    "WIN1254": "cp1254",
    "WIN1255": "cp1255",
    "WIN1256": "cp1256",
    "WIN1257": "cp1257",
    "WIN1258": "cp1258",
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
    "EUC_JP": "euc_jp",
    "EUC_JIS_2004": "euc_jis_2004",
    "EUC_KR": "euc_kr",
    "EUC_CN": "gb2312",
    "GBK": "gbk",
    "GB18030": "gb18030",
    "BIG5": "big5",
    "SJIS": "shift_jis",
    "SHIFT_JIS_2004": "shift_jis_2004",
    "UHC": "cp949",
    "JOHAB": "johab",
}


#: Names already looked up (every login reports client_encoding): a bounded memo of :func:`python_codec`.
_LOOKED_UP: dict[str, str] = {}
_LOOKED_UP_KEPT = 64


def python_codec(pg_name: str) -> str:
    """Python codec for a client_encoding value; UTF-8 when unknown.

    PostgreSQL accepts the names case-insensitively and with or without
    separators (``utf8``, ``UTF-8``, ``latin1``).
    """
    codec = _LOOKED_UP.get(pg_name)
    if codec is None:
        codec = _look_up(pg_name)
        if len(_LOOKED_UP) >= _LOOKED_UP_KEPT:
            _LOOKED_UP.clear()
        _LOOKED_UP[pg_name] = codec
    return codec


def _look_up(pg_name: str) -> str:
    key = pg_name.upper().replace("-", "").replace("_", "")
    for name, codec in _PG_TO_PYTHON.items():
        if name.replace("_", "") == key:
            return codec
    try:
        return codecs.lookup(pg_name).name
    except LookupError:
        return "utf-8"
