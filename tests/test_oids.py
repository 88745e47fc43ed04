"""The built-in OID table agrees with a live server's ``pg_type``, for every server version the suite runs."""

from __future__ import annotations

from pgproxy.demo.embedded import EmbeddedPostgres
from pgproxy.protocol import oids


def _pg_type(pg: EmbeddedPostgres) -> dict[int, tuple[str, int, int]]:
    """oid -> (typname, typelem, typarray) of every built-in type."""
    out = pg.psql("SELECT oid, typname, typelem, typarray FROM pg_type WHERE oid < 16384")
    rows = (line.split("|") for line in out.splitlines())
    return {int(oid): (name, int(elem), int(array)) for oid, name, elem, array in rows}


def test_names_match_pg_type(any_pg: EmbeddedPostgres) -> None:
    catalog = _pg_type(any_pg)
    wrong = {oid: (name, catalog.get(oid, ("missing",))[0]) for oid, name in oids.NAMES.items()}
    assert {oid: pair for oid, pair in wrong.items() if pair[0] != pair[1]} == {}


def test_array_types_name_their_real_element(any_pg: EmbeddedPostgres) -> None:
    catalog = _pg_type(any_pg)
    wrong = {
        array: (element, catalog.get(array))
        for array, element in oids.ARRAY_ELEMENT.items()
        if array not in catalog or catalog[array][1] != element or catalog[element][2] != array
    }
    assert wrong == {}
    # Every named type that has an array type has it in the table, so its arrays decode too.
    missing = {
        oid: catalog[oid][2] for oid in oids.NAMES if catalog[oid][2] and catalog[oid][2] not in oids.ARRAY_ELEMENT
    }
    assert missing == {}
    assert oids.type_name(2207) == "_regprocedure" and oids.type_name(2211) == "_regtype"
