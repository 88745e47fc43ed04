"""pgproxy: a transparent PostgreSQL proxy that logs the decoded conversation."""

__version__ = "0.1.0"
