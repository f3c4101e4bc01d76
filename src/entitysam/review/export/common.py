"""What the exports share: the entities exported, their masks frame by frame, their categories,
and writing an output file or folder atomically without replacing one by accident."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np

from ...errors import OutputError, Remedy
from ...io.atomic import atomic_file, fsync_dir, publish_no_replace, temp_path
from ...io.owned import Layout, foreign_entries, list_foreign
from ...io.panoptic import frame_segments
from ..id_lookup import map_ids

__all__ = ["DEFAULT_CATEGORY", "MARKER", "exported_entities", "export_id_map", "map_ids", "frame_entities", "box_mask",
           "full_mask", "categories", "category_of", "check_outside_results", "output_file", "output_dir"]

DEFAULT_CATEGORY = "entity"  # the category of entities without a label
MARKER = "entitysam-export.json"  # in an exported folder: marks it as one (the only kind --overwrite replaces)


def exported_entities(view: Any) -> list[Any]:
    """The entities an export holds: present in at least one frame and not hidden, by id."""
    return [e for e in view.entities if not e.hidden and e.num_frames > 0]


def export_id_map(view: Any, t: int, keep: np.ndarray) -> np.ndarray:
    """Frame `t`'s [H, W] uint32 ids with every id not in `keep` set to 0."""
    keep = np.unique(np.asarray(keep, dtype=np.uint32))
    return map_ids(view.id_map(t), keep, keep)


def frame_entities(view: Any, t: int, keep: np.ndarray) -> tuple[np.ndarray, dict[int, dict[str, Any]]]:
    """Frame `t`'s exported id map (:func:`export_id_map`) and ``{id: {"id", "area", "bbox"}}``
    of the entities present in it (bbox: COCO [x, y, w, h], w = columns covered)."""
    ids = export_id_map(view, t, keep)
    return ids, {s["id"]: s for s in frame_segments(ids, "coco")}


def box_mask(ids: np.ndarray, seg: dict[str, Any]) -> np.ndarray:
    """The entity's mask cropped to its bbox: [h, w] bool."""
    x, y, w, h = seg["bbox"]
    return ids[y:y + h, x:x + w] == seg["id"]


def full_mask(ids: np.ndarray, seg: dict[str, Any]) -> np.ndarray:
    """The entity's [H, W] bool mask (built from its box: no full-frame comparison)."""
    x, y, w, h = seg["bbox"]
    mask = np.zeros(ids.shape, dtype=bool)
    mask[y:y + h, x:x + w] = box_mask(ids, seg)
    return mask


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


def check_outside_results(view: Any, out: Path) -> None:
    """OutputError if `out` is, or lies inside, the result folder exported or any other result
    folder of `entitysam segment`: an export (above all one with overwrite) must never replace
    a file of a result (``-o RESULT/manifest.json --overwrite`` would destroy it)."""
    from ...io.manifest import manifest_data
    from ..result import RESULT_FORMATS

    source = Path(getattr(view, "result", view).path).resolve()
    # absolute(), not abspath(): abspath drops "link/.." as text, where the system goes to the
    # parent of the link's target ("-o link/../x.json", link -> RESULT/panoptic, wrote RESULT/x.json)
    target = Path(out).absolute()
    target = target.parent.resolve() / target.name  # the folder it lands in, through any links
    for folder in (target, *target.parents):
        data = manifest_data(folder) if folder.is_dir() else None
        if folder == source or (data is not None and data.get("format") in RESULT_FORMATS):
            raise OutputError(f"{out} is inside the result folder {folder}: an export is written outside "
                              "result folders (choose another output)")


HEAD_BYTES = 4096  # how much of an existing output file is read to recognise an earlier export


def _check_free(out: Path, overwrite: bool, folder: bool, exported: Callable[[bytes], bool] | None = None,
                layout: Callable[[Any], Layout] | None = None) -> None:
    if not os.path.lexists(out):
        return
    # what overwrite would refuse is said first, without overwrite too: "use --overwrite" for a file
    # of the user's was advice that only led to the refusal
    if out.is_symlink():
        raise OutputError(f"{out} is a symbolic link: refusing to replace it, even when overwriting; choose "
                          "another output")
    if folder and not (out.is_dir() and (out / MARKER).is_file()):
        raise OutputError(f"{out} already exists and is not a folder entitysam exported (no {MARKER}): refusing "
                          "to replace it, even when overwriting; choose another output")
    if folder and (foreign := _foreign_in_export(out, layout)):
        raise OutputError(f"{out} holds files entitysam did not export ({list_foreign(out, foreign)}): refusing "
                          "to delete them, even when overwriting; move them away or choose another output")
    if not folder and not out.is_file():
        raise OutputError(f"{out} already exists and is not a file: refusing to replace it, even when "
                          "overwriting; choose another output")
    if not folder and exported is not None:
        with open(out, "rb") as f:
            head = f.read(HEAD_BYTES)
        if not exported(head):
            raise OutputError(f"{out} already exists and is not a file entitysam exported in this format: "
                              "refusing to replace it, even when overwriting; choose another output")
    if not overwrite:
        raise OutputError(f"{out} already exists", Remedy("overwrite", True, "to replace it"))


def _foreign_in_export(out: Path, layout: Callable[[Any], Layout] | None) -> list[str]:
    """What an exported folder holds besides its marker and what `layout` (of the marker's
    content; None for an unreadable marker) names."""
    try:
        marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        marker = None
    return foreign_entries(out, {MARKER: None, **(layout(marker) if layout is not None else {})})


def _check_parent(out: Path) -> None:
    if not out.parent.is_dir():
        state = "is not a folder" if os.path.lexists(out.parent) else "does not exist"
        raise OutputError(f"{out.parent} {state}: create it first or choose another output")


@contextlib.contextmanager
def output_file(out: Path, overwrite: bool, mode: str = "w",
                exported: Callable[[bytes], bool] | None = None) -> Iterator[IO]:
    """A file object whose content replaces `out` atomically when the block ends without error.
    exported(first bytes of an existing `out`): whether it is an earlier export (the only file
    overwrite replaces: ``-o notes.json --overwrite`` must not destroy notes.json)."""
    _check_free(out, overwrite, folder=False, exported=exported)
    _check_parent(out)
    try:
        with atomic_file(out, mode, replace=os.path.lexists(out)) as f:  # (checked: an earlier export)
            yield f
    except FileExistsError as err:
        if err.filename != str(out):
            raise
        raise _appeared(out) from None


def _appeared(out: Path) -> OutputError:
    return OutputError(f"{out} appeared while the export was written (another export to the same path?): "
                       "left as it is, nothing written", Remedy("overwrite", True, "to replace it"))


@contextlib.contextmanager
def output_dir(out: Path, overwrite: bool, layout: Callable[[Any], Layout] | None = None) -> Iterator[Path]:
    """A hidden staging folder beside `out`, renamed to `out` when the block ends without error
    (a previous export moved aside first and removed after); removed when it raises.
    layout(the content of an earlier export's marker): what it wrote besides the marker
    (:mod:`entitysam.io.owned`); overwrite refuses an earlier export holding anything else."""
    _check_free(out, overwrite, folder=True, layout=layout)
    _check_parent(out)
    stage = temp_path(out, "partial")
    stage.mkdir()
    try:
        yield stage
        old = None
        if os.path.lexists(out):
            _check_free(out, overwrite, folder=True, layout=layout)  # (it may have appeared or changed since)
            old = temp_path(out, "old")
            os.rename(out, old)
        try:
            publish_no_replace(stage, out)
        except FileExistsError:
            raise _appeared(out) from None
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
