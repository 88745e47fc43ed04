"""Built-in PostgreSQL type OIDs used by the value codecs.

Values from the PostgreSQL source, ``src/include/catalog/pg_type.dat``
(stable across releases: built-in OIDs are never reassigned). Kept by hand
because only the types pgproxy decodes need a name here; tests/test_oids.py
checks every entry against a live server's ``pg_type``.
"""

from __future__ import annotations

from typing import Final

BOOL: Final = 16
BYTEA: Final = 17
CHAR: Final = 18  # "char", the one-byte internal type
NAME: Final = 19
INT8: Final = 20
INT2: Final = 21
INT2VECTOR: Final = 22
INT4: Final = 23
REGPROC: Final = 24
TEXT: Final = 25
OID: Final = 26
TID: Final = 27
XID: Final = 28
CID: Final = 29
OIDVECTOR: Final = 30
JSON: Final = 114
XML: Final = 142
CIDR: Final = 650
FLOAT4: Final = 700
FLOAT8: Final = 701
UNKNOWN: Final = 705
MACADDR8: Final = 774
MONEY: Final = 790
MACADDR: Final = 829
INET: Final = 869
ACLITEM: Final = 1033
BPCHAR: Final = 1042
VARCHAR: Final = 1043
DATE: Final = 1082
TIME: Final = 1083
TIMESTAMP: Final = 1114
TIMESTAMPTZ: Final = 1184
INTERVAL: Final = 1186
TIMETZ: Final = 1266
BIT: Final = 1560
VARBIT: Final = 1562
NUMERIC: Final = 1700
REGPROCEDURE: Final = 2202
REGOPER: Final = 2203
REGOPERATOR: Final = 2204
REGCLASS: Final = 2205
REGTYPE: Final = 2206
RECORD: Final = 2249
CSTRING: Final = 2275
VOID: Final = 2278
UUID: Final = 2950
JSONB: Final = 3802
JSONPATH: Final = 4072
REGNAMESPACE: Final = 4089
REGROLE: Final = 4096
XID8: Final = 5069

#: Array type OID -> element type OID.
ARRAY_ELEMENT: Final[dict[int, int]] = {
    143: XML,
    199: JSON,
    651: CIDR,
    775: MACADDR8,
    791: MONEY,
    1000: BOOL,
    1001: BYTEA,
    1002: CHAR,
    1003: NAME,
    1005: INT2,
    1006: INT2VECTOR,
    1007: INT4,
    1008: REGPROC,
    1009: TEXT,
    1010: TID,
    1011: XID,
    1012: CID,
    1013: OIDVECTOR,
    1014: BPCHAR,
    1015: VARCHAR,
    1016: INT8,
    1021: FLOAT4,
    1022: FLOAT8,
    1028: OID,
    1034: ACLITEM,
    1040: MACADDR,
    1041: INET,
    1115: TIMESTAMP,
    1182: DATE,
    1183: TIME,
    1185: TIMESTAMPTZ,
    1187: INTERVAL,
    1231: NUMERIC,
    1263: CSTRING,
    1270: TIMETZ,
    1561: BIT,
    1563: VARBIT,
    2207: REGPROCEDURE,
    2208: REGOPER,
    2209: REGOPERATOR,
    2210: REGCLASS,
    2211: REGTYPE,
    2287: RECORD,
    2951: UUID,
    3807: JSONB,
    4073: JSONPATH,
    4090: REGNAMESPACE,
    4097: REGROLE,
    271: XID8,
}

#: Readable names for OIDs, for logs (``type`` of a RowDescription column).
NAMES: Final[dict[int, str]] = {
    BOOL: "bool",
    BYTEA: "bytea",
    CHAR: "char",
    NAME: "name",
    INT8: "int8",
    INT2: "int2",
    INT2VECTOR: "int2vector",
    INT4: "int4",
    REGPROC: "regproc",
    TEXT: "text",
    OID: "oid",
    TID: "tid",
    XID: "xid",
    CID: "cid",
    OIDVECTOR: "oidvector",
    JSON: "json",
    XML: "xml",
    CIDR: "cidr",
    FLOAT4: "float4",
    FLOAT8: "float8",
    UNKNOWN: "unknown",
    MACADDR8: "macaddr8",
    MONEY: "money",
    MACADDR: "macaddr",
    INET: "inet",
    ACLITEM: "aclitem",
    BPCHAR: "bpchar",
    VARCHAR: "varchar",
    DATE: "date",
    TIME: "time",
    TIMESTAMP: "timestamp",
    TIMESTAMPTZ: "timestamptz",
    INTERVAL: "interval",
    TIMETZ: "timetz",
    BIT: "bit",
    VARBIT: "varbit",
    NUMERIC: "numeric",
    REGPROCEDURE: "regprocedure",
    REGOPER: "regoper",
    REGOPERATOR: "regoperator",
    REGCLASS: "regclass",
    REGTYPE: "regtype",
    RECORD: "record",
    CSTRING: "cstring",
    VOID: "void",
    UUID: "uuid",
    JSONB: "jsonb",
    JSONPATH: "jsonpath",
    REGNAMESPACE: "regnamespace",
    REGROLE: "regrole",
    XID8: "xid8",
}


def type_name(oid: int) -> str:
    """Readable name of a type OID (``int4``, ``_text`` for arrays, else ``oid:N``)."""
    name = NAMES.get(oid)
    if name is not None:
        return name
    element = ARRAY_ELEMENT.get(oid)
    if element is not None:
        return "_" + NAMES.get(element, f"oid:{element}")
    return f"oid:{oid}"
