"""A checkpoint file opened once, for every read of it: the structure check, torch.load, safetensors.

* `open_checkpoint(path)`: the open file (binary, seekable, blocking), or CheckpointReadError for
  what is no regular file: missing, a folder, a pipe, a device, a socket.
* `reopenable_name(f)`: a name that opens the same file again (for a reader that only takes names).

Checking the path, then opening it by name for each reader, let a path swapped for a FIFO between
the check and an open hang the loader for ever (an open of a FIFO waits for a writer). Now the
path is opened once without waiting (O_NONBLOCK), and what is open is checked (fstat), so a file
swapped in after the check is refused, and one swapped after the open is never read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import CheckpointReadError

__all__ = ["open_checkpoint", "reopenable_name"]

_NOT_REGULAR = "it is not a regular file (a pipe, a device or a socket)"


def _refused(path: Path, why: str) -> CheckpointReadError:
    return CheckpointReadError(f"cannot read checkpoint {path}: {why}")


def _nonblocking(name, flags: int) -> int:
    # O_NOCTTY: a terminal swapped in must not become the process's controlling terminal
    return os.open(name, flags | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))


def open_checkpoint(path: Path) -> BinaryIO:
    """The checkpoint file at `path`, opened for reading (see the module's docstring)."""
    # Checked by name first, so that a pipe or a device is refused without being opened (opening
    # some devices does something); the check of the open file below is the one that holds.
    if path.is_dir():
        raise _refused(path, "it is a folder, not a checkpoint file")
    if not path.is_file():
        if path.exists():
            raise _refused(path, _NOT_REGULAR)
        raise CheckpointReadError(f"checkpoint not found: {path}")
    try:
        f = open(path, "rb", opener=_nonblocking)  # noqa: SIM115 - returned open
    except FileNotFoundError:
        raise CheckpointReadError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise _refused(path, "it is a folder, not a checkpoint file") from None
    except OSError as err:  # a socket (ENXIO), no permission, ...
        raise _refused(path, _NOT_REGULAR if err.errno in (errno.ENXIO, errno.EOPNOTSUPP) else
                       err.strerror or type(err).__name__) from None
    try:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise _refused(path, _NOT_REGULAR)
        os.set_blocking(f.fileno(), True)  # a regular file: reads never waited anyway; readers expect blocking
    except BaseException:
        f.close()
        raise
    return f


def reopenable_name(f: BinaryIO) -> str | None:
    """A name under which `f` itself opens again (/dev/fd/N: the open file, not the path, which may
    have changed), or None where there is none (Windows)."""
    name = f"/dev/fd/{f.fileno()}"
    return name if os.path.exists(name) else None
