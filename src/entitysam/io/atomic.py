"""Writing a file so that readers see the old content or the new one, never a part of it.

The data goes to a hidden temporary file in the same folder, which is renamed over the target
(`os.replace` is atomic on POSIX and Windows within one file system). `durable=True` also
flushes the file and its folder to disk, for records that must survive a power loss
(journals of a commit in progress). `replace=False` never replaces an existing target: the
finished file is published with :func:`publish_no_replace` (a hard link, which fails if the
name exists), so two writers racing for one name cannot both win.

Temporary names are short and of fixed length (:func:`temp_path`: ``.entitysam-<kind>-<pid>-<hex>``,
never derived from the final name), so that a target whose name fits the file system's limit
(255 bytes) always gets a temporary name that fits too.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import io
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Any, Iterator

from .. import jsonio
from .output_lock import NO_FLOCK, pid_alive

__all__ = ["TEMP_PREFIX", "NO_FLOCK", "temp_path", "locked_temp_file", "remove_dead_temp_file",
           "fsync_dir", "publish_no_replace", "atomic_file", "write_bytes_atomic", "write_text_atomic",
           "write_json_atomic"]

TEMP_PREFIX = ".entitysam-"  # temporary files and folders: ".entitysam-<kind>-<pid>-<12 hex>"

# errors of os.link that mean "no hard links here" (FAT, some network and FUSE file systems)
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS, errno.EXDEV, errno.EACCES}
_RENAME_NOREPLACE = 1


def temp_path(final: str | os.PathLike, kind: str = "tmp") -> Path:
    """A hidden temporary name beside `final` (same folder, so renames stay atomic), at most about
    40 bytes whatever the length of `final`'s name."""
    return Path(final).with_name(f"{TEMP_PREFIX}{kind}-{os.getpid()}-{secrets.token_hex(6)}")


try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: temporary files are not locked
    fcntl = None


def _lock_new(f: IO[bytes], tmp: str | os.PathLike) -> bool:
    """Lock the new file `tmp`, open as `f`. False when it was removed before the lock was taken:
    a cleaner (:func:`remove_dead_temp_file`) found it unlocked in the moment between its
    creation and its lock; then it is made again."""
    if fcntl is None:
        return True
    try:  # (waits only while a cleaner looks at it: a cleaner holds it for a moment, never more)
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    except OSError:
        return True  # (a file system without flock: the pid alone tells)
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.lstat(tmp))
    except FileNotFoundError:
        return False
    except OSError:
        return True


@contextlib.contextmanager
def locked_temp_file(tmp: str | os.PathLike) -> Iterator[IO[bytes]]:
    """The new file `tmp` (from :func:`temp_path`), open for writing and locked (``flock``) until
    the block ends: whoever cleans up the temporary files of killed runs
    (:func:`remove_dead_temp_file`) leaves it alone, also on another machine sharing the
    folder, where its pid says nothing. The lock outlasts the file object: close it in the block
    (a write error that a file system reports only on close, as NFS can, then publishes nothing)
    and publish `tmp` in the block too, still locked. The file is not removed here."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        f = open(os.open(tmp, flags, 0o666), "wb")  # noqa: SIM115 - (closed below)
        try:
            if _lock_new(f, tmp):
                break
        except BaseException:
            f.close()
            raise
        f.close()
    # A second descriptor of the same open file holds the lock once `f` is closed (a flock, and
    # NFS's emulation of one, lasts until the last descriptor of the open file is closed).
    held = os.dup(f.fileno()) if fcntl is not None else None
    try:
        with f:
            yield f
    finally:
        if held is not None:
            os.close(held)


def _probe_lock(fd: int) -> bool | None:
    """Whether the lock of the open temporary file `fd` is held by a process (True), free (False:
    taken here, shared, until `fd` is closed), or cannot be told on this file system (None)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # (shared: NFS's emulation accepts it read-only)
    except OSError as err:
        return None if err.errno in NO_FLOCK else True
    return False


def _open_to_probe(path: str | os.PathLike) -> int:
    return os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
                   | getattr(os, "O_CLOEXEC", 0))


def remove_dead_temp_file(path: str | os.PathLike, pid: int) -> bool:
    """Remove the temporary file `path` (:func:`temp_path`, named with `pid`) of a run that was
    killed while writing it; True if removed. The one rule: its writer locks it
    (:func:`locked_temp_file`), so it is a dead run's exactly when nobody holds its lock, on this
    machine or on another one sharing the folder. The pid decides only where the lock cannot be
    told (no flock on this file system): a pid alive on this machine (perhaps another machine's
    pid) keeps it. Never a folder, a link or any other kind of file."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):  # (not opened: a device's open may do something)
            return False
        if fcntl is None:  # no lock to probe; and Windows removes no file that is open
            if pid == os.getpid() or pid_alive(pid):
                return False
            os.unlink(path)
            return True
        fd = _open_to_probe(path)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        held = _probe_lock(fd)
        if held is None:
            held = pid == os.getpid() or pid_alive(pid)
        # Removed while the shared lock is held here: a writer that made this file a moment ago
        # and locks it only now finds its name gone, and makes it again (_lock_new).
        if held or not os.path.samestat(os.fstat(fd), os.lstat(path)):
            return False
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rename_noreplace(src: Path, dst: Path) -> bool:
    """``renameat2(RENAME_NOREPLACE)`` (Linux 3.15+, glibc 2.28+): True if it moved `src`,
    False if it is not available here; FileExistsError if `dst` exists."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):  # not supported by this file system
        return False
    raise OSError(err, os.strerror(err), str(dst))


def publish_no_replace(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished file or folder `tmp` to `final`, never replacing anything there: raises
    FileExistsError (and leaves `tmp` in place) if `final` exists, even if it appeared a moment
    ago. A file is hard-linked (``os.link`` fails if the name exists) and its temporary name
    removed; a folder, or a file where hard links are not supported, is renamed with
    ``renameat2(RENAME_NOREPLACE)``; where neither exists, the name is checked just before a
    plain rename (the only case with a window between the check and the move)."""
    tmp, final = Path(tmp), Path(final)
    if not tmp.is_dir() or tmp.is_symlink():
        try:
            os.link(tmp, final, follow_symlinks=False)
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, "already exists", str(final)) from None
        except OSError as err:
            if err.errno not in _NO_LINKS:
                raise
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            return
    if _rename_noreplace(tmp, final):
        return
    if os.path.lexists(final):
        raise FileExistsError(errno.EEXIST, "already exists", str(final))
    os.rename(tmp, final)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", *, durable: bool = False,
                replace: bool = True) -> Iterator[IO]:
    """A file object to write `path` through: the data goes to a hidden temporary file beside it
    (locked: :func:`locked_temp_file`), renamed over `path` when the block ends without an error
    (removed when it raises).
    mode: "wb" or "w" (UTF-8 text). replace=False: FileExistsError (the temporary file removed)
    if `path` exists when the data is complete, instead of replacing it."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        # locked while written: a run cleaning up after killed ones (on another machine sharing the
        # folder too, where this pid says nothing) leaves it alone
        with locked_temp_file(tmp) as raw:
            with raw if "b" in mode else io.TextIOWrapper(raw, encoding="utf-8") as f:
                yield f
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            # closed (a write error reported only on close publishes nothing), and still locked
            # until published: a cleaner never takes it for a killed run's in between
            if replace:
                os.replace(tmp, path)
            else:
                publish_no_replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and err.filename in (None, str(tmp)):
            # A message names the file asked for: not the hidden name, gone now, nor nothing (a
            # failed write() or flush, on a full disk, carries no name).
            err.filename = str(path)
        raise
    if durable:
        fsync_dir(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, durable: bool = False, replace: bool = True) -> None:
    with atomic_file(path, "wb", durable=durable, replace=replace) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, *, durable: bool = False, replace: bool = True) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable, replace=replace)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = None, durable: bool = False,
                      replace: bool = True) -> None:
    """`obj` as JSON (strict: NaN/inf refused by `jsonio`) plus a newline."""
    write_text_atomic(path, jsonio.dumps(obj, indent=indent, compact=not indent) + "\n", durable=durable,
                      replace=replace)
