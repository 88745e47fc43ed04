"""Command line: ``pgproxy`` runs the proxy; ``decode``, ``demo`` and ``top`` sit beside it.

Usage::

    pgproxy --listen 127.0.0.1:6432 --upstream db:5432
    pgproxy decode capture.txt
    pgproxy demo
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pgproxy import __version__
from pgproxy.config import Config, ConfigError, load

EXIT_USAGE = 2
_SUBCOMMANDS = ("run", "decode", "demo", "top")


def _add_proxy_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file (default: $PGPROXY_CONFIG)")
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT|PATH",
        action="append",
        help="where clients connect (default 127.0.0.1:6432); repeat for several, a /path is a Unix socket",
    )
    parser.add_argument(
        "--upstream", metavar="HOST:PORT|URL", help="the PostgreSQL server, host:port or postgres:// URL"
    )
    parser.add_argument("--log-format", choices=("auto", "json", "console"), help="log rendering (default auto)")
    parser.add_argument(
        "--log-detail", choices=("connection", "query", "message", "wire"), help="how much to log (default query)"
    )
    parser.add_argument("--log-file", metavar="PATH", help="also append JSON lines to PATH")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), help="event loop (default uvloop)")
    parser.add_argument(
        "--admin-listen", metavar="HOST:PORT", help="serve /startup /livez /readyz /metrics here (default off)"
    )
    parser.add_argument(
        "--min-sigterm-delay", metavar="SECONDS", help="keep accepting this long after SIGTERM (default 0)"
    )
    parser.add_argument(
        "--max-sigterm-delay", metavar="SECONDS", help="time busy sessions get to finish on SIGTERM (default 10)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgproxy",
        description="Transparent PostgreSQL proxy that logs the decoded wire conversation.",
        epilog="Subcommands: 'pgproxy decode --help', 'pgproxy demo --help', 'pgproxy top --help'. "
        "Every option can also be set in the config file or as PGPROXY_<SECTION>_<KEY>.",
    )
    parser.add_argument("--version", action="version", version=f"pgproxy {__version__}")
    _add_proxy_flags(parser)
    return parser


def build_decode_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgproxy decode",
        description="Decode captured PostgreSQL protocol bytes offline; one JSON line per message.",
    )
    parser.add_argument("file", help="capture file, or - for stdin")
    parser.add_argument(
        "--direction",
        choices=("frontend", "backend"),
        help="for raw bytes: which side sent them (default: guess from the first byte)",
    )
    parser.add_argument(
        "--input",
        choices=("auto", "raw", "hex", "pcap"),
        default="auto",
        help="raw bytes, a text hex dump (Wireshark, tcpdump -X, xxd) or a pcap/pcapng file (tcpdump -w); "
        "default: detect",
    )
    parser.add_argument(
        "--server-port",
        type=int,
        default=None,
        help="TCP port of the server in captured frames (default: recognised from the conversation, else 5432)",
    )
    parser.add_argument(
        "--detail", choices=("message", "wire"), default="message", help="'wire' adds a hex dump per message"
    )
    return parser


def build_demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgproxy demo",
        description="Start an embedded PostgreSQL and pgproxy in front of it, run an ORM scenario "
        "through the proxy, and show the decoded conversation.",
    )
    parser.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    parser.add_argument("--log-detail", choices=("connection", "query", "message", "wire"), default="message")
    parser.add_argument("--postgres", type=int, metavar="MAJOR", help="PostgreSQL major version to use")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args and args[0] in _SUBCOMMANDS else "run"
    if args and args[0] in _SUBCOMMANDS:
        args = args[1:]
    try:
        if command == "decode":
            from pgproxy.offline.decode import decode_command

            return decode_command(build_decode_parser().parse_args(args))
        if command == "top":
            from pgproxy.top import build_top_parser, top_command

            return top_command(build_top_parser().parse_args(args))
        if command == "demo":
            from pgproxy.demo.scenario import demo_command

            return demo_command(build_demo_parser().parse_args(args))
        ns = build_parser().parse_args(args)
        overrides = {
            "proxy.listen": ",".join(ns.listen) if ns.listen else None,
            "proxy.upstream": ns.upstream,
            "log.format": ns.log_format,
            "log.detail": ns.log_detail,
            "log.file": ns.log_file,
            "proxy.loop": ns.loop,
            "admin.listen": ns.admin_listen,
            "proxy.min_sigterm_delay": ns.min_sigterm_delay,
            "proxy.max_sigterm_delay": ns.max_sigterm_delay,
        }
        config = load(ns.config, overrides=overrides)
    except ConfigError as exc:
        print(f"pgproxy: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_proxy(config, lambda: load(ns.config, overrides=overrides))


def run_proxy(config: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run the proxy until it is stopped; returns the exit code (see :mod:`pgproxy.proxy.lifecycle`)."""
    from pgproxy.proxy.lifecycle import run_proxy as run

    return run(config, reload)


if __name__ == "__main__":
    sys.exit(main())
