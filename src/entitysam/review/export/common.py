"""What the exports share: the entities exported, their masks frame by frame, their categories,
and writing an output file or folder atomically without replacing one by accident."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

from ...errors import OutputError
from ...io.atomic import atomic_file, fsync_dir

__all__ = ["DEFAULT_CATEGORY", "exported_entities", "export_id_map", "categories", "category_of", "bbox_of",
           "output_file", "output_dir", "MARKER"]

DEFAULT_CATEGORY = "entity"  # the category of entities without a label
MARKER = "entitysam-export.json"  # in an exported folder: marks it as one (the only kind --overwrite replaces)


def exported_entities(view: Any) -> list[Any]:
    """The entities an export holds: present in at least one frame and not hidden, by id."""
    return [e for e in view.entities if not e.hidden and e.num_frames > 0]


def export_id_map(view: Any, t: int, keep: np.ndarray) -> np.ndarray:
    """Frame `t`'s [H, W] uint32 ids with every id not in `keep` (sorted ids) set to 0."""
    ids = view.id_map(t)
    return np.where(np.isin(ids, keep), ids, 0).astype(np.uint32, copy=False)


def categories(entities: list[Any]) -> list[str]:
    """Category names, ``entity`` first, then the entities' labels in order of first use (ids 1, 2, ...)."""
    names = [DEFAULT_CATEGORY]
    for e in entities:
        if e.label and e.label not in names:
            names.append(e.label)
    return names


def category_of(entity: Any, names: list[str]) -> int:
    """The 1-based category id of an entity (its label's, or ``entity``'s)."""
    return names.index(entity.label or DEFAULT_CATEGORY) + 1


def bbox_of(mask: np.ndarray) -> list[int]:
    """COCO [x, y, w, h] of a non-empty [H, W] bool mask (w, h: columns / rows covered)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _check_free(out: Path, overwrite: bool, folder: bool) -> None:
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise OutputError(f"{out} already exists: use --overwrite to replace it")
    if out.is_symlink():
        raise OutputError(f"{out} is a symbolic link: refusing to replace it")
    if folder and not (out.is_dir() and (out / MARKER).is_file()):
        raise OutputError(f"{out} exists and is not a folder entitysam exported (no {MARKER}): refusing to "
                          "replace it even with --overwrite; choose another output")
    if not folder and not out.is_file():
        raise OutputError(f"{out} exists and is not a file: refusing to replace it")


@contextlib.contextmanager
def output_file(out: Path, overwrite: bool, mode: str = "w") -> Iterator[IO]:
    """A file object whose content replaces `out` atomically when the block ends without error."""
    _check_free(out, overwrite, folder=False)
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent} does not exist: create it first or choose another output")
    with atomic_file(out, mode) as f:
        yield f


@contextlib.contextmanager
def output_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """A hidden staging folder beside `out`, renamed to `out` when the block ends without error
    (a previous export moved aside first and removed after); removed when it raises."""
    _check_free(out, overwrite, folder=True)
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent} does not exist: create it first or choose another output")
    stage = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    stage.mkdir()
    try:
        yield stage
        old = None
        if os.path.lexists(out):
            old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(out, old)
        try:
            os.rename(stage, out)
        except BaseException:
            if old is not None:
                os.rename(old, out)
            raise
        fsync_dir(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
