"""Where `entitysam metrics --json FILE` puts its results.

The destination is opened before the metrics are computed (a mistake costs no scoring time) and
written once they are:

* a new file is written atomically and never replaces a file that appeared meanwhile;
* an existing file is replaced (atomically) only with ``--overwrite``, and only when it holds the
  results of an earlier ``metrics --json`` (``--json notes.json`` silently replaced the notes);
* ``-`` is standard output, as ``/dev/stdout`` (it was a file named ``-`` in the current folder);
* a descriptor of this process (``/dev/stdout``, ``/dev/fd/N`` as ``--json >(jq .)`` passes one)
  is written through that descriptor, after the table (reopening ``/dev/stdout`` redirected to a
  file started it again at byte 0, over the table);
* a named pipe or a character device (``/dev/null``, a terminal) is opened at once without
  waiting: a pipe nobody reads is refused (the write waited for a reader for ever, after scoring).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import IO

from ..argtypes import check_json_destination
from ..errors import InvalidArgumentError, OutputError, Remedy
from ..io.atomic import atomic_file

__all__ = ["JsonDestination", "STDOUT", "open_destination", "descriptor_of"]

STDOUT = "-"  # the destination that means standard output

METRICS_KEYS = frozenset({"veq", "stq"})  # what a metrics JSON holds (some of, at its top level)
MAX_EARLIER = 64 << 20  # an earlier results file is at most this big (a few kB a video at most)
_FD_FOLDER = re.compile(r"/proc/(?:self|(\d+))/fd|/dev/fd")


def descriptor_of(path: str | os.PathLike) -> int | None:
    """The descriptor number of this process that `path` names (``/dev/stdout``, ``/dev/fd/3``,
    ``/proc/self/fd/1``, through any symbolic links), or None."""
    p = os.path.abspath(path)
    for _ in range(40):  # (a loop of links ends here)
        match = _FD_FOLDER.fullmatch(os.path.realpath(os.path.dirname(p)))
        name = os.path.basename(p)
        if match and name.isdigit() and match.group(1) in (None, str(os.getpid())):
            return int(name)
        try:
            target = os.readlink(p)
        except OSError:  # not a link (or another process's, unreadable): not one of ours
            return None
        p = os.path.normpath(os.path.join(os.path.dirname(p), target))
    return None


def is_metrics_file(path: Path) -> bool:
    """Whether the regular file `path` holds what `metrics --json` writes (the only file
    ``--overwrite`` replaces)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_EARLIER + 1)
        doc = json.loads(data.decode("utf-8")) if len(data) <= MAX_EARLIER else None
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and bool(doc) and set(doc) <= METRICS_KEYS


class JsonDestination:
    """An opened destination: :meth:`write` the results once, then :meth:`close`."""

    def __init__(self, path: Path, *, stream: IO[str] | None = None, replace: bool = False):
        self.path, self.stream, self.replace = path, stream, replace

    def write(self, text: str) -> None:
        """Raises OSError (a full disk, a closed pipe) or OutputError (a file appeared meanwhile)."""
        if self.stream is not None:
            sys.stdout.flush()  # the table first, when both go to one place
            sys.stderr.flush()
            self.stream.write(text)
            self.stream.flush()
            return
        if self.replace and not os.path.lexists(self.path):  # deleted while scoring: a new file
            self.replace = False
        if self.replace and not is_metrics_file(self.path):  # (changed while scoring)
            raise OutputError(f"{self.path} is no longer a metrics JSON: left as it is, nothing written")
        try:
            with atomic_file(self.path, "w", replace=self.replace) as f:
                f.write(text)
        except FileExistsError as err:
            if err.filename != str(self.path):
                raise
            raise OutputError(f"{self.path} appeared while the metrics were computed: left as it is, "
                              "nothing written", Remedy("overwrite", True, "to replace it")) from None

    def close(self) -> None:
        if self.stream is not None:
            try:
                self.stream.close()
            except OSError:  # (a pipe closed by its reader: already reported by write)
                pass


def open_destination(path: str | os.PathLike, *, option: str, overwrite: bool = False) -> JsonDestination:
    """Check and open `path` for the results; InvalidArgumentError (a usage error) if it cannot be
    one: see the module doc. option: how messages name the destination (the flag)."""
    fd = 1 if os.fspath(path) == STDOUT else descriptor_of(path)
    if fd is not None:
        return JsonDestination(Path(path), stream=_dup_stream(fd, path, option))
    try:
        mode = os.stat(path).st_mode
    except OSError:  # (missing, a link to nothing: said below)
        mode = 0
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):  # written into, not made: its folder (/dev) may be read-only
        return JsonDestination(Path(path), stream=_open_stream(Path(path), option))
    path = check_json_destination(path, option)
    if not os.path.lexists(path):
        return JsonDestination(path)
    if path.is_symlink() and not path.exists():
        raise InvalidArgumentError(f"{option} {path}: a symbolic link to nothing; choose another file name")
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise InvalidArgumentError(f"{option} {path}: not a file (a socket or a block device); choose a file name")
    if not overwrite:
        raise InvalidArgumentError(f"{option} {path}: already exists",
                                   Remedy("overwrite", True, "to replace an earlier metrics JSON"))
    if path.is_symlink():
        raise InvalidArgumentError(f"{option} {path}: is a symbolic link: refusing to replace it")
    if not is_metrics_file(path):
        raise InvalidArgumentError(f"{option} {path}: exists and is not a metrics JSON: refusing to replace it, "
                                   "even when overwriting; choose another file name")
    return JsonDestination(path, replace=True)


def _dup_stream(fd: int, path: str | os.PathLike, option: str) -> IO[str]:
    try:
        writable = _writable_descriptor(fd)
        stream = open(os.dup(fd), "w", encoding="utf-8") if writable else None  # noqa: SIM115 - (closed by close)
    except OSError as err:
        raise InvalidArgumentError(f"{option} {path}: descriptor {fd} is not open ({err.strerror})") from None
    if stream is None:  # (/dev/stdin: the write failed with EBADF only after scoring)
        raise InvalidArgumentError(f"{option} {path}: descriptor {fd} is open for reading only; choose a file")
    return stream


def _writable_descriptor(fd: int) -> bool:
    """Whether descriptor `fd` is open for writing (True where that cannot be asked: no fcntl)."""
    try:
        import fcntl  # noqa: PLC0415 - (not on Windows)
    except ImportError:
        os.fstat(fd)  # (OSError when not open)
        return True
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY


def _open_stream(path: Path, option: str) -> IO[str]:
    """A pipe or device opened for writing now, without waiting for a reader."""
    flags = os.O_WRONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ENXIO:
            raise InvalidArgumentError(f"{option} {path}: a named pipe that nobody reads (start its reader "
                                       "first, or choose a file)") from None
        raise InvalidArgumentError(f"{option} {path}: cannot be opened ({err.strerror})") from None
    if getattr(os, "O_NONBLOCK", 0):  # (Windows has neither; os.set_blocking only from Python 3.12)
        os.set_blocking(fd, True)  # (written at the pace of its reader)
    return open(fd, "w", encoding="utf-8")  # noqa: SIM115 - (closed by JsonDestination.close)
