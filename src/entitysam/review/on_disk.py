"""Whether the result folder on disk is still the one a review opened: a cheap check per request.

Save and export compare SHA-256 digests of manifest.json and panoptic.json (ResultFolder.
check_unchanged); hashing on every id map or frame request would cost a read of both files each
time. What is compared here is a few ``stat`` calls:

* the folder's (device, inode): ``segment --overwrite`` and a revision saved over the original
  rename a complete new folder into place, whose inode differs whatever its files hold;
* the folder's change time (ctime) where its modification time (mtime) is unchanged: renaming a
  folder sets its ctime (POSIX leaves it open; Linux's file systems do) but leaves its mtime,
  which only a change of its entries sets. So the folder moved away (another result in its place
  meanwhile) and moved back is seen, also within one request, where (device, inode) are the same
  again. A file added or removed in the folder sets both: that alone changes no result, and the
  new times become what is compared next (a later rename is seen again);
* (device, inode, size, mtime, ctime) of manifest.json and panoptic.json: one rewritten in place
  or renamed over. ctime cannot be set by a program (``os.utime``, ``touch -r``, ``cp -p`` and
  ``rsync -a`` put an older mtime back, not the ctime), so a rewrite at the same size with its
  mtime restored is seen, and so is a folder of copies on reused inode numbers with the same
  sizes and mtimes.

Not seen (the digests of save and export still are): a rewrite at the same size within one tick
of the file system's clock of the write before the folder was opened (all of size, mtime and
ctime equal; on Linux 6.13+ the clock is fine-grained once a stat asked for it), the folder moved
away and back with a file also added or removed in it between two requests, and any file other
than those two (an id PNG) replaced.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import ResultChangedError, ResultFileGoneError, ResultFolderError
from ..io.manifest import MANIFEST

__all__ = ["WATCHED", "stat_identity", "check_identity", "version_token"]

WATCHED = (MANIFEST, "panoptic.json")  # the records everything else was read through

FileStat = tuple[int, int, int, int, int] | None
FolderStat = tuple[int, int, int, int]  # device, inode, mtime_ns, ctime_ns
Identity = tuple[FolderStat, FileStat, FileStat]


def _file_stat(path: Path) -> FileStat:
    """(device, inode, size, mtime_ns, ctime_ns) of `path`, None when it cannot be stat'ed (gone)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def stat_identity(path: Path) -> Identity:
    """What names the result folder `path` as it is now (see the module docstring). Raises
    ResultFileGoneError when the folder itself is gone (or no folder any more)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise ResultFileGoneError(f"{path}: gone from disk since the result was opened (reopen it)") from None
    except OSError as err:
        raise ResultFolderError(f"{path}: cannot read it: {err.strerror or err}") from None
    if not os.path.isdir(path):
        raise ResultFileGoneError(f"{path}: gone from disk since the result was opened (no folder any more)")
    return ((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns), *(_file_stat(path / name) for name in WATCHED))


def _what_changed(opened: Identity, now: Identity) -> str | None:
    """A few words on how the result `now` differs from `opened`, None when it is the same result."""
    was, is_ = opened[0], now[0]
    if was[:2] != is_[:2]:
        return "another folder is in its place"
    if was[3] != is_[3] and was[2] == is_[2]:  # ctime without mtime: the folder itself renamed (see above)
        return "the folder was moved away and back, replaced by a copy, or its permissions changed"
    for name, was_file, is_file in zip(WATCHED, opened[1:], now[1:]):
        if was_file != is_file:
            return f"{name} is gone" if is_file is None else f"{name} was rewritten"
    return None


def check_identity(path: Path, opened: Identity | None) -> Identity | None:
    """What to compare the folder `path` with next time, when it still is the result that `opened`
    (its stat_identity when it was opened, or what this returned since) names; ResultFileGoneError
    when it is gone (the viewer's 404), ResultChangedError when another result, or another
    manifest/panoptic.json, is there now (the viewer's 409). opened None (a ResultFolder not made by
    ResultFolder.open): nothing to compare with, nothing checked."""
    if opened is None:
        return None
    now = stat_identity(path)
    if now == opened:
        return opened
    what = _what_changed(opened, now)
    if what is not None:
        raise ResultChangedError(f"the result changed on disk since the viewer opened it ({path}: {what}): "
                                 "reload the viewer (restart `entitysam view` on it) to review what is there now")
    return now  # only entries of the folder added or removed: its new times, so a later rename shows


def version_token(fingerprint: tuple[str | None, str | None]) -> str:
    """A short name of the opened result's content (from the digests of its manifest.json and
    panoptic.json): the viewer's page puts it in the URLs of frames, id maps and thumbnails, so a
    browser's cached copy of another result's file never answers for this one."""
    return hashlib.sha256(repr(fingerprint).encode()).hexdigest()[:16]
