"""Passwords never reach the logs: any auth method, any detail level, hex dumps included."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re

import asyncpg
import psycopg
import pytest

from pgproxy.demo.embedded import EmbeddedPostgres
from pgproxy.offline.capture import parse_hexdump
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail
from tests.conftest import PASSWORDS
from tests.harness import ProxyHarness

NEW_PASSWORD = "Rotated-Secret-Pa55-XYZ"


def _forbidden(user: str, password: str) -> list[bytes]:
    md5_inner = hashlib.md5((password + user).encode()).hexdigest()
    return [password.encode(), md5_inner.encode(), NEW_PASSWORD.encode()]


def _all_logged_bytes(text: str) -> list[bytes]:
    """Every log line, plus the bytes behind every hex dump (so a secret split across dump lines is found)."""
    out = [text.encode()]
    for line in text.splitlines():
        dump = json.loads(line).get("hex")
        if dump:
            out.append(b"".join(parse_hexdump(dump)))
    return out


@pytest.mark.parametrize("detail", list(Detail), ids=lambda d: d.name.lower())
@pytest.mark.parametrize("user", sorted(PASSWORDS))
def test_passwords_never_logged(pg: EmbeddedPostgres, user: str, detail: Detail) -> None:
    password = PASSWORDS[user]
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(detail=detail)) as proxy:
        with psycopg.connect(proxy.dsn(user=user, password=password, sslmode="disable")) as conn:
            assert conn.execute("SELECT username FROM users WHERE id = %s", (1,)).fetchone() == ("Demo",)
            conn.execute("SELECT hashed_password FROM users").fetchall()

        async def via_asyncpg() -> None:
            conn = await asyncpg.connect(proxy.dsn(user=user, password=password))
            await conn.fetch("SELECT email, hashed_password FROM users")
            await conn.close()

        asyncio.run(via_asyncpg())
        with psycopg.connect(proxy.dsn(sslmode="disable"), autocommit=True) as admin:
            admin.execute(f"CREATE ROLE tmp_{user}_{detail.name.lower()} PASSWORD '{NEW_PASSWORD}'")
            admin.execute(f"ALTER ROLE tmp_{user}_{detail.name.lower()} PASSWORD '{NEW_PASSWORD}'")
            admin.execute(f"DROP ROLE tmp_{user}_{detail.name.lower()}")
        proxy.wait_idle()
        text = proxy.text()
        ready = proxy.events("session.ready", user=user)
        assert ready, "the authenticated sessions were logged"
        expected_method = {"scram_user": "sasl", "md5_user": "md5", "clear_user": "cleartext_password"}[user]
        assert {r["auth_method"] for r in ready} == {expected_method}
        for blob in _all_logged_bytes(text):
            for secret in _forbidden(user, password):
                assert secret not in blob
            # The md5 response ("md5" + 32 hex digits, salted) and SCRAM payloads
            # (GS2 header "n,,n=", channel binding "c=biws"), raw or hex-encoded.
            assert not re.search(rb"md5[0-9a-f]{32}", blob)
            for marker in (b"n,,n=", b"c=biws"):
                assert marker not in blob and marker.hex().encode() not in blob
        stored_hash = pg.psql("SELECT hashed_password FROM users WHERE id = 1").strip()
        assert stored_hash not in text
        if detail >= Detail.MESSAGE:
            assert "[redacted]" in text  # the secret-bearing messages were logged, withheld


def test_wrong_password_is_logged_as_auth_failure(pg: EmbeddedPostgres) -> None:
    with ProxyHarness(("127.0.0.1", pg.port), TrackerOptions(detail=Detail.WIRE)) as proxy:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proxy.dsn(user="scram_user", password="Wrong-Guess-123", sslmode="disable"))
        proxy.wait_idle()
        (failed,) = proxy.events("session.auth_failed")
        assert failed["sqlstate"] == "28P01" and failed["user"] == "scram_user"
        assert "Wrong-Guess-123" not in proxy.text()
