"""The index of a COCO-panoptic-layout training dataset: its json read and checked, every file it
names checked to be there, before anything is trained (the layout: entitysam.train.data)."""

from __future__ import annotations

from pathlib import Path

from ..io.idpng import MAX_ID
from ..jsonio import load_file
from ..regular_file import path_problem
from .samples import DatasetError, PanopticRecord

__all__ = ["IMAGE_EXTS", "read_panoptic_dataset", "entity_shortage"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".webp")


def _resolve(root: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else root / q


def _list(doc, key: str, where: str) -> list:
    value = doc.get(key, []) if isinstance(doc, dict) else None
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise DatasetError(f"{where}: {key!r} must be a list of objects")
    return value


def _segment_id(value, where: str) -> int:
    # int() took "abc" as a traceback and 1.5 as id 1; an id outside 24 bits is in no RGB PNG
    ok = not isinstance(value, bool) and (isinstance(value, int) or (isinstance(value, float) and value.is_integer()))
    if not ok or not 0 <= int(value) <= MAX_ID:
        raise DatasetError(f"{where}: segment id {value!r} is not an integer in 0..{MAX_ID}")
    return int(value)


def _crowd_flag(value, where: str) -> bool:
    # bool("0") is True: a string flag quietly dropped the segment as crowd
    if isinstance(value, str) or not isinstance(value, (int, float)) or value not in (0, 1):
        raise DatasetError(f"{where}: iscrowd {value!r} is not 0 or 1")
    return value == 1


def read_panoptic_dataset(root: str | Path, image_dir: str = "train2017", panoptic_dir: str = "panoptic_train2017",
                          json_path: str = "annotations/panoptic_train2017.json") -> list[PanopticRecord]:
    """Records of a COCO-panoptic-layout dataset, in the json's annotation order.

    The image of an annotation is the `images` entry with its `image_id` when the json has one,
    else `<ann file stem>.jpg` (the official COCO reader's rule), else any existing image file
    with that stem. Raises :class:`DatasetError` for a json that is not of this layout and when
    any image or panoptic PNG it names is missing (all are checked here: a missing one used to
    stop the training with a traceback when its turn came, hours in).
    """
    root = Path(root)
    image_root, pan_root = _resolve(root, image_dir), _resolve(root, panoptic_dir)
    jpath = _resolve(root, json_path)
    info = load_file(jpath, "COCO panoptic JSON", DatasetError)
    if not isinstance(info, dict) or not isinstance(info.get("annotations"), list):
        raise DatasetError(f"{jpath}: no 'annotations' list (not a COCO panoptic json)")
    images = {}
    for i, img in enumerate(_list(info, "images", str(jpath))):
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise DatasetError(f"{jpath} images[{i}]: no 'file_name'")
        images[img.get("id") if isinstance(img.get("id"), (int, str)) else None] = img["file_name"]
    records = []
    for i, ann in enumerate(_list(info, "annotations", str(jpath))):
        where = f"{jpath} annotations[{i}]"
        if not isinstance(ann.get("file_name"), str) or not ann["file_name"]:
            raise DatasetError(f"{where}: no 'file_name' (the panoptic PNG)")
        stem = Path(ann["file_name"]).stem
        image_id = ann.get("image_id")
        name = images.get(image_id) if isinstance(image_id, (int, str)) else None
        image_path = image_root / name if name else image_root / (stem + ".jpg")
        if not image_path.is_file() and not name:
            for ext in IMAGE_EXTS:
                if (image_root / (stem + ext)).is_file():
                    image_path = image_root / (stem + ext)
                    break
        segs = _list(ann, "segments_info", where)
        crowd = [_crowd_flag(s.get("iscrowd", 0), f"{where} segments_info[{j}]") for j, s in enumerate(segs)]
        ids = [_segment_id(s.get("id"), f"{where} segments_info[{j}]") for j, s in enumerate(segs)]
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
        cause = path_problem(p)
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
