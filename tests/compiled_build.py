"""The mypyc build that tests/test_compiled.py checks, started in the background when the suite is collected.

The build (mypy's type check of setup.py's modules, then gcc over the
generated C) took 247 s of a 547 s suite run on this 2-core machine, every
other test waiting: it ran inside the first compiled test's fixture. The
tests wait on sockets and servers most of the time, so the build runs beside
them instead (the same suite then ran in 250 s): ``conftest.py`` starts it
once the tests are collected (and only if a test still selected needs it),
at a lower priority (``nice``) so the servers and proxies under test keep the
CPU they ask for, and moves the tests that need it to the end of the run.
The fixture then waits for what is left of the build, and fails with its
output if it failed.
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: setup.py's list of modules to compile.
COMPILED: list[str] = runpy.run_path(str(ROOT / "setup.py"), run_name="setup")["COMPILED"]
#: ``nice`` increment for the build: the tests' servers and proxies come first.
_NICENESS = 10


def compiler_available() -> bool:
    return shutil.which("cc") is not None or shutil.which("gcc") is not None


class BackgroundBuild:
    """``mypyc`` over ``modules`` (setup.py's) in a copy of the package, running while the suite goes on.

    Two copies of ``pgproxy/`` are made, neither with a checkout's own
    extension modules: ``compiled`` (built in place) and ``pure``.
    """

    def __init__(self, modules: list[str] = COMPILED) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="pgproxy-compiled-"))
        self.compiled = self.directory / "compiled"
        self.pure = self.directory / "pure"
        for tree in (self.compiled, self.pure):
            shutil.copytree(ROOT / "pgproxy", tree / "pgproxy", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        self._log_path = self.directory / "build.log"
        mypyc = Path(sys.executable).parent / "mypyc"
        with open(self._log_path, "wb") as log:  # a file, not a pipe: nobody reads it while the build runs
            self._process = subprocess.Popen(
                [str(mypyc), *modules],
                cwd=self.compiled,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: os.nice(_NICENESS),  # noqa: PLW1509 (no threads start before the suite's tests)
            )

    def wait(self, timeout: float) -> tuple[Path, Path]:
        """The (compiled, pure) trees once the build has finished.

        Raises:
            AssertionError: the build failed or outlasted ``timeout``; the message holds its output.
        """
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            raise AssertionError(f"the mypyc build took more than {timeout:.0f} s: {self._output()}") from None
        assert code == 0, f"the mypyc build failed (exit {code}): {self._output()}"
        return self.compiled, self.pure

    def _output(self) -> str:
        return self._log_path.read_text(errors="replace")[-6000:]

    def discard(self) -> None:
        """Stop the build if it still runs, and remove both trees."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


#: The build this session started (conftest.py), if any test needs it.
started: BackgroundBuild | None = None
