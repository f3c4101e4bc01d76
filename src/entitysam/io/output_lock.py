"""One run per result folder: the OS lock (``fcntl.flock``) on ``.<name>.lock`` beside it."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
from pathlib import Path
from typing import Any

from ..errors import OutputError, Remedy
from .paths import UnsafeOverwriteError, describe_os_error

__all__ = ["LOCK_SUFFIX", "NO_FLOCK", "OutputLockedError", "OutputLock", "pid_alive", "lock_content_is_ours"]

LOCK_SUFFIX = ".lock"
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}  # flock's "not here"

# What a lock file of any version holds: "<pid> <host>\n" (a pid alone before the host was
# added), or a prefix of it (a full disk cut the write), or nothing (killed between creating the
# file and writing it). A power loss may leave NUL bytes where the write had not reached the disk.
_OURS = re.compile(rb"(?:[0-9]+(?: [^\s]*)?)?\n?|\0+")
_MAX_OURS = 512  # far above "<pid> <host>\n" (a host name has at most 255 bytes)


def lock_content_is_ours(content: bytes) -> bool:
    """Whether `content` is what an entitysam lock file holds (see ``_OURS``): anything else is a
    file of the user's named like one, which taking the lock would overwrite and then delete."""
    return len(content) <= _MAX_OURS and _OURS.fullmatch(content) is not None


class OutputLockedError(OutputError):
    """Another run holds the lock of the result folder; `holder` says who ("pid 12345")."""

    holder = "another process"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (used to clean partial outputs of dead runs)."""
    if os.name == "nt":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _windows_pid_alive(pid: int) -> bool:
    """pid_alive on Windows, where os.kill(pid, 0) is no question: signal 0 is CTRL_C_EVENT, sent
    to every process of the console (this one included), and other pids are terminated."""
    import _winapi

    try:
        handle = _winapi.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    except OSError as err:
        return getattr(err, "winerror", None) != 87  # ERROR_INVALID_PARAMETER: no such process
    try:
        return _winapi.GetExitCodeProcess(handle) == 259  # STILL_ACTIVE
    finally:
        _winapi.CloseHandle(handle)


try:  # POSIX; elsewhere runs are not locked (documented)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)  # a link there is never followed (and truncated)


def _open_lock_file(path: Path) -> int:
    """Open (create) a lock file. A batch run holds one per video: when the soft limit of open
    files is reached, it is raised to the hard limit once."""
    try:
        return os.open(path, _LOCK_FLAGS, 0o644)
    except OSError as err:
        if err.errno != errno.EMFILE:
            raise
        import resource  # noqa: PLC0415 - POSIX only, like fcntl

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else max(soft * 16, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            raise err from None
        return os.open(path, _LOCK_FLAGS, 0o644)


class OutputLock:
    """The exclusive lock of one result folder: ``fcntl.flock`` on ``.<name>.lock`` beside it,
    holding the pid and host name of its owner. The OS releases it when the process ends,
    however it ends, so a killed run never leaves a stale lock. Re-entrant within a process (the command line takes
    it before loading the model, the writer takes it again); the file is removed on release.
    """

    _held: dict[str, "OutputLock"] = {}

    def __init__(self, final: Path):
        self.final = final
        self.path = final.parent / f".{final.name}{LOCK_SUFFIX}"
        self._fd: int | None = None
        self._count = 0
        self._created: list[Path] = []

    @classmethod
    def acquire(cls, final: str | os.PathLike, *, wait: bool = False,
                on_wait: Any = None) -> "OutputLock":
        """Take the lock of `final` (creating its parent folders). Busy: raise OutputLockedError
        naming the holder's pid, or with ``wait`` block until it is free (``on_wait(message)``
        is called first)."""
        final = Path(os.path.abspath(final))
        key = str(final)
        lock = cls._held.get(key)
        if lock is None:
            lock = cls(final)
            lock._take(wait, on_wait)
            cls._held[key] = lock
        lock._count += 1
        return lock

    @classmethod
    def held(cls, final: str | os.PathLike) -> bool:
        """Whether this process holds the OS lock of `final` (not where runs are not locked): then
        no other process, on this machine or another one sharing the folder, is writing it."""
        lock = cls._held.get(str(Path(os.path.abspath(final))))
        return lock is not None and lock._fd is not None

    def _make_parent(self) -> None:
        missing = []
        for p in [self.final.parent, *self.final.parent.parents]:
            if p.exists():
                break
            missing.append(p)
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(describe_os_error(err, "the output folder")) from None
        self._created = missing  # innermost first: removed on release if still empty

    def _holder(self) -> str:
        """Who holds the lock, as its file says: ``pid 12345``, with ``on node17`` when that is
        another machine (an output folder shared by several: its pid means nothing here)."""
        with contextlib.suppress(OSError, ValueError):
            with open(self.path, "rb") as f:
                words = f.read(512).decode("utf-8").split()
            pid = int(words[0] if words else "x")
            host = words[1] if len(words) > 1 and words[1].isprintable() else None
            return f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
        return "another process"

    def _take(self, wait: bool, on_wait: Any) -> None:
        self._make_parent()
        if fcntl is None:
            return
        try:
            self._fd = self._lock_file(wait, on_wait)
        except BaseException as err:
            if not isinstance(err, OutputError):
                # Ctrl-C or SIGTERM here (waiting with wait=True, or at any instant): neither the
                # lock file nor the output folder this call created may stay behind.
                self._remove_if_free()
            self._remove_created_parents()
            raise

    def _lock_file(self, wait: bool, on_wait: Any) -> int | None:
        """The descriptor of the lock file, locked (None: unlocked, the file system has no flock)."""
        while True:
            try:
                fd = _open_lock_file(self.path)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENXIO) or os.path.isdir(self.path):
                    raise OutputError(self._not_plain("a symbolic link, a folder or a socket")) from None
                raise OutputError(describe_os_error(err, "the output folder")) from None
            try:
                st = os.fstat(fd)
                # The pid is written into the file as it is: another name of the file (a hard link to
                # a file of the user's) got it too, and a named pipe was deleted on release.
                if not stat.S_ISREG(st.st_mode):
                    raise OutputError(self._not_plain("a named pipe or a device"))
                if st.st_nlink > 1:
                    raise OutputError(self._not_plain(f"it has {st.st_nlink} hard links: another name of the "
                                                      "same file, which writing the lock would change too"))
                if not self._ours(fd):
                    raise UnsafeOverwriteError(
                        f"{self.path} is in the way of the lock file of {self.final} and holds what entitysam "
                        "never writes there: refusing to overwrite it; move it away or choose another output folder")
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as err:
                    if not isinstance(err, BlockingIOError):
                        return self._unlocked(fd, err)
                    holder = self._holder()
                    if not wait:
                        busy = OutputLockedError(
                            f"{self.final} is being written by another entitysam run ({holder}, lock file "
                            f"{self.path}): let it finish first", Remedy("wait", True, "to wait for it"))
                        busy.holder = holder
                        raise busy from None
                    if on_wait is not None:
                        on_wait(f"{self.final} is being written by another entitysam run ({holder}); waiting")
                    fcntl.flock(fd, fcntl.LOCK_EX)
                # The previous holder removes the file before releasing it: a lock on a removed file
                # locks nothing, so check that the path still names the file locked.
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if same:
                    # The pid only names the holder in another run's message: on a full disk the lock
                    # holds without it (failing here left the lock file and a new output folder behind).
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, 0)
                        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def _unlocked(self, fd: int, err: OSError) -> None:
        """flock failed on the lock file `fd` with `err`. On a file system without flock (some
        network ones) the run goes on unlocked, as where the OS has none (it was an OSError
        traceback); any other failure is an OutputError. Either way the empty lock file it made is
        not left behind."""
        with contextlib.suppress(OSError):
            st = os.fstat(fd)
            if st.st_size == 0 and st.st_nlink == 1 and os.path.samestat(st, os.lstat(self.path)):
                self.path.unlink()
        if err.errno not in NO_FLOCK:
            raise OutputError(describe_os_error(err, f"the lock file {self.path}")) from None
        os.close(fd)

    @staticmethod
    def _ours(fd: int) -> bool:
        """Whether the open file `fd` holds what a lock file of this tool holds (read without
        moving its offset)."""
        return lock_content_is_ours(os.pread(fd, _MAX_OURS + 1, 0))

    def _not_plain(self, what: str) -> str:
        return f"the lock file {self.path} is not a plain file ({what}): remove it, entitysam creates it"

    def _remove_if_free(self) -> None:
        """Remove the lock file if no run holds its lock (as :meth:`release` does), never one
        that another run holds."""
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                st = os.fstat(fd)
                # (never a file of the user's: the stop may have come before it was told apart)
                if os.path.samestat(st, os.stat(self.path)) and st.st_nlink == 1 and self._ours(fd):
                    self.path.unlink()
            finally:
                os.close(fd)

    def _remove_created_parents(self) -> None:
        for p in self._created:
            with contextlib.suppress(OSError):
                p.rmdir()  # only if still empty

    def release(self) -> None:
        if self._count <= 0:
            return
        self._count -= 1
        if self._count:
            return
        OutputLock._held.pop(str(self.final), None)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                # while still locked: nobody can be relying on it; not a file put in its place
                if os.path.samestat(os.fstat(self._fd), os.lstat(self.path)):
                    self.path.unlink()
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self._remove_created_parents()

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
