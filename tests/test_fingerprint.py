"""Statement analysis with PostgreSQL's parser: fingerprints, summaries, splitting, the cache."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pgproxy.tracker import fingerprint as fp
from pgproxy.tracker.fingerprint import (
    DEFAULT_MAX_PARSE_CHARS,
    DEFAULT_MAX_SPLIT_CHARS,
    MAX_SUMMARY_CHARS,
    FallbackReason,
    Source,
    StatementAnalyzer,
    literal_key,
)


@pytest.mark.parametrize(
    ("sql", "operation", "summary", "collection"),
    [
        # OpenTelemetry's own examples ("Generating a summary of the query")
        ("SELECT * FROM wuser_table WHERE username = 'jdoe'", "SELECT", "SELECT wuser_table", "wuser_table"),
        (
            "INSERT INTO shipping_details (order_id, address) SELECT order_id, address FROM orders WHERE order_id = 7",
            "INSERT",
            "INSERT shipping_details SELECT orders",
            None,
        ),
        ("SELECT * FROM songs, artists WHERE songs.artist_id = artists.id", "SELECT", "SELECT songs artists", None),
        (
            "SELECT order_date FROM (SELECT * FROM orders o JOIN customers c ON o.customer_id = c.customer_id) x",
            "SELECT",
            "SELECT SELECT orders customers",
            None,
        ),
        ('SELECT * FROM "song list", Public.Artists', "SELECT", 'SELECT "song list" Public.Artists', None),
        # the shapes the issue names
        (
            "WITH recent AS (SELECT id FROM orders WHERE ts > now() - interval '1 day') "
            "UPDATE accounts a SET total = a.total + 1 FROM recent r WHERE a.id = r.id",
            "UPDATE",
            "SELECT orders UPDATE accounts",
            None,
        ),
        (
            "INSERT INTO counters (k, v) VALUES ('a', 1) ON CONFLICT (k) DO UPDATE SET v = counters.v + excluded.v",
            "INSERT",
            "INSERT counters",
            "counters",
        ),
        ("UPDATE t1 SET a = t2.a FROM t2 WHERE t1.id = t2.id", "UPDATE", "UPDATE t1 t2", None),
        ("DELETE FROM s.t USING u WHERE t.a = u.a", "DELETE", "DELETE s.t u", None),
        (
            "CREATE FUNCTION add1(a int) RETURNS int LANGUAGE plpgsql AS $fn$ BEGIN RETURN a + 1; END $fn$",
            "CREATE FUNCTION",
            "CREATE FUNCTION add1",
            "add1",
        ),
        ("CALL refresh_totals(3)", "CALL", "CALL refresh_totals", "refresh_totals"),
        ("DROP TABLE IF EXISTS a, s.b", "DROP TABLE", "DROP TABLE a s.b", None),
        ("CREATE INDEX ON users (email)", "CREATE INDEX", "CREATE INDEX users", "users"),
        ("SELECT 1 UNION ALL SELECT 2 FROM t", "SELECT", "SELECT SELECT t", "t"),
        ("begin", "BEGIN", "BEGIN", None),
        ("SET search_path = app, public", "SET", "SET", None),
        ("EXPLAIN ANALYZE SELECT * FROM t", "EXPLAIN", "EXPLAIN SELECT t", "t"),
        ("COPY t (a, b) FROM STDIN", "COPY", "COPY t", "t"),
        ("TRUNCATE pgbench_history", "TRUNCATE TABLE", "TRUNCATE TABLE pgbench_history", "pgbench_history"),
        ("SELECT 1", "SELECT", "SELECT", None),
        ("/* app:web */ SELECT x FROM t -- trailing", "SELECT", "SELECT t", "t"),
    ],
)
def test_operation_summary_and_collection(sql: str, operation: str, summary: str, collection: str | None) -> None:
    a = StatementAnalyzer().analyze(sql)
    assert a.source is Source.PARSER
    assert (a.operation, a.summary, a.collection) == (operation, summary, collection)
    assert a.fields["db.query.summary"] == summary
    assert a.fields.get("db.collection.name") == collection


def test_summary_is_cut_at_a_part_boundary() -> None:
    tables = [f"table_with_a_long_name_{i:03}" for i in range(40)]
    a = StatementAnalyzer().analyze("SELECT * FROM " + ", ".join(tables))
    assert a.summary is not None and len(a.summary) <= MAX_SUMMARY_CHARS
    assert a.summary.split(" ")[-1] in tables  # no half name


def test_literal_variants_share_fingerprint_and_cache_entry() -> None:
    analyzer = StatementAnalyzer()
    texts = [
        f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};"
        for delta, aid in ((-4049, 63210), (17, 5), (0, 99999), (-1, 1))
    ]
    results = [analyzer.analyze(t) for t in texts]
    assert len({r.fingerprint for r in results}) == 1
    assert results[0].normalized == "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;"
    assert analyzer.counters["parsed"] == 2  # "+ -4049" and "+ 17" strip differently; then cache hits
    assert analyzer.counters["literal_key_hits"] == 2
    strings = [
        analyzer.analyze(f"SELECT * FROM users WHERE email = '{e}' AND id IN (1, 2, {n})")
        for e, n in (("a@x", 3), ("it''s", 4))
    ]
    assert strings[0] is strings[1]
    # IN lists of other lengths are another text but the same fingerprint
    assert analyzer.analyze("SELECT * FROM users WHERE email = 'z' AND id IN (1)").fingerprint == strings[0].fingerprint


def test_literals_that_matter_are_not_shared() -> None:
    """COPY's file name and type modifiers are not normalised: such texts are cached by their full text."""
    analyzer = StatementAnalyzer()
    a = analyzer.analyze("COPY t FROM '/tmp/a.csv'")
    b = analyzer.analyze("COPY t FROM '/tmp/b.csv'")
    assert a.fingerprint != b.fingerprint
    assert analyzer.counters["literal_key_hits"] == 0
    assert analyzer.analyze("SELECT 1::varchar(10)").normalized != analyzer.analyze("SELECT 1::varchar(20)").normalized


def test_a_kept_literal_and_an_unmarked_constant_do_not_make_texts_share_an_entry() -> None:
    """Counting replacements is not enough: the type modifier is kept and ``true`` replaced (one each),
    so a count would match and the second text would be shown as ``varchar(10)``."""
    analyzer = StatementAnalyzer()
    first = analyzer.analyze("SELECT 'x'::varchar(10), true FROM t")
    second = analyzer.analyze("SELECT 'y'::varchar(20), true FROM t")
    assert first.normalized == "SELECT $1::varchar(10), $2 FROM t"
    assert second.normalized == "SELECT $1::varchar(20), $2 FROM t"
    assert analyzer.counters["literal_key_hits"] == 0
    # a shape with a marked literal the parser keeps is never shared: each text is cached by itself
    assert analyzer.analyze("SELECT 'z'::varchar(10), true FROM t").normalized == first.normalized
    assert analyzer.counters["literal_key_hits"] == 0 and analyzer.counters["parsed"] == 3


def test_normalized_text_keeps_parameters_and_masks_every_literal() -> None:
    a = StatementAnalyzer().analyze(
        "SELECT $1, 'secret', E'it\\'s', 42, 4.2e1, B'0101', X'1F', interval '1 day' FROM t WHERE x = $2"
    )
    assert "secret" not in a.normalized and "42" not in a.normalized and "0101" not in a.normalized
    assert a.normalized.startswith("SELECT $1, $3, $4, $5, $6, $7, $8, interval $9")


def test_unparsable_text_falls_back_to_the_lexer_and_is_counted() -> None:
    analyzer = StatementAnalyzer()
    a = analyzer.analyze("SELEKT * FROM t WHERE a = 'x'")
    b = analyzer.analyze("SELEKT * FROM t WHERE a = 'y'")
    assert a.source is Source.LEXER and a.fallback is FallbackReason.SYNTAX_ERROR
    assert a.fingerprint.startswith("lexical:") and a.fingerprint == b.fingerprint
    assert a.normalized == "SELEKT * FROM t WHERE a = ?"
    assert a.operation == "SELEKT"
    assert analyzer.counters["fallback.syntax_error"] == 2
    off = StatementAnalyzer(use_parser=False)
    c = off.analyze("SELECT 1")
    assert c.fallback is FallbackReason.PARSER_UNAVAILABLE and c.operation == "SELECT"
    assert off.counters["fallback.parser_unavailable"] == 1
    long = StatementAnalyzer(max_parse_chars=100).analyze("SELECT " + "1 + " * 100 + "1")
    assert long.fallback is FallbackReason.TOO_LONG


def test_the_parser_takes_texts_up_to_8_kib_and_splits_queries_up_to_32_kib() -> None:
    """Token-dense text costs the parser ~0.25 ms per KiB and more beyond 8 KiB; its split stays cheap to 32 KiB."""
    analyzer = StatementAnalyzer()
    columns = "SELECT " + ", ".join(f"c{i}" for i in range(2000)) + " FROM t"
    within = columns[: columns.rindex(",", 0, DEFAULT_MAX_PARSE_CHARS - 7)] + " FROM t"
    assert len(within) <= DEFAULT_MAX_PARSE_CHARS < len(columns)
    assert analyzer.analyze(within).source is Source.PARSER
    beyond = analyzer.analyze(columns)
    assert beyond.fallback is FallbackReason.TOO_LONG and beyond.operation == "SELECT"
    assert beyond.fingerprint.startswith("lexical:") and analyzer.counters["fallback.too_long"] == 1
    body = "PERFORM 1; " * 1500  # a 16 KiB function body full of semicolons: the parser, not the lexer, splits it
    script = f"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN {body} END $$; SELECT 2;"
    assert DEFAULT_MAX_PARSE_CHARS < len(script) <= DEFAULT_MAX_SPLIT_CHARS
    assert analyzer.split(script) == [script[: script.index("$$;") + 2], "SELECT 2"]
    assert not any(k.startswith("split_fallback") for k in analyzer.counters)


def test_split_like_the_server() -> None:
    analyzer = StatementAnalyzer()
    text = (
        "SELECT 1; /* ; /* nested ; */ still comment ; */ SELECT $$;$$;"
        " CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $b$ BEGIN PERFORM 1; RETURN 1; END $b$;"
        " ;; SELECT 'a;b' -- ; comment\n"
    )
    assert analyzer.split(text) == [
        "SELECT 1",
        "SELECT $$;$$",
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $b$ BEGIN PERFORM 1; RETURN 1; END $b$",
        "SELECT 'a;b' -- ; comment",  # the last statement runs to the end of the text, as in the server
    ]
    assert analyzer.split("SELECT 1") == ["SELECT 1"]
    # a syntax error: the server rejects the whole Query; the lexer still splits it (counted)
    assert analyzer.split("SELEKT 1; SELECT 2") == ["SELEKT 1", "SELECT 2"]
    assert analyzer.counters["split_fallback.syntax_error"] == 1


@pytest.mark.parametrize(
    "hostile",
    [
        "SELECT 1 /*" + " x" * 10_000,  # unterminated comment
        "SELECT 1 " + "/*" * 10_000,  # nested openings, never closed
        "SELECT " + "'" * 20_001,  # odd number of quotes
        "SELECT " + "$a$" * 7_000 + "$b",  # dollar tags
        "SELECT 1 /*" + " x" * 10_000 + " */ FROM t",  # a 20 KB comment that ends
        "SELECT " + "--\n" * 7_000 + "1",
        "SELECT " + "1," * 10_000 + "1",
        "SELECT " + "E'\\\\'" * 4_000,
    ],
)
def test_hostile_texts_take_linear_time(hostile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of these would make a quadratic scanner re-read the text per character.

    Counted, not timed: every regex search the stripping pass makes is
    wrapped, and the characters they examine stay within a small multiple of
    the text's length.
    """
    examined = 0

    class Counting:
        def __init__(self, pattern: re.Pattern[str]) -> None:
            self.pattern = pattern

        def search(self, text: str, pos: int = 0) -> re.Match[str] | None:
            nonlocal examined
            m = self.pattern.search(text, pos)
            examined += (m.end() if m else len(text)) - pos
            return m

    monkeypatch.setattr(fp, "_INTERESTING", Counting(fp._INTERESTING))
    monkeypatch.setattr(fp, "_COMMENT_EDGE", Counting(fp._COMMENT_EDGE))
    literal_key(hostile)  # the result may be None (left open): the text is then used as is
    assert examined <= 2 * len(hostile)
    analyzer = StatementAnalyzer()
    analyzer.analyze(hostile)  # the parser (C) and the lexical fallback both return
    analyzer.split(hostile + ";")


def rss_mib() -> float:
    """Resident memory now (not the peak), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
def test_cache_bounds_hold_under_100k_distinct_texts() -> None:
    analyzer = StatementAnalyzer()  # the defaults: 10,000 entries, 32 MiB
    before = rss_mib()
    for i in range(100_000):
        analyzer.analyze(f"SELECT c{i % 50_000}, '{i}' FROM table_{i} WHERE id = $1")
    after = rss_mib()
    assert analyzer.entries <= 10_000 and analyzer.cached_bytes <= 32 * 1024 * 1024
    assert analyzer.counters["cache_evictions"] == analyzer.counters["cache_misses"] - analyzer.entries
    print(
        f"\n100k distinct texts: {analyzer.entries} entries, {analyzer.cached_bytes / 2**20:.1f} MiB by the cache's count;"
        f" RSS {before:.0f} -> {after:.0f} MiB"
    )
    small = StatementAnalyzer(max_entries=10, max_bytes=10_000)
    for i in range(50):
        small.analyze(f"SELECT * FROM t{i}")
    assert small.cached_bytes <= 10_000 and small.entries <= 10
    tight = StatementAnalyzer(max_entries=100_000, max_bytes=1024 * 1024)
    for i in range(20_000):
        tight.analyze(f"SELECT c{i} FROM table_{i}")
    assert tight.cached_bytes <= 1024 * 1024 and tight.entries < 20_000  # the byte bound binds first


def test_huge_texts_are_not_cached() -> None:
    analyzer = StatementAnalyzer(max_cached_chars=1000)
    text = "SELECT " + ", ".join(f"c{i}" for i in range(500)) + " FROM t"
    analyzer.analyze(text)
    analyzer.analyze(text)
    assert analyzer.entries == 0 and analyzer.counters["parsed"] == 2


@pytest.mark.parametrize(
    ("sql", "names"),
    [
        ("SELECT * FROM users WHERE users.username = $1::VARCHAR LIMIT $2::INTEGER", {1: "username"}),
        ("UPDATE users SET token = $1, (x, y) = ($2, $3) WHERE users.id = $4", {1: "token", 2: "x", 3: "y", 4: "id"}),
        # shapes the lexical inference misses
        ("SELECT * FROM users WHERE password IN ($1, $2)", {1: "password", 2: "password"}),
        ("SELECT * FROM users WHERE (username, password) = ($1, $2)", {1: "username", 2: "password"}),
        ("INSERT INTO users (username, password) SELECT $1, $2", {1: "username", 2: "password"}),
        ("INSERT INTO users (username, password) VALUES ($1, crypt($2, 'bf'))", {1: "username", 2: "password"}),
        ("SELECT id FROM users WHERE id = (SELECT id FROM t WHERE password = $1)", {1: "password"}),
        ('SELECT * FROM "Users" WHERE "Secret" = any($1)', {1: "Secret"}),
    ],
)
def test_parameter_names_for_redaction(sql: str, names: dict[int, str]) -> None:
    assert dict(StatementAnalyzer().analyze(sql).parameter_names) == names


def test_fast_paths_for_plain_text_agree_with_the_general_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text with no quote, dollar or comment skips the scanner loop and (one statement) the parser's split."""
    from pglast import parser

    from tests.sql_corpus import STATEMENTS

    plain = [s for s in STATEMENTS if fp._plain(s)]
    assert len(plain) >= 30
    analyzer = StatementAnalyzer()
    fast_keys = [literal_key(s) for s in plain]
    for sql in plain:
        assert analyzer.split(f"  {sql} ;\n") == [p.strip() for p in parser.split(f"  {sql} ;\n")], sql
    monkeypatch.setattr(fp, "_plain", lambda sql: False)
    assert [literal_key(s) for s in plain] == fast_keys


def test_the_plain_text_checks_agree_with_their_definitions(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_plain`` (substring tests) is "no quote, dollar or comment opener"; the ASCII bare-number pattern
    marks what the Unicode one marks on ASCII text; the plain fast path of ``literal_key`` gives the
    scanner loop's key on the corpus and on random texts of the characters that matter."""
    import random

    from tests.sql_corpus import STATEMENTS

    quoting = re.compile(r"['\"$]|--|/\*")
    rng = random.Random(11)
    alphabet = "0123456789._eE+-xXoObBaf$ t1(),'\"/*\n\u0663\u00e9"
    texts = [*STATEMENTS, *("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16))) for _ in range(50_000))]
    for text in texts:
        assert fp._plain(text) == (quoting.search(text) is None), text
        if text.isascii():
            assert fp._BARE_NUMBER_ASCII.subn("#", text) == fp._BARE_NUMBER.subn("#", text), text
    plain = [text for text in texts if fp._plain(text)]
    fast_keys = [literal_key(text) for text in plain]
    monkeypatch.setattr(fp, "_plain", lambda sql: False)  # the scanner loop: the general path
    assert [literal_key(text) for text in plain] == fast_keys
    for pattern in (fp._BARE_NUMBER, fp._BARE_NUMBER_ASCII):
        assert pattern.subn("#", "t1 = 1e-5 + .5 - 0x1F + a.5 + 0b + $2") == ("t1 = # + # - # + a.# + #b + $2", 5)


def test_keys_of_texts_ending_in_a_number_are_literal_keys() -> None:
    """The remembered head's key and one marker is ``literal_key`` of the whole text, remembered or not."""
    import random

    from tests.sql_corpus import STATEMENTS

    rng = random.Random(5)
    heads = [s.rstrip(";") for s in STATEMENTS]
    heads += ["SELECT 1 -- id = ", "SELECT '5' || ", "SELECT 1.", "SELECT 1e", "SELECT 1e-", "SELECT a", "x = $"]
    heads += ["/* open ", "SELECT 'open ", "SELECT $$ ", "SELECT é = ", "-- \n= ", "UPDATE t SET a = a + -"]
    alphabet = "0123456789 =(,<>-+.eE_x$'\"/*\nab"
    heads += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(5_000)]
    keys = fp.TrailingNumberKeys()
    # Digits that are not ASCII (Arabic-Indic three, superscript two): not a number to SQL, nor to the memo.
    endings = ((" = ", 42), ("", 7), ("(", "0012"), ("", ""), (" = ", "\u0663"), ("", "4\u00b2"))
    texts = [f"{head}{sep}{n}" for head in heads for sep, n in endings]
    for text in texts:
        for _ in range(3):  # noted, remembered, then keyed from the memo (the last head's, too)
            assert keys.key(text) == literal_key(text), text
        bare = text.rstrip("0123456789")  # the last head itself: no number after it
        assert keys.key(bare) == literal_key(bare), bare
    for text in (
        "\x005",
        "5",
        "",
    ):  # before any head is remembered (a NUL is no protocol text's, but keyed all the same)
        assert fp.TrailingNumberKeys().key(text) == literal_key(text), text
    assert keys.key("SELECT abalance FROM pgbench_accounts WHERE aid = 12345") == (
        "SELECT abalance FROM pgbench_accounts WHERE aid = \x00n",
        1,
    )


def test_counters_count_every_hit_in_the_order_first_counted() -> None:
    """Hits are plain integers on the hot path; the counters (and the stats.reported fields) read as a Counter would."""
    analyzer = StatementAnalyzer()
    analyzer.analyze("SELECT abalance FROM t WHERE aid = 1")
    analyzer.analyze("SELECT abalance FROM t WHERE aid = 2")  # a literal-key hit
    analyzer.analyze("SELECT $1")
    analyzer.analyze("SELECT $1")  # a hit on the text
    analyzer.split("SELECT 1; SELECT (")
    analyzer.analyze("SELECT (")
    analyzer.analyze("SELECT abalance FROM t WHERE aid = 3")
    assert [(k, v) for k, v in analyzer.snapshot().items() if k != "cache_bytes"] == [
        ("cache_misses", 3),
        ("parsed", 2),
        ("cache_hits", 3),
        ("literal_key_hits", 2),
        ("split_fallback.syntax_error", 1),
        ("fallback.syntax_error", 1),
        ("cache_entries", 3),
    ]
    assert analyzer.counters["cache_hits"] == 3 and analyzer.counters["cache_hits"] == 3  # added once


def test_deeply_nested_subqueries_skip_the_quadratic_normalisation() -> None:
    analyzer = StatementAnalyzer()
    deep = "SELECT " + "(SELECT " * 200 + "'secret'" + ")" * 200
    a = analyzer.analyze(deep)
    assert a.source is Source.PARSER and a.operation == "SELECT"
    assert "secret" not in a.normalized and analyzer.counters["normalize_skipped.deep"] == 1
    shallow = analyzer.analyze("SELECT (SELECT (SELECT 'x'))")
    assert shallow.normalized == "SELECT (SELECT (SELECT $1))"


def test_where_the_parser_does_better_than_the_lexer() -> None:
    """Shapes the lexical splitter and the regex parameter-name inference of tracker/sql.py get wrong
    (at the time of writing: the splitter cut SQL-standard function bodies and multi-action rules at
    their inner semicolons; the regexes attributed none of these parameters, so a password passed
    this way was logged)."""
    analyzer = StatementAnalyzer()
    assert analyzer.split(
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END; SELECT 3"
    ) == [
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END",
        "SELECT 3",
    ]
    assert analyzer.split("CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO u VALUES (1); NOTIFY t); SELECT 1") == [
        "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO u VALUES (1); NOTIFY t)",
        "SELECT 1",
    ]
    assert analyzer.parameter_names("SELECT * FROM users WHERE password IN ($1, $2)") == {1: "password", 2: "password"}
    assert analyzer.parameter_names("INSERT INTO users (username, password) SELECT $1, $2") == {
        1: "username",
        2: "password",
    }
    assert analyzer.parameter_names("INSERT INTO users (username, password) VALUES ($1, crypt($2, 'bf'))")[2] == (
        "password"
    )


def test_text_the_library_cannot_take_falls_back_instead_of_raising() -> None:
    """A lone surrogate (no UTF-8 for it) makes pglast raise UnicodeEncodeError: counted, described by the lexer."""
    analyzer = StatementAnalyzer()
    a = analyzer.analyze("SELECT '\udcff' FROM t")
    assert (a.source, a.fallback, a.operation) == (Source.LEXER, FallbackReason.PARSER_ERROR, "SELECT")
    assert analyzer.split("SELECT 1; SELECT '\udcff'") == ["SELECT 1", "SELECT '\udcff'"]
    assert analyzer.counters["fallback.parser_error"] == 1 and analyzer.counters["split_fallback.parser_error"] == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(["SELECT a", "SELECT b", "SELECT c", "SELECT d", "SELECT e", "SELECT 1", "SELECT 2"]),
        max_size=40,
    )
)
def test_analysis_cache_keeps_least_recently_used_order(texts: list[str]) -> None:
    """Using the newest analysis again skips the move to the end; the order stays the plain LRU's."""
    analyzer = StatementAnalyzer(max_entries=3, use_parser=False)
    model: dict[str, None] = {}
    for text in texts:
        analyzer.analyze(text)
        cached = text  # the lexer's analyses are cached under their text, never a literal key
        model.pop(cached, None)
        model[cached] = None
        while len(model) > 3:
            del model[next(iter(model))]
        assert list(analyzer._cache) == list(model)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(alphabet=st.sampled_from(list("ab ;\n\t\r\x0b\x0c\x1c\x85\u00a0\u2003\u3000'$-")), max_size=12))
def test_the_one_statement_check_says_what_stripping_and_counting_say(sql: str) -> None:
    """split()'s fast way for one terminated statement asks what the stripped copy and the count answered."""
    end = sql.find(";")
    if end < 0:
        return
    assert fp._one_terminated(sql, end) == (sql.rstrip().endswith(";") and sql.count(";") == 1)
    if fp._one_terminated(sql, end) and fp._plain(sql):
        only = sql.rstrip()[:-1].strip()
        assert StatementAnalyzer(use_parser=False).split(sql) == ([only] if only else [])


#: Statement heads the analyzer may remember, then see again with a number: plain ones (pgbench -S's
#: shape) and ones a quote, dollar sign, comment or semicolon makes other than plain.
_HEADS = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = ",
    "SELECT a FROM t WHERE b = 'x' AND c = ",
    "SELECT 1; SELECT ",
    "SELECT $1 = ",
    "SELECT 1 -- ;\n, ",
    "SELECT 2 /* c */ = ",
    "SELECT x ",
    "0",
]


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    remembered=st.lists(st.sampled_from(_HEADS), min_size=1, max_size=3),
    sql=st.one_of(
        st.builds(
            lambda head, number, end: head + number + end,
            st.sampled_from(_HEADS),
            st.text(alphabet="0123456789", max_size=3),
            st.sampled_from([";", "; ", ";\n", ";;", " ;", "-- ;", ""]),
        ),
        st.text(alphabet=st.sampled_from(list("SELCT x=12;'$-/*\n")), max_size=16),
    ),
)
@example(remembered=["SELECT x "], sql="SELECT 'x1;")  # as long as the head and a number, not it
def test_a_query_that_is_the_last_head_and_a_number_splits_as_the_general_way(remembered: list[str], sql: str) -> None:
    """split()'s check against the head answered last (no substring tests) gives the five tests' split.

    The general way is an analyzer whose last head can start no text (NUL
    never occurs in a protocol string, nor in these). Each head is analyzed twice, with two
    numbers, as a session's statements come: the second time its key is remembered.
    """
    analyzer = StatementAnalyzer(use_parser=False)
    for head in remembered:
        analyzer.analyze(head + "1")
        analyzer.analyze(head + "2")
    general = StatementAnalyzer(use_parser=False)
    general._literal_key._last_head = "\x00"
    end = sql.find(";")
    if end >= 0 and analyzer._literal_key.extends_last_head(sql[:end]):
        assert fp._plain(sql[:end])
    assert analyzer.split(sql) == general.split(sql)


def test_pgbench_queries_split_by_the_last_head() -> None:
    """pgbench -S's simple Queries take the check against the last head once their head is remembered."""
    analyzer = StatementAnalyzer(use_parser=False)
    head = "SELECT abalance FROM pgbench_accounts WHERE aid = "
    for number in (17, 4242):
        assert analyzer.split(f"{head}{number};") == [f"{head}{number}"]
        analyzer.analyze(f"{head}{number}")
    assert analyzer._literal_key.extends_last_head(f"{head}99")
    assert not analyzer._literal_key.extends_last_head(f"{head}'9'")
    assert not analyzer._literal_key.extends_last_head("SELECT 1")
