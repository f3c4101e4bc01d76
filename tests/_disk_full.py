"""Helpers of the full-disk tests (test_disk_full*.py): failing writes without root.

Two ways: a process whose files may not grow (RLIMIT_FSIZE: a write past the limit fails with
EFBIG; Python ignores the SIGXFSZ that comes with it), and, in this process, a module's ``open``
(or one writer) replaced by one whose writes fail with ENOSPC, as on a full disk, where creating
a file works and writing to it does not.
"""

from __future__ import annotations

import builtins
import errno
import os
import subprocess
import sys

from entitysam import cli


def segment(*args):
    return cli.main(["segment", *map(str, args)])


def tree(path):
    """Every file under `path` with its bytes (to show nothing changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def everything(path):
    """Every entry under `path`, hidden ones included (to show nothing was left behind)."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def run_limited(limit: int, *args, cwd, timeout: float = 180):
    """`entitysam ARGS` in a process whose files may not grow past `limit` bytes."""
    code = ("import resource, runpy, sys\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            "sys.argv = ['entitysam', *sys.argv[1:]]\n"
            "runpy.run_module('entitysam', run_name='__main__')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # set by torch in this process: a user's shell has none
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def one_error_line(stderr: str) -> str:
    """The one `error:` line of a failed command (no traceback, nothing else)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def enospc(path=None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([] if path is None else [str(path)]))


class FullFile:
    """A file open for writing on a full disk: every write fails (with no file name, as write(2))."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise enospc()

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def fail_write(*args, **kwargs):
    raise enospc()


def full_disk_open(file, mode="r", *args, **kwargs):
    """`open` on a full disk: files open (and are created), writes fail with ENOSPC."""
    f = builtins.open(file, mode, *args, **kwargs)
    return FullFile(f) if any(c in mode for c in "wax+") else f
