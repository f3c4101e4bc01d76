"""Result folder names and the checks that keep outputs away from inputs; write errors in words."""

from __future__ import annotations

import errno
import os
from pathlib import Path, PurePath
from typing import Any, Sequence

from ..errors import OutputError

__all__ = ["MAX_NAME_BYTES", "NAME_MAX", "UnsafeOverwriteError", "safe_name", "name_clash", "check_name_fits",
           "describe_os_error", "path_relation", "check_not_input", "nearest_existing", "leaves_its_folder"]

# Bytes of a result name: the longest sibling adds ".", ".partial-<pid>-<8 hex>" (about 30 bytes)
# and file systems allow 255 bytes per name.
MAX_NAME_BYTES = 200
NAME_MAX = 255  # bytes of one path component on common file systems (where pathconf cannot say)


class UnsafeOverwriteError(OutputError):
    """--overwrite would replace a folder this tool did not write, or an input; or a run would
    write into (and then delete) a file of the user's named like its lock file."""


def safe_name(name: str) -> str:
    """`name` (derived from an input: a file stem, a folder name, a stream) made into one safe
    path component: no separators, NUL or control characters (each becomes ``_``), no leading
    dot (``.``, ``..`` and hidden names would be the output root, its parent, or look like our
    staging folders), at most MAX_NAME_BYTES bytes of UTF-8 (a longer name is cut and gets a
    hash of the full name, so two long names stay distinct). Never empty."""
    import hashlib  # noqa: PLC0415
    import unicodedata  # noqa: PLC0415

    cleaned = "".join("_" if (ch in "/\\" or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs")) else ch
                      for ch in str(name))
    cleaned = cleaned.strip()
    if cleaned.startswith("."):
        cleaned = "_" + cleaned.lstrip(".")
    cleaned = cleaned or "_"
    encoded = cleaned.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_NAME_BYTES:
        digest = hashlib.sha1(str(name).encode("utf-8", "surrogatepass")).hexdigest()[:10]
        head = encoded[:MAX_NAME_BYTES - len(digest) - 1].decode("utf-8", "ignore")
        cleaned = f"{head}~{digest}"
    return cleaned


def name_clash(names: Sequence[str]) -> tuple[int, int, str] | None:
    """The first two of `names` (result folder names) that would be one folder: equal, or equal
    where the file system ignores case and Unicode normalisation (macOS, Windows, exFAT, ext4
    casefold folders: ``Clip`` and ``clip``, ``é`` composed and decomposed), as ``(i, j, words)``
    with `words` saying which; None when all are distinct."""
    import unicodedata  # noqa: PLC0415

    seen: dict[str, int] = {}
    for j, name in enumerate(names):
        key = unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())
        if key in seen:
            i = seen[key]
            words = "" if names[i] == name else (
                f" (as {name}: the same folder where the file system ignores case or Unicode normalisation, "
                "as on macOS, Windows and exFAT)")
            return i, j, words
        seen[key] = j
    return None


def check_name_fits(path: str | os.PathLike, what: str) -> None:
    """OutputError if the last component of `path` is longer than its folder's file system allows
    (NAME_MAX: 255 bytes almost everywhere): said before any work, not when the file is written."""
    path = Path(path)
    try:
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = NAME_MAX
    size = len(os.fsencode(path.name))
    if size > limit:
        raise OutputError(f"{what} {path}: the name is {size} bytes long, longer than the file system allows "
                          f"({limit} bytes): choose a shorter name")


def describe_os_error(err: OSError, what: str) -> str:
    """``cannot write <what> [<file>]: <cause>``: the one wording of a failed write, whatever
    wrote. The causes a user can act on are said in words: a full disk, a quota, a file over a
    size limit, a folder not writable."""
    cause = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        cause = "no space left on the device (disk full)"
    elif err.errno == errno.EDQUOT:
        cause = "disk quota exceeded"
    elif err.errno == errno.EFBIG:  # RLIMIT_FSIZE (ulimit -f, batch schedulers) or e.g. FAT's 4 GiB
        cause = "file too large (over the file-size limit of this process, ulimit -f, or of the file system)"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause = f"{cause} (the output folder is not writable)"
    name = f" {err.filename}" if err.filename else ""
    return f"cannot write {what}{name}: {cause}"


def path_relation(a: Path, b: Path) -> str | None:
    """How folder/file `a` relates to `b` ("is", "contains", "lies inside"), or None."""
    if a == b:
        return "is"
    if a in b.parents:
        return "contains"
    if b in a.parents:
        return "lies inside"
    return None


def check_not_input(target: str | os.PathLike, inputs: Sequence[Any], what: str) -> None:
    """Raise UnsafeOverwriteError if `target` is, contains or lies inside one of `inputs`
    (paths; other inputs, e.g. stream URLs, are ignored)."""
    target_real = Path(os.path.realpath(target))
    for item in inputs:
        if not isinstance(item, (os.PathLike, Path)):
            continue
        relation = path_relation(target_real, Path(os.path.realpath(item)))
        if relation is not None:
            raise UnsafeOverwriteError(f"{what} {target} {relation} the input {item}: refusing to replace it "
                                       "(even when overwriting); choose another output folder")


def nearest_existing(path: str | os.PathLike) -> Path:
    """`path` itself if it exists, else its nearest existing ancestor: where a file or folder that
    is still to be made would be created (whether that can happen is decided there)."""
    ancestor = Path(path)
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return ancestor


def leaves_its_folder(name: str) -> bool:
    """Whether a file name read from a user's file (a dataset json's `file_name`), meant relative to
    a folder, names a file outside it: an absolute name (pathlib's `folder / name` is then `name`
    alone; on Windows also `C:x`, a drive), or one with a `..` component. Only the name is looked
    at: a symbolic link inside the folder that leads out is the user's own arrangement."""
    p = PurePath(name)
    return bool(p.anchor) or ".." in p.parts
