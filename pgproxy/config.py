"""Configuration: one schema, four sources (defaults < TOML file < environment < flags).

Every option is declared once in :data:`OPTIONS` with its type, default and
documentation; ``config.example.toml`` documents the same table and a test
keeps the two in step. Any invalid value raises :class:`ConfigError`, naming
the key, the bad value and where it came from; the CLI turns it into one line
on stderr and exit code 2.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from pgproxy.protocol.framing import DEFAULT_MAX_FRAME, PROTOCOL_MAX_LENGTH
from pgproxy.tracker.fingerprint import shared_analyzer
from pgproxy.tracker.options import QueryFilter, TextMode, TrackerOptions
from pgproxy.tracker.records import Detail
from pgproxy.tracker.redaction import DEFAULT_SENSITIVE_NAMES, ParameterMode, RedactionPolicy

ENV_PREFIX = "PGPROXY_"


class ConfigError(ValueError):
    """An invalid configuration value.

    Attributes:
        key: dotted option name (``log.detail``).
        value: the offending value, as given.
        source: where it came from (file path, ``environment PGPROXY_...``, ``--flag``).
    """

    def __init__(self, key: str, value: Any, reason: str, source: str = "") -> None:
        where = f" (from {source})" if source else ""
        super().__init__(f"{key} = {value!r}{where}: {reason}")
        self.key = key
        self.value = value
        self.source = source


# --------------------------------------------------------------------------- value parsers


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``host``, ``:port`` or a ``postgres://`` URL."""
    text = text.strip()
    if "://" in text:
        url = urlsplit(text)
        if url.scheme not in ("postgres", "postgresql"):
            raise ValueError(f"URL scheme must be postgres:// or postgresql://, not {url.scheme}://")
        try:
            port = url.port or default_port
        except ValueError as exc:
            raise ValueError(f"bad port in URL: {exc}") from None
        host = unquote(url.hostname or "") or "127.0.0.1"
        return host, port
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]]*)(?::(\d+))?", text)
    if not m:
        raise ValueError("expected host:port")
    host = m.group(1) or m.group(3) or "127.0.0.1"
    port_text = m.group(2) or m.group(4)
    port = int(port_text) if port_text else default_port
    if not 0 < port < 65536:
        raise ValueError(f"port {port} outside 1..65535")
    return host, port


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"choose one of {', '.join(choices)}")
        return text

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _number(kind: type, low: float | None = None, high: float | None = None) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, not {value!r}")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}") from None
        if low is not None and number < low:
            raise ValueError(f"must be at least {low}")
        if high is not None and number > high:
            raise ValueError(f"must be at most {high}")
        return number

    return parse


def _string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError("expected a list of strings (or a comma-separated string)")


def _regex(value: Any) -> str:
    text = str(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return text


def _listen_list(value: Any) -> str:
    """One address or several (a TOML list, or comma-separated); each ``host:port`` or a socket path."""
    items = _string_list(value)
    if not items:
        raise ValueError("expected at least one address")
    for item in items:
        if not item.startswith("/"):
            parse_hostport(item, 6432)
    return ", ".join(items)


def _address_or_empty(value: Any) -> str:
    text = _text(value).strip()
    if text:
        parse_hostport(text, 9090)
    return text


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


@dataclass(frozen=True, slots=True)
class Option:
    key: str
    default: Any
    parse: Callable[[Any], Any]
    doc: str


OPTIONS: tuple[Option, ...] = (
    Option(
        "proxy.listen",
        "127.0.0.1:6432",
        _listen_list,
        "host:port and/or Unix socket paths to accept clients on (a list, or comma-separated)",
    ),
    Option("proxy.upstream", "127.0.0.1:5432", _text, "the PostgreSQL server: host:port or a postgres:// URL"),
    Option("proxy.connect_timeout", 5.0, _number(float, 0.1, 300), "seconds to wait for the upstream connection"),
    Option(
        "proxy.startup_timeout",
        60.0,
        _number(float, 0, 3600),
        "seconds a connection gets to complete start-up and authentication (0 = no limit)",
    ),
    Option("proxy.loop", "uvloop", _choice("uvloop", "asyncio"), "event loop implementation"),
    Option("proxy.max_connections", 0, _number(int, 0), "client connections served at once (0 = no limit)"),
    Option(
        "proxy.min_sigterm_delay",
        0.0,
        _number(float, 0, 3600),
        "seconds to keep accepting after SIGTERM (for load balancers to notice)",
    ),
    Option(
        "proxy.max_sigterm_delay",
        10.0,
        _number(float, 0, 3600),
        "seconds busy sessions get to finish after the listeners close",
    ),
    Option("proxy.exit_zero_on_sigterm", True, _bool, "exit 0 after a graceful stop (false: 128 + signal number)"),
    Option(
        "proxy.workers",
        1,
        _number(int, 1, 256),
        "processes sharing the listen port (SO_REUSEPORT), each with its own event loop and log writer",
    ),
    Option(
        "proxy.write_buffer_high",
        64 << 10,
        _number(int, 16384),
        "bytes queued to a peer before reading the other side pauses",
    ),
    Option(
        "proxy.socket_buffer",
        128 << 10,
        _number(int, 0),
        "kernel send/receive buffer of each proxy socket (0 = autotuned)",
    ),
    Option(
        "tls.client_mode",
        "refuse",
        _choice("refuse", "passthrough", "terminate"),
        "answer SSLRequest 'N' ourselves, pass TLS through opaquely, or terminate it with our own certificate",
    ),
    Option("tls.client_cert_file", "", _text, "PEM certificate (chain) pgproxy presents to clients in terminate mode"),
    Option("tls.client_key_file", "", _text, "PEM private key of tls.client_cert_file"),
    Option("tls.client_ca_file", "", _text, "PEM CA bundle: when set, clients must present a certificate it signed"),
    Option(
        "tls.upstream_mode",
        "disable",
        _choice("disable", "prefer", "require", "verify-ca", "verify-full"),
        "TLS towards the server, with libpq's sslmode meanings",
    ),
    Option("tls.upstream_ca_file", "", _text, "PEM CA bundle to verify the server (empty: the system's store)"),
    Option("tls.upstream_cert_file", "", _text, "PEM client certificate for servers that authenticate by certificate"),
    Option("tls.upstream_key_file", "", _text, "PEM private key of tls.upstream_cert_file"),
    Option(
        "tls.upstream_server_name", "", _text, "name sent as SNI and verified by verify-full (default: upstream host)"
    ),
    Option(
        "log.format", "auto", _choice("auto", "json", "console"), "auto = console on a terminal, JSON lines otherwise"
    ),
    Option("log.detail", "query", _choice(*(d.name.lower() for d in Detail)), "connection, query, message or wire"),
    Option("log.file", "", _text, "also append JSON lines to this file"),
    Option("log.level", "debug", _choice("debug", "info", "warning", "error"), "drop events below this level"),
    Option("log.max_queued_lines", 100_000, _number(int, 100), "lines buffered per output before dropping (counted)"),
    Option(
        "limits.max_frame",
        DEFAULT_MAX_FRAME,
        _number(int, 1024, PROTOCOL_MAX_LENGTH),
        "longer messages are forwarded and logged header-only",
    ),
    Option("limits.max_rows_per_result", 100, _number(int, 0), "DataRow events logged per result"),
    Option("limits.max_value_chars", 256, _number(int, 8), "logged values are cut beyond this"),
    Option("limits.max_sql_chars", 8192, _number(int, 16), "logged SQL text is cut beyond this"),
    Option("limits.max_hexdump_bytes", 4096, _number(int, 16), "bytes of one message in a hex dump"),
    Option("limits.max_prepared_statements", 1000, _number(int, 1), "named statements remembered per session"),
    Option(
        "limits.max_prepared_bytes",
        16 << 20,
        _number(int, 1024),
        "characters of SQL text of named statements remembered per session",
    ),
    Option("query.slow_ms", 1000.0, _number(float, 0), "statements at least this slow are logged at warning"),
    Option(
        "query.fingerprints",
        True,
        _bool,
        "describe statements with PostgreSQL's parser: fingerprint, db.query.summary, db.collection.name",
    ),
    Option(
        "query.text_mode",
        "raw",
        _choice(*(m.value for m in TextMode)),
        "db.query.text as sent (raw) or with every literal replaced by $n (normalized)",
    ),
    Option("query.filter.users", (), _string_list, "log statements of these users only (empty: all)"),
    Option("query.filter.databases", (), _string_list, "log statements in these databases only"),
    Option("query.filter.applications", (), _string_list, "log statements of these application_names only"),
    Option("query.filter.sql_pattern", "", _regex, "log statements whose SQL matches this regex only"),
    Option("query.filter.min_duration_ms", 0.0, _number(float, 0), "do not log successful statements faster than this"),
    Option("query.filter.sample_rate", 1.0, _number(float, 0, 1), "fraction of successful, non-slow statements logged"),
    Option("stats.enabled", True, _bool, "keep per-fingerprint statement statistics (statement.stats events)"),
    Option("stats.interval", 60.0, _number(float, 0), "seconds between statement.stats reports (0: at shutdown only)"),
    Option("stats.max_entries", 5000, _number(int, 1), "fingerprint/database/user/application keys kept (LRU)"),
    Option(
        "redaction.parameters",
        "show",
        _choice(*(p.value for p in ParameterMode)),
        "show, hash or hide parameter values",
    ),
    Option(
        "redaction.sensitive_names", DEFAULT_SENSITIVE_NAMES, _regex, "columns/parameters whose names match are masked"
    ),
    Option("redaction.mask_sql_literals", False, _bool, "replace every literal in logged SQL with ?"),
    Option(
        "redaction.hash_key",
        "",
        _text,
        "HMAC key for parameters = hash (empty: a random key per process; never logged)",
    ),
    Option(
        "admin.listen", "", _address_or_empty, "host:port of the HTTP admin endpoint (probes, /metrics); empty = off"
    ),
    Option(
        "admin.upstream_check_timeout",
        1.0,
        _number(float, 0.05, 60),
        "seconds /readyz waits to reach the upstream before answering 503",
    ),
)
OPTIONS_BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}


def env_name(key: str) -> str:
    """Environment variable overriding an option: ``log.detail`` -> ``PGPROXY_LOG_DETAIL``."""
    return ENV_PREFIX + key.replace(".", "_").upper()


#: Reloaded on SIGHUP: what each session logs and how (sessions that start afterwards).
RELOADABLE_PREFIXES: Final = ("log.detail", "log.level", "limits.", "query.", "redaction.")

#: Variables Kubernetes injects for a Service named ``pgproxy`` (or ``pgproxy-*``) in the
#: namespace ("Environment variables" under "Service discovery"): PGPROXY_SERVICE_HOST,
#: PGPROXY_SERVICE_PORT[_NAME], PGPROXY_PORT, PGPROXY_PORT_6432_TCP[_PROTO|_PORT|_ADDR].
_SERVICE_LINK = re.compile(
    r"PGPROXY_(?:[A-Z0-9_]+_)?(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT(?:_\d+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)?)"
)


def is_service_link(name: str) -> bool:
    """Whether an environment variable has the shape of a Kubernetes service link, not an option."""
    return _SERVICE_LINK.fullmatch(name) is not None


def reloadable(key: str) -> bool:
    """Whether SIGHUP applies a new value of ``key`` without a restart."""
    return key.startswith(RELOADABLE_PREFIXES)


@dataclass(frozen=True)
class Config:
    """Validated settings, flat by dotted key, with typed accessors for the proxy.

    Attributes:
        ignored_environment: PGPROXY_* variables skipped as Kubernetes service links.
    """

    values: Mapping[str, Any]
    sources: Mapping[str, str] = field(default_factory=dict)
    ignored_environment: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def listen(self) -> tuple[str, int]:
        """The first TCP listening address (127.0.0.1:6432 if only Unix sockets are configured)."""
        tcp = [a for a in self.listen_addresses if isinstance(a, tuple)]
        return tcp[0] if tcp else ("127.0.0.1", 6432)

    @property
    def listen_addresses(self) -> list[tuple[str, int] | str]:
        """Every listening address: (host, port), or a Unix socket path."""
        return [
            item if item.startswith("/") else parse_hostport(item, 6432) for item in _string_list(self["proxy.listen"])
        ]

    @property
    def admin_listen(self) -> tuple[str, int] | None:
        text = self["admin.listen"]
        return parse_hostport(text, 9090) if text else None

    @property
    def upstream(self) -> tuple[str, int]:
        return parse_hostport(self["proxy.upstream"], 5432)

    def tracker_options(self) -> TrackerOptions:
        v = self.values
        return TrackerOptions(
            detail=Detail.parse(v["log.detail"]),
            max_frame=v["limits.max_frame"],
            max_rows_per_result=v["limits.max_rows_per_result"],
            max_value_chars=v["limits.max_value_chars"],
            max_sql_chars=v["limits.max_sql_chars"],
            max_hexdump_bytes=v["limits.max_hexdump_bytes"],
            slow_query_ms=v["query.slow_ms"],
            max_prepared_statements=v["limits.max_prepared_statements"],
            max_prepared_bytes=v["limits.max_prepared_bytes"],
            redaction=RedactionPolicy(
                parameters=ParameterMode(v["redaction.parameters"]),
                sensitive_names=v["redaction.sensitive_names"],
                mask_sql_literals=v["redaction.mask_sql_literals"],
                hash_key=v["redaction.hash_key"].encode(),
            ),
            query_filter=QueryFilter(
                users=frozenset(v["query.filter.users"]),
                databases=frozenset(v["query.filter.databases"]),
                applications=frozenset(v["query.filter.applications"]),
                sql_pattern=v["query.filter.sql_pattern"],
                min_duration_ms=v["query.filter.min_duration_ms"],
                sample_rate=v["query.filter.sample_rate"],
            ),
            analyzer=shared_analyzer() if v["query.fingerprints"] else None,
            text_mode=TextMode(v["query.text_mode"]),
        )


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and full not in OPTIONS_BY_KEY:
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


#: Option names whose values an error message must not repeat (a mistyped
#: PGPROXY_REDACTION_HASHKEY still holds the key).
_SECRET_NAME = re.compile(r"key|secret|password|token", re.IGNORECASE)


def _shown(name: str, value: Any) -> Any:
    """``value`` as an error message may show it: withheld when the name suggests a secret."""
    return "[redacted]" if _SECRET_NAME.search(name) else value


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration from defaults, a TOML file, the environment and flag overrides.

    Args:
        path: TOML file; ``None`` means ``$PGPROXY_CONFIG`` if set, else none.
        env: environment mapping (``os.environ`` by default).
        overrides: values from command-line flags, by dotted key.

    Raises:
        ConfigError: unreadable file, unknown key or invalid value.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {o.key: o.default for o in OPTIONS}
    sources: dict[str, str] = {o.key: "default" for o in OPTIONS}
    raw: list[tuple[str, Any, str]] = []
    if path is None and env.get("PGPROXY_CONFIG"):
        path = env["PGPROXY_CONFIG"]
    if path is not None:
        file = Path(path)
        try:
            table = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("config", str(file), "file not found") from None
        except OSError as exc:
            raise ConfigError("config", str(file), f"cannot read: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", str(file), f"invalid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError("config", str(file), "not UTF-8 text") from None
        for key, value in _flatten(table).items():
            if key not in OPTIONS_BY_KEY:
                raise ConfigError(key, _shown(key, value), f"unknown option{_suggest(key)}", str(file))
            raw.append((key, value, str(file)))
    known_env = {env_name(o.key): o.key for o in OPTIONS}
    ignored: list[str] = []
    for name, value in env.items():
        if name in known_env:
            raw.append((known_env[name], value, f"environment {name}"))
        elif name.startswith(ENV_PREFIX) and name != "PGPROXY_CONFIG":
            if is_service_link(name):
                ignored.append(name)
                continue
            close = difflib.get_close_matches(name, [*known_env, "PGPROXY_CONFIG"], n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else " (see config.example.toml)"
            raise ConfigError(name, _shown(name, value), f"unknown environment variable{hint}", "environment")
    for key, value in (overrides or {}).items():
        if value is not None:
            raw.append((key, value, f"--{key.rsplit('.', 1)[-1].replace('_', '-')}"))
    for key, value, source in raw:
        option = OPTIONS_BY_KEY[key]
        try:
            values[key] = option.parse(value)
        except ValueError as exc:
            raise ConfigError(key, _shown(key, value), str(exc), source) from None
        sources[key] = source
    config = Config(values, sources, tuple(sorted(ignored)))
    if values["query.text_mode"] == TextMode.NORMALIZED.value and not values["query.fingerprints"]:
        raise ConfigError(
            "query.text_mode",
            values["query.text_mode"],
            "needs query.fingerprints = true (the parser normalises the text)",
            sources["query.text_mode"],
        )
    for key, attr in (("proxy.listen", "listen_addresses"), ("proxy.upstream", "upstream")):
        try:
            getattr(config, attr)
        except ValueError as exc:
            raise ConfigError(key, values[key], str(exc), sources[key]) from None
    return config


def _suggest(key: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    for option in OPTIONS:
        if option.key.rsplit(".", 1)[-1] == leaf:
            return f" (did you mean {option.key}?)"
    close = difflib.get_close_matches(key, list(OPTIONS_BY_KEY), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
