"""Reading a file only when it lies inside given folders (the result folder, the static folder),
also when its path is changed meanwhile.

The check resolves the path (links followed) and requires it to lie inside one of the resolved
folders, `roots`. Opening that path by name afterwards followed whatever links had been put on it
since: ``panoptic/`` swapped for a link to ``~/.ssh`` between the check and the open, and a file
of the same name there was read (O_NOFOLLOW guards only the last component). Here the resolved
path is opened one component at a time from its root, each relative to the folder opened before
(``openat``) and none followed if it is a link now: what is opened is what the check saw, or
nothing. Where that cannot be done (Windows: no O_NOFOLLOW, no ``dir_fd``) the path is opened by
name, and then checked again: resolved once more, it must lie inside the roots and name the file
that was opened (stat's st_dev and st_ino against fstat's). A check made before the open proved
nothing of what the open found: a path outside at that stat, inside at the check and outside again
at the open read the file outside.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import BinaryIO, Sequence

from ..errors import EntitySAMError
from ..regular_file import open_regular

__all__ = ["OutsideRootsError", "confined_path", "open_confined"]

# O_PATH (Linux): a folder opened only to open inside it needs no read permission, as a path does not
_FOLDER_FLAGS = (getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0))
_WALKS = bool(getattr(os, "O_NOFOLLOW", 0) and getattr(os, "O_DIRECTORY", 0)) and os.open in os.supports_dir_fd
# what opening a component gives when a link was put in its place (a folder: ENOTDIR, the file: ELOOP)
_SWAPPED = (errno.ELOOP, errno.ENOTDIR)


class OutsideRootsError(EntitySAMError):
    """`path` leads outside every root (real: where, resolved), or a part of it was replaced by a
    link or another file while it was opened (real: None)."""

    def __init__(self, path: str | os.PathLike, real: Path | None):
        reason = (f"a link to {real}, outside the folder" if real is not None else
                  "replaced (by a symbolic link?) while it was opened")
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path, self.real = path, real


def confined_path(path: str | os.PathLike, roots: Sequence[Path]) -> tuple[Path, Path]:
    """The check: (the first root `path` lies in, `path` resolved). FileNotFoundError when it is
    missing, OutsideRootsError when it leads outside every root, OSError (ELOOP) for a link loop."""
    try:
        real = Path(path).resolve(strict=True)
    except RuntimeError:  # a link loop (Python < 3.13)
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.fspath(path)) from None
    for root in roots:
        if real.is_relative_to(root):
            return root, real
    raise OutsideRootsError(path, real)


def open_confined(path: str | os.PathLike, roots: Sequence[Path]) -> BinaryIO | None:
    """`path` open for reading (binary; see entitysam.regular_file.open_regular) when it is a regular
    file inside one of `roots` (resolved folders) and still the file checked when it is opened;
    None when it is no regular file (a folder, a named pipe: closed unread). Raises
    FileNotFoundError when it is gone, OutsideRootsError (see there), OSError when it cannot be
    opened."""
    if not _WALKS:
        return _open_and_compare(path, roots)
    root, real = confined_path(path, roots)
    parts = real.relative_to(root).parts
    if not parts:  # a root itself: a folder
        return None
    try:
        folder = os.open(root, _FOLDER_FLAGS)
        try:
            for part in parts[:-1]:
                inner = os.open(part, _FOLDER_FLAGS, dir_fd=folder)
                os.close(folder)
                folder = inner
            return open_regular(parts[-1], follow_links=False, dir_fd=folder)
        finally:
            os.close(folder)
    except OSError as err:
        if err.errno in _SWAPPED:
            raise OutsideRootsError(path, None) from None
        raise


def _open_and_compare(path: str | os.PathLike, roots: Sequence[Path]) -> BinaryIO | None:
    """Where there is no openat without following links: by name, then checked after the open (the
    path resolved anew, inside the roots, naming the file opened)."""
    _, real = confined_path(path, roots)
    f = open_regular(real, follow_links=False)
    if f is None:
        return None
    try:
        opened = os.fstat(f.fileno())
        _, now = confined_path(path, roots)
        named = os.stat(now)
    except BaseException:
        f.close()
        raise
    if (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino):
        f.close()
        raise OutsideRootsError(path, None)
    return f
