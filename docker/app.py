"""A tiny application for docker/compose.yaml: the users/Demo scenario, through pgproxy.

Creates a ``users`` table, inserts user "Demo" with a pbkdf2 password hash and
reads it back with the ORM, every few seconds, so ``docker compose logs -f
pgproxy`` has something to show (the hash column is redacted there).
"""

from __future__ import annotations

import hashlib
import os
import time

from sqlalchemy import Column, Integer, String, create_engine, delete
from sqlalchemy.orm import Session, declarative_base

Base = declarative_base()


class User(Base):  # type: ignore[misc, valid-type]
    __tablename__ = "users"
    id = Column(Integer, primary_key=True)
    username = Column(String(64), unique=True, nullable=False)
    email = Column(String(120), nullable=False)
    hashed_password = Column(String(256), nullable=False)


def password_hash(password: str) -> str:
    salt = os.urandom(8).hex()
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), 260_000).hex()
    return f"pbkdf2:sha256:260000${salt}${digest}"


def main() -> None:
    engine = create_engine(os.environ["DATABASE_URL"])
    Base.metadata.create_all(engine)
    while True:
        with Session(engine) as session:
            session.execute(delete(User).where(User.username == "Demo"))
            session.add(User(username="Demo", email="demo@aa.io", hashed_password=password_hash("correct horse")))
            session.commit()
        with Session(engine) as session:
            user = session.query(User).filter_by(username="Demo").one()
            print(f"read back user {user.username} <{user.email}>", flush=True)
        time.sleep(int(os.environ.get("INTERVAL_SECONDS", "5")))


if __name__ == "__main__":
    main()
