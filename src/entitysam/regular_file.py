"""A file opened once, without waiting, and read only if what was opened is a regular file.

Checking a path (``is_file()``, ``stat``), then opening it by name, leaves a moment in which the
path can be swapped for a named pipe: the open then waits for a writer for ever (and with it a
decoder, a loader or a worker thread of the viewer). Here the path is opened once with
O_NONBLOCK (a pipe opens at once), and the open file is checked with fstat: anything but a
regular file is closed again, unread. Every later read goes through that descriptor, or through
:func:`reopenable_name` for readers that only take names (PyAV, safetensors): a name of the open
file itself, not of the path, which may have changed since.

* `open_regular(path)`: the open file (binary, blocking), or None when it is not a regular file.
* `open_regular_for_writing(path, append=False)`: the file open for writing text (made if
  missing), or OSError when it is not a regular file: opening a named pipe for writing waited
  for a reader for ever (a training run's log.txt or metrics.csv).
* `read_regular_text(path)`: its UTF-8 text, or None when it is not a regular file.
* `reopenable_name(f)`: ``/dev/fd/N`` of an open file, None where there is none.
* `path_problem(path, folder=False, nonempty=False)`: what is wrong with a path that should name
  a regular file (or a folder; a file holding something), in words, without opening it.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import IO, BinaryIO

__all__ = ["open_regular", "open_regular_for_writing", "read_regular_bytes", "read_regular_text", "reopenable_name", "path_problem"]

# O_NONBLOCK: a named pipe opens without waiting for a writer; O_NOCTTY: a terminal put in the
# path's place must not become the process's controlling terminal. O_BINARY (Windows): the bytes
# as they are; text mode is the file object's (a CSV's "\r\n" came out as "\r\r\n").
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_FLAGS = (os.O_RDONLY | _NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
          | getattr(os, "O_BINARY", 0))
_WRITE_FLAGS = (os.O_WRONLY | os.O_CREAT | _NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
                | getattr(os, "O_BINARY", 0))
NOT_REGULAR = "not a regular file (a named pipe, a device or a socket)"
# what open() says of a socket (Linux: ENXIO; some systems: EOPNOTSUPP): not a regular file either
_NOT_OPENABLE = (errno.ENXIO, errno.EOPNOTSUPP)


def open_regular(path: str | os.PathLike, *, follow_links: bool = True, dir_fd: int | None = None) -> BinaryIO | None:
    """`path` open for reading (binary, blocking: reads of a regular file never wait) when it names a
    regular file now; None when it names something else (a named pipe, a device, a socket, a
    folder), which is closed unread. OSError when it cannot be opened (gone, no permission, a
    link loop; with follow_links=False also a symbolic link, ELOOP). dir_fd: a relative `path` is
    inside this open folder (os.open's)."""
    flags = _FLAGS | (0 if follow_links else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in _NOT_OPENABLE:
            return None
        raise
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if regular:
            _make_blocking(fd)  # readers (Pillow, torch.load) expect a blocking file
    except BaseException:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def open_regular_for_writing(path: str | os.PathLike, *, append: bool = False, **text) -> IO[str]:
    """`path` open for writing text (`text`: open()'s encoding, errors, newline), made if missing,
    emptied unless `append`. OSError (strerror NOT_REGULAR, naming `path`) when it names anything
    but a regular file, which is closed unwritten: opened without waiting (a named pipe with no
    reader: ENXIO at once, one with a reader: refused by fstat), and emptied only once checked."""
    flags = _WRITE_FLAGS | (os.O_APPEND if append else 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if err.errno in _NOT_OPENABLE:
            raise OSError(err.errno, NOT_REGULAR, str(path)) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, NOT_REGULAR, str(path))
        _make_blocking(fd)
        if not append:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "a" if append else "w", **text)


def _make_blocking(fd: int) -> None:
    """Undo O_NONBLOCK where it was set: Windows has no O_NONBLOCK, and os.set_blocking only from
    Python 3.12, for pipes (its AttributeError was a traceback for every file opened here)."""
    if _NONBLOCK:
        os.set_blocking(fd, True)


def read_regular_bytes(path: str | os.PathLike) -> bytes | None:
    """The content of `path` when it names a regular file (:func:`open_regular`), None when it names
    something else (a named pipe: reading one waited for a writer for ever). OSError when it cannot
    be opened (FileNotFoundError when missing)."""
    f = open_regular(path)
    if f is None:
        return None
    with f:
        return f.read()


def read_regular_text(path: str | os.PathLike) -> str | None:
    """The UTF-8 text of `path` when it names a regular file (:func:`read_regular_bytes`), None when it
    names something else. OSError when it cannot be opened, ValueError when it is not UTF-8."""
    data = read_regular_bytes(path)
    return None if data is None else data.decode("utf-8")


def reopenable_name(f: BinaryIO) -> str | None:
    """A name under which `f` itself opens again (/dev/fd/N: the open file, not the path, which may
    have changed), or None where there is none (Windows)."""
    name = f"/dev/fd/{f.fileno()}"
    return name if os.path.exists(name) else None


def path_problem(path: str | os.PathLike, *, folder: bool = False, nonempty: bool = False) -> str | None:
    """None when `path` names a regular file (a folder with folder=True); else "missing", "not a
    regular file" / "not a folder", or the cause of the failed look (a link loop, no permission):
    is_file() and is_dir() say False of all of these, and a user then looked for a missing file
    that was there. nonempty: a file of 0 bytes is "empty" (from the same stat: no extra cost)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return err.strerror or str(err)
    if folder:
        return None if stat.S_ISDIR(st.st_mode) else "not a folder"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return "empty" if nonempty and st.st_size == 0 else None
