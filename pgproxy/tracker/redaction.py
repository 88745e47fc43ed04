"""What may appear in a log: the redaction policy, applied before records exist.

Policy lives here, in the sans-IO tracker, because only the tracker knows which
bytes of a message belong to which column or parameter; the log sink adds a
last key-based scrub as defence in depth.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Final

from pgproxy.tracker.sql import mask_sql, mask_sql_prefix

#: Shown instead of a withheld value.
REDACTED: Final = "[redacted]"

#: Column and parameter names masked by default: passwords and their hashes,
#: secrets, tokens, API and private keys, credentials. Over-matching (say a
#: ``passenger`` column) is the safe failure.
DEFAULT_SENSITIVE_NAMES: Final = r"pass|pwd|secret|token|api[_-]?key|private[_-]?key|credential|salt"


class ParameterMode(enum.Enum):
    """How statement parameter values are shown."""

    SHOW = "show"
    """Decoded values (names matching the sensitive pattern still masked)."""
    HASH = "hash"
    """A short HMAC-SHA256 of the raw bytes under a secret key: equal values
    correlate within a deployment, and a guessed value cannot be confirmed
    without the key."""
    HIDE = "hide"
    """Nothing but the count."""


class HashKeySource(enum.Enum):
    """Where the key of ``parameters = "hash"`` comes from (said at start-up; the key itself never is)."""

    CONFIGURED = "configured"
    """``redaction.hash_key`` / ``PGPROXY_REDACTION_HASH_KEY``: hashes correlate across restarts and instances."""
    RANDOM = "random"
    """None configured: a random key for this process, so hashes correlate within this run only."""


# The modes as module constants: a member read through its class (``ParameterMode.SHOW``)
# goes through the enum machinery, ~800 instructions under CPython 3.11, and every
# logged parameter asks.
_SHOW: Final = ParameterMode.SHOW
_HASH: Final = ParameterMode.HASH

#: The key used when none is configured: random, made once per process so that
#: every session of one pgproxy hashes alike.
_PROCESS_HASH_KEY: Final = secrets.token_bytes(32)

#: Prefix of a hashed parameter: the algorithm, so a reader knows a key is involved.
HASH_PREFIX: Final = "hmac-sha256:"
#: Names whose sensitivity a policy remembers (then it starts over): column and parameter names repeat.
_NAMES_REMEMBERED: Final = 1024


@dataclass(frozen=True, slots=True)
class RedactionPolicy:
    """Which values the tracker withholds.

    Attributes:
        parameters: how parameter values are shown.
        sensitive_names: case-insensitive regex; matching column names and
            parameter names (inferred from the SQL) are masked. Empty disables.
        mask_sql_literals: replace every literal in SQL text with ``?``.
        hash_key: the HMAC key for ``parameters = HASH``; empty means a random
            key made once per process. Kept out of ``repr`` so it cannot
            reach a log through one.
    """

    parameters: ParameterMode = ParameterMode.SHOW
    sensitive_names: str = DEFAULT_SENSITIVE_NAMES
    mask_sql_literals: bool = False
    hash_key: bytes = field(default=b"", repr=False)
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    # name -> sensitive: the regex search cost ~0.4 µs per parameter of every Bind
    _sensitive: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.compile(self.sensitive_names, re.IGNORECASE) if self.sensitive_names else None
        object.__setattr__(self, "_pattern", pattern)

    @property
    def hash_key_source(self) -> HashKeySource:
        return HashKeySource.CONFIGURED if self.hash_key else HashKeySource.RANDOM

    def hash_value(self, raw: bytes) -> str:
        """The keyed hash shown for a parameter in ``HASH`` mode (64 bits of HMAC-SHA256, hex)."""
        digest = hmac.new(self.hash_key or _PROCESS_HASH_KEY, raw, hashlib.sha256).hexdigest()
        return HASH_PREFIX + digest[:16]

    def is_sensitive(self, name: str | None) -> bool:
        """The name matches ``sensitive_names`` (remembered per name)."""
        if not name or self._pattern is None:
            return False
        known = self._sensitive.get(name)
        if known is None:
            known = self._pattern.search(name) is not None
            if len(self._sensitive) >= _NAMES_REMEMBERED:
                self._sensitive.clear()
            self._sensitive[name] = known
        return known

    def parameter(self, value: Any, raw: bytes | None, name: str | None) -> Any:
        """The loggable form of one parameter value."""
        if raw is None:
            return None
        if self.is_sensitive(name):
            return REDACTED
        mode = self.parameters
        if mode is _SHOW:
            return value
        if mode is _HASH:
            return self.hash_value(raw)
        return REDACTED

    def sql(self, text: str, limit: int | None = None) -> str:
        """SQL text with password and sensitive-column literals masked.

        With ``limit``, only the first ``limit`` characters are analysed and
        shown, ending with how many were cut (``…[+N chars]``).
        """
        if limit is not None:
            return mask_sql_prefix(text, limit, self._pattern, self.mask_sql_literals)
        return mask_sql(text, self._pattern, self.mask_sql_literals)
