"""A short exclusive lock between processes (and threads) that share a file: ``fcntl.flock`` on a
lock file of its own beside it, removed afterwards.

For a read-check-write of a file that several processes replace, possibly on several machines
sharing the folder (the batch summary, the viewer's draft): the replace itself is atomic
(io.atomic), the lock makes the check and the replace one step. Where the file system has no
flock (some network file systems) the block runs unlocked, as it did before the lock existed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from pathlib import Path
from typing import Iterator

from .atomic import NO_FLOCK

__all__ = ["locked"]


try:  # POSIX; elsewhere only the threads of one process are kept apart
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

# flock excludes other processes (and other open files), not the threads of this one that
# share a path through one Python call each: they queue here first.
_THREADS = threading.Lock()


def _open_lock(lock: Path) -> tuple[int, bool]:
    """(descriptor of `lock`, whether it is read-only). OSError when something other than a
    regular file is in its place (a named pipe, a device: the user's, never locked nor removed)."""
    flags = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    for attempt in range(3):
        try:
            fd, read_only = os.open(lock, os.O_RDWR | os.O_CREAT | flags, 0o644), False
        except PermissionError as err:
            # A lock file another user made on a shared file system (0644: not ours to write):
            # flock needs no write access, and nothing is ever written to a lock file.
            try:
                fd, read_only = os.open(lock, os.O_RDONLY | flags), True
            except FileNotFoundError:
                # removed by its holder in between, or never there: then the folder refused it
                if attempt == 2:
                    raise err from None
                continue
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EEXIST, "something that is not a lock file is in its place (left as it is)",
                          str(lock))
        return fd, read_only
    raise AssertionError("unreachable")


def _gone(err: OSError) -> bool:
    """Whether `err` says the lock file was removed (NFS: ESTALE, on a file its holder removed)."""
    return isinstance(err, FileNotFoundError) or err.errno == errno.ESTALE


def _lock_fd(lock: Path) -> int | None:
    """The descriptor of `lock`, flocked; None where the file system has no flock."""
    while True:
        fd, read_only = _open_lock(lock)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as err:
                if _gone(err):
                    os.close(fd)
                    continue
                # NFS emulates flock with byte-range locks, which refuse a read-only descriptor
                if err.errno not in NO_FLOCK and not (read_only and err.errno == errno.EBADF):
                    raise
                os.close(fd)
                return None  # unlocked: what every write did before the lock existed
            # The holder before removes the file while it holds it: a lock on a removed file
            # would exclude nobody, so take it again on the file the path names now.
            try:
                if os.path.samestat(os.fstat(fd), os.stat(lock)):
                    return fd
            except OSError as err:
                if not _gone(err):
                    raise
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def locked(lock: str | os.PathLike) -> Iterator[None]:
    """The block run under ``flock`` on the file `lock` (created, removed afterwards), against other
    processes and the threads of this one; unlocked where the file system has no flock. Raises
    OSError when the lock file cannot be created (a read-only folder) or something that is not a
    regular file is in its place."""
    lock = Path(lock)
    with _THREADS:
        fd = _lock_fd(lock) if fcntl is not None else None
        try:
            yield
        finally:
            if fd is not None:
                with contextlib.suppress(OSError):
                    # Still held: nobody relies on it yet. A lock file is empty and has one name: a
                    # file of that name with content, or linked elsewhere, is somebody else's, used
                    # here as a lock but not removed; nor a file put in its place since.
                    held = os.fstat(fd)
                    if held.st_size == 0 and held.st_nlink == 1 and os.path.samestat(held, os.lstat(lock)):
                        lock.unlink()
                os.close(fd)
