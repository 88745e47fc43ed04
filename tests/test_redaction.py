"""``redaction.parameters = "hash"``: a keyed hash, so logs cannot confirm a guessed value."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys

import pytest

from pgproxy.config import ConfigError, load
from pgproxy.tracker.redaction import HashKeySource, ParameterMode, RedactionPolicy

EMAIL = b"demo@aa.io"


def test_hash_is_not_a_plain_digest_of_the_value() -> None:
    shown = RedactionPolicy(parameters=ParameterMode.HASH).parameter("demo@aa.io", EMAIL, "email_param")
    assert shown.startswith("hmac-sha256:")
    assert hashlib.sha256(EMAIL).hexdigest()[:16] not in shown  # the guess a log reader could check before


def test_configured_key_gives_hashes_that_correlate_and_can_be_reproduced() -> None:
    policy = RedactionPolicy(parameters=ParameterMode.HASH, hash_key=b"deployment key")
    assert policy.hash_key_source is HashKeySource.CONFIGURED
    assert policy.parameter(None, EMAIL, None) == policy.parameter(None, EMAIL, None)
    assert policy.parameter(None, EMAIL, None) != policy.parameter(None, b"other@aa.io", None)
    expected = hmac.new(b"deployment key", EMAIL, hashlib.sha256).hexdigest()[:16]
    assert policy.parameter(None, EMAIL, None) == "hmac-sha256:" + expected
    other = RedactionPolicy(parameters=ParameterMode.HASH, hash_key=b"another deployment")
    assert other.parameter(None, EMAIL, None) != policy.parameter(None, EMAIL, None)
    assert "deployment key" not in repr(policy)


def test_without_a_key_hashes_correlate_within_a_process_only() -> None:
    one, two = RedactionPolicy(parameters=ParameterMode.HASH), RedactionPolicy(parameters=ParameterMode.HASH)
    assert one.hash_key_source is HashKeySource.RANDOM
    assert one.parameter(None, EMAIL, None) == two.parameter(None, EMAIL, None)
    code = (
        "from pgproxy.tracker.redaction import RedactionPolicy, ParameterMode;"
        "print(RedactionPolicy(parameters=ParameterMode.HASH).parameter(None, b'demo@aa.io', None))"
    )
    elsewhere = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert elsewhere.stdout.strip().startswith("hmac-sha256:")
    assert elsewhere.stdout.strip() != one.parameter(None, EMAIL, None)


def test_key_comes_from_configuration_or_environment() -> None:
    config = load(env={"PGPROXY_REDACTION_PARAMETERS": "hash", "PGPROXY_REDACTION_HASH_KEY": "from-env"})
    policy = config.tracker_options().redaction
    assert policy.hash_key == b"from-env" and policy.parameters is ParameterMode.HASH
    assert load(env={}).tracker_options().redaction.hash_key_source is HashKeySource.RANDOM


def test_configuration_errors_do_not_repeat_a_key() -> None:
    """A mistyped variable or a bad value names the option, never the secret it holds."""
    for env in ({"PGPROXY_REDACTION_HASHKEY": "s3cret-value"}, {"PGPROXY_REDACTION_HASH_KEYS": "s3cret-value"}):
        with pytest.raises(ConfigError) as err:
            load(env=env)
        assert "s3cret-value" not in str(err.value) and "PGPROXY_REDACTION_HASH" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load(overrides={"redaction.hash_key": 1234567})
    assert "1234567" not in str(err.value) and "redaction.hash_key" in str(err.value)


def test_sql_without_quotes_or_dollars_is_shown_as_the_masking_would_show_it() -> None:
    """mask_sql_prefix answers such texts itself (no literal to mask) without mask_sql's cache: the same text."""
    from pgproxy.protocol.values import cap_text
    from pgproxy.tracker.sql import mask_sql, mask_sql_prefix
    from tests.sql_corpus import STATEMENTS, UNPARSABLE

    policies = [RedactionPolicy(), RedactionPolicy(sensitive_names=""), RedactionPolicy(mask_sql_literals=True)]
    texts = [
        *STATEMENTS,
        *UNPARSABLE,
        "UPDATE users SET password = 5 WHERE id = 1",
        "SELECT 1 -- it's",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "SELECT $1, $$it's$$, $2",
        "SELECT $1$x$1$",
        "SELECT $a$secret$a$ = $1",
        "SELECT foo$bar, $12",
        "UPDATE users SET password = $1 WHERE id = $2",
        "UPDATE users SET password = 'hunter2' WHERE id = $1",
        "ALTER ROLE app PASSWORD $pw$hunter2$pw$",
        "CREATE ROLE app PASSWORD 'hunter2'",
    ]
    plain = [t for t in texts if "'" not in t and "$" not in t]
    assert len(plain) > 20 and len(plain) < len(texts)
    for policy in policies:
        pattern = policy._pattern
        for text in texts:
            for limit in (len(text), len(text) + 1, 4096):
                expected = cap_text(mask_sql(text, pattern, policy.mask_sql_literals), limit)
                assert mask_sql_prefix(text, limit, pattern, policy.mask_sql_literals) == expected
                assert policy.sql(text, limit) == expected
            for limit in range(1, len(text)):  # a prefix shown, what follows counted
                head = mask_sql(text[:limit], pattern, policy.mask_sql_literals, True)[:limit]
                expected = f"{head}…[+{len(text) - limit} chars]"
                assert mask_sql_prefix(text, limit, pattern, policy.mask_sql_literals) == expected
        if policy.sensitive_names:  # (without a column pattern only the PASSWORD keyword's literal is masked)
            assert "hunter2" not in "".join(policy.sql(text, 4096) for text in texts)
        if policy.mask_sql_literals:
            assert policy.sql("SELECT 5", 100) == "SELECT ?"


def test_a_policy_remembers_which_names_are_sensitive_within_a_bound() -> None:
    policy = RedactionPolicy()
    names = [f"col{i}" for i in range(3000)] + ["password", "user_pwd", "Token", "aid"]
    for _ in range(2):  # the second pass answers from what was remembered (or searched again after a clear)
        assert [n for n in names if policy.is_sensitive(n)] == ["password", "user_pwd", "Token"]
        assert len(policy._sensitive) <= 1024
    assert not policy.is_sensitive("") and not policy.is_sensitive(None)
    assert not RedactionPolicy(sensitive_names="").is_sensitive("password")
