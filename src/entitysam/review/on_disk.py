"""Whether the result folder on disk is still the one a review opened: a cheap check per request.

Save and export compare SHA-256 digests of manifest.json and panoptic.json (ResultFolder.
check_unchanged); hashing on every id map or frame request would cost a read of both files each
time. What is compared here is a few ``stat`` calls: the folder's (device, inode) (``segment
--overwrite`` and a revision saved over the original rename a complete new folder into place: its
inode differs, whatever its files hold) and (device, inode, size, modification time) of
manifest.json and panoptic.json (one rewritten in place). A result folder moved back and forth, or
a file rewritten with the same size within one tick of the file system's clock, is not seen: the
digests of save and export still are.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import ResultChangedError, ResultFileGoneError, ResultFolderError
from ..io.manifest import MANIFEST

__all__ = ["WATCHED", "stat_identity", "check_identity", "version_token"]

WATCHED = (MANIFEST, "panoptic.json")  # the records everything else was read through

FileStat = tuple[int, int, int, int] | None
Identity = tuple[tuple[int, int], FileStat, FileStat]


def _file_stat(path: Path) -> FileStat:
    """(device, inode, size, mtime_ns) of `path`, None when it cannot be stat'ed (gone)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


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
    return ((st.st_dev, st.st_ino), *(_file_stat(path / name) for name in WATCHED))


def _what_changed(opened: Identity, now: Identity) -> str:
    """A few words on how `now` differs from `opened` (for the error message)."""
    if opened[0] != now[0]:
        return "another folder is in its place"
    for name, was, is_ in zip(WATCHED, opened[1:], now[1:]):
        if was != is_:
            return f"{name} is gone" if is_ is None else f"{name} was rewritten"
    return "changed"


def check_identity(path: Path, opened: Identity | None) -> None:
    """Nothing when the folder `path` still is what `opened` (its stat_identity when it was opened)
    names; ResultFileGoneError when it is gone (the viewer's 404), ResultChangedError when another
    result, or another manifest/panoptic.json, is there now (the viewer's 409). opened None (a
    ResultFolder not made by ResultFolder.open): nothing to compare with, nothing checked."""
    if opened is None:
        return
    now = stat_identity(path)
    if now != opened:
        raise ResultChangedError(f"the result changed on disk since the viewer opened it ({path}: "
                                 f"{_what_changed(opened, now)}): reload the viewer (restart `entitysam "
                                 "view` on it) to review what is there now")


def version_token(fingerprint: tuple[str | None, str | None]) -> str:
    """A short name of the opened result's content (from the digests of its manifest.json and
    panoptic.json): the viewer's page puts it in the URLs of frames, id maps and thumbnails, so a
    browser's cached copy of another result's file never answers for this one."""
    return hashlib.sha256(repr(fingerprint).encode()).hexdigest()[:16]
