"""The index of a COCO-panoptic-layout training dataset: its json read and checked, every file it
names checked to be there, before anything is trained (the layout: entitysam.train.data)."""

from __future__ import annotations

import os
from pathlib import Path, PurePath

from ..io.idpng import MAX_ID
from ..io.paths import leaves_its_folder
from ..io.sources import IMAGE_EXTENSIONS
from ..jsonio import load_file
from ..regular_file import path_problem
from .samples import DatasetError, PanopticRecord

__all__ = ["read_panoptic_dataset", "entity_shortage"]


def _resolve(root: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else root / q


class _ImagesByStem:
    """The image files of each folder looked in, by stem (suffixes of IMAGE_EXTENSIONS, the frame
    folders' rule, in any case): a folder is listed once, and only when an image is not where the
    json says, so a complete dataset costs no listing."""

    def __init__(self):
        self._folders: dict[Path, dict[str, list[str]]] = {}

    def candidates(self, folder: Path, stem: str) -> list[Path]:
        """The images `folder/<stem>.<ext>`, in the order of IMAGE_EXTENSIONS."""
        if folder not in self._folders:
            by_stem: dict[str, list[str]] = {}
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        base, ext = os.path.splitext(entry.name)
                        if ext.lower() in IMAGE_EXTENSIONS:
                            by_stem.setdefault(base, []).append(entry.name)
            except OSError:
                pass  # (a missing folder: the image is reported missing with the others)
            self._folders[folder] = by_stem
        names = self._folders[folder].get(stem, [])
        return [folder / n for n in sorted(names, key=lambda n: (IMAGE_EXTENSIONS.index(Path(n).suffix.lower()), n))]

    def find(self, image_root: Path, name: str | None, stem: str) -> Path:
        """The image of an annotation: the json's file name when it is there; else, for a json
        naming none, `<stem>.jpg` (the official COCO reader's rule) or any image with that stem;
        for a json naming one with another suffix (a dataset converted to TIFF), the one image of
        that stem beside where it names, if there is exactly one."""
        if name:
            path = image_root / name
            if path.is_file():
                return path
            found = self.candidates(path.parent, path.stem)
            return found[0] if len(found) == 1 else path
        path = image_root / (stem + ".jpg")
        if path.is_file():
            return path
        found = self.candidates(image_root, stem)
        return found[0] if found else path


def _list(doc, key: str, where: str) -> list:
    value = doc.get(key, []) if isinstance(doc, dict) else None
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise DatasetError(f"{where}: {key!r} must be a list of objects")
    return value


def _segment_id(value, where: str) -> int:
    # int() took "abc" as a traceback and 1.5 as id 1; an id outside 24 bits is in no RGB PNG
    ok = not isinstance(value, bool) and (isinstance(value, int) or (isinstance(value, float) and value.is_integer()))
    if not ok or not 0 <= int(value) <= MAX_ID:
        raise DatasetError(f"{where}: segment id {value!r} is not an integer in 1..{MAX_ID}")
    if value == 0:  # the PNG's "no segment" value: every unlabeled pixel was trained on as one entity
        raise DatasetError(f"{where}: segment id 0 is the panoptic PNG's value for pixels of no segment")
    return int(value)


def _segment_ids(segs: list, where: str) -> list[int]:
    ids: dict[int, int] = {}
    for j, s in enumerate(segs):
        sid = _segment_id(s.get("id"), f"{where} segments_info[{j}]")
        if sid in ids:  # its pixels were one entity, or a crowd and an entity at once
            raise DatasetError(f"{where} segments_info[{j}]: segment id {sid} is also segments_info[{ids[sid]}]'s")
        ids[sid] = j
    return list(ids)


def _file_name(entry: dict, where: str, what: str, folder: tuple[str, Path]) -> str:
    """The entry's file name, relative to `folder` (its option and path)."""
    name = entry.get("file_name")
    if not isinstance(name, str) or not name:
        raise DatasetError(f"{where}: no 'file_name'{what}")
    if "\0" in name:  # no file can have it: os.stat's bare "embedded null byte" named no entry
        raise DatasetError(f"{where}: 'file_name' {name!r} holds a NUL character")
    option, path = folder
    if leaves_its_folder(name):
        # Read from another folder (a panoptic PNG trained on as the image). An absolute name inside
        # the folder is that file; '..' is never resolved by its letters (a link before it leads
        # elsewhere than the letters say).
        if ".." not in PurePath(name).parts:
            inside = os.path.relpath(os.path.normpath(name), os.path.abspath(path))
            if inside != "." and not leaves_its_folder(inside):
                return inside
        raise DatasetError(f"{where}: 'file_name' {name!r} names a file outside {option} ({path}): an absolute "
                           "name or one with '..' is refused; put the file there (a symbolic link will do)")
    return name


def _crowd_flag(value, where: str) -> bool:
    # bool("0") is True: a string flag quietly dropped the segment as crowd
    if isinstance(value, str) or not isinstance(value, (int, float)) or value not in (0, 1):
        raise DatasetError(f"{where}: iscrowd {value!r} is not 0 or 1")
    return value == 1


def read_panoptic_dataset(root: str | Path, image_dir: str = "train2017", panoptic_dir: str = "panoptic_train2017",
                          json_path: str = "annotations/panoptic_train2017.json") -> list[PanopticRecord]:
    """Records of a COCO-panoptic-layout dataset, in the json's annotation order.

    The image of an annotation is the `images` entry with its `image_id` when the json has one
    (if that file is missing, the one image file of the same stem beside it), else `<ann file
    stem>.jpg` (the official COCO reader's rule), else any existing image file with that stem
    (suffixes: those of the frame folders, ``io.sources.IMAGE_EXTENSIONS``, any case). Raises :class:`DatasetError` for a json that is not of this layout and when
    any image or panoptic PNG it names is missing (all are checked here: a missing one used to
    stop the training with a traceback when its turn came, hours in).
    """
    root = Path(root)
    image_root, pan_root = _resolve(root, image_dir), _resolve(root, panoptic_dir)
    jpath = _resolve(root, json_path)
    info = load_file(jpath, "COCO panoptic JSON", DatasetError)
    if not isinstance(info, dict) or not isinstance(info.get("annotations"), list):
        raise DatasetError(f"{jpath}: no 'annotations' list (not a COCO panoptic json)")
    images, first, conflicts = {}, {}, {}
    for i, img in enumerate(_list(info, "images", str(jpath))):
        name = _file_name(img, f"{jpath} images[{i}]", "", ("data.image_dir", image_root))
        key = img.get("id") if isinstance(img.get("id"), (int, str)) else None
        if key is not None and images.get(key, name) != name:
            # refused where an annotation uses it (the last one was taken without a word: masks trained
            # onto another picture); a merged json's overlapping ids that nothing uses are harmless
            conflicts.setdefault(key, f"{jpath} images[{i}]: id {key!r} is also images[{first[key]}]'s, which "
                                      f"names another file ({images[key]!r}, not {name!r})")
        first.setdefault(key, i)
        images[key] = name
    records = []
    images_by_stem = _ImagesByStem()
    for i, ann in enumerate(_list(info, "annotations", str(jpath))):
        where = f"{jpath} annotations[{i}]"
        stem = Path(_file_name(ann, where, " (the panoptic PNG)", ("data.panoptic_dir", pan_root))).stem
        image_id = ann.get("image_id")
        if isinstance(image_id, (int, str)) and image_id in conflicts:
            raise DatasetError(f"{conflicts[image_id]}, and {where} uses it")
        name = images.get(image_id) if isinstance(image_id, (int, str)) else None
        image_path = images_by_stem.find(image_root, name, stem)
        segs = _list(ann, "segments_info", where)
        crowd = [_crowd_flag(s.get("iscrowd", 0), f"{where} segments_info[{j}]") for j, s in enumerate(segs)]
        ids = _segment_ids(segs, where)
        records.append(PanopticRecord(
            str(image_path), str(pan_root / ann["file_name"]),
            tuple(sid for sid, c in zip(ids, crowd) if not c),
            tuple(sid for sid, c in zip(ids, crowd) if c),
        ))
    if not records:
        raise DatasetError(f"{jpath}: no annotations")
    if not any(r.segment_ids for r in records):
        # every clip would have no target: the run used to train to its end without a word and
        # give a model taught to find nothing
        raise DatasetError(f"{jpath}: none of its {len(records)} images has a non-crowd segment (each "
                           "segments_info is empty or holds crowd segments only): there is nothing to train on")
    missing, unusable = [], []
    for p in (p for r in records for p in (r.image_path, r.panoptic_path)):
        cause = path_problem(p, nonempty=True)  # a 0-byte file now, not when its turn comes
        if cause == "missing":
            missing.append(p)
        elif cause:
            unusable.append(f"{p} ({cause})")
    for problems, what in ((missing, "missing"), (unusable, "unusable")):
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise DatasetError(f"{jpath}: {len(problems)} dataset file(s) {what}: {', '.join(problems[:3])}{more}")
    return records


def entity_shortage(records: list[PanopticRecord]) -> str | None:
    """A warning when fewer than half of the images have a non-crowd segment, else None. Such a
    dataset is more likely a conversion that lost its segments or set iscrowd wrongly than a
    real one, and its empty clips teach every query to find nothing."""
    with_entities = sum(1 for r in records if r.segment_ids)
    if 2 * with_entities >= len(records):
        return None
    return (f"warning: only {with_entities} of {len(records)} images ({with_entities / len(records):.1%}) have a "
            "non-crowd segment; the others are trained on as pictures of nothing (check the json's "
            "segments_info and iscrowd flags)")
