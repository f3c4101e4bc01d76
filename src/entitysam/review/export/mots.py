"""MOTS PNG export (the KITTI-MOTS / MOTSChallenge instance PNGs, what CVAT imports as mask tracks).

Layout (CVAT's "MOTS PNG", one subset named after the video)::

    OUT/<video>/instances/<frame>.png    16-bit grayscale: class_id * 1000 + instance id (0: none)
    OUT/<video>/instances/labels.txt     line k names class k + 1 (our class: "entity")
    OUT/<video>.txt                      (txt=True) the MOTS txt format: one line per mask,
                                         "frame id class_id height width rle" (KITTI-MOTS: frames
                                         from 0; rle: COCO compressed counts)
    OUT/entitysam-export.json            which entity each instance id is

Instance ids are the entity ids when they all fit (below 1000, MOTS's limit per class, and
class_id * 1000 + instance <= 65535: at most 535 for class 65), else the entities numbered 1, 2,
... in id order; more entities than fit (999, 535 for class 65) are refused, never wrapped.
Class 10 is refused: KITTI-MOTS and MOTSChallenge read it as "ignore region", not as objects.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ... import jsonio
from ...argtypes import check_flags
from ...errors import InvalidArgumentError, OutputError
from ...io.entities import rle_encode
from .common import DEFAULT_CATEGORY, MARKER, exported_entities, frame_entities, full_mask, map_ids, output_dir

__all__ = ["MAX_INSTANCES", "IGNORE_CLASS", "write_mots", "instance_ids"]

MAX_INSTANCES = 1000
MAX_VALUE = 65535  # the largest 16-bit PNG value: uint16 wrapped a larger one onto another instance
IGNORE_CLASS = 10


def instance_ids(entity_ids: list[int], class_id: int = 2) -> dict[int, int]:
    """entity id -> MOTS instance id (see the module docstring)."""
    top = min(MAX_INSTANCES - 1, MAX_VALUE - class_id * MAX_INSTANCES)
    if len(entity_ids) > top:
        raise OutputError(f"MOTS class {class_id} holds at most {top} instances (16-bit values class * 1000 + "
                          f"instance, instance < 1000); the result has {len(entity_ids)} entities to export")
    if all(i <= top for i in entity_ids):
        return {i: i for i in entity_ids}
    return {i: k + 1 for k, i in enumerate(sorted(entity_ids))}


def write_mots(view: Any, out: Path, *, overwrite: bool = False, class_id: int = 2, txt: bool = False) -> Path:
    """Write `view` as MOTS PNGs into the folder `out` (atomically); returns `out`.
    class_id: the MOTS class of every entity (1..65 but 10; KITTI-MOTS: 1 car, 2 pedestrian);
    txt: also write the MOTS txt format."""
    if isinstance(class_id, bool) or not isinstance(class_id, int) or not 1 <= class_id <= 65:
        raise InvalidArgumentError(f"MOTS class id must be an integer in [1, 65] (16-bit values), got {class_id!r}")
    check_flags(txt=txt)  # "no" is truthy: it would write the txt file too
    if class_id == IGNORE_CLASS:
        raise InvalidArgumentError(f"MOTS class {IGNORE_CLASS} marks ignore regions (KITTI-MOTS, MOTSChallenge): "
                                   "every entity would be ignored; choose another class id")
    entities = exported_entities(view)
    keep = np.array(sorted(e.id for e in entities), dtype=np.uint32)
    mapping = instance_ids([int(i) for i in keep], class_id)
    values = np.array([class_id * MAX_INSTANCES + mapping[int(i)] for i in keep], dtype=np.uint16)
    with output_dir(out, overwrite, layout=exported_layout) as stage:
        inst = stage / view.name / "instances"
        inst.mkdir(parents=True)
        lines = open(stage / f"{view.name}.txt", "w", encoding="utf-8") if txt else None
        try:
            for t, frame in enumerate(view.frames):
                png = inst / f"{frame['name']}.png"
                # format given: Pillow takes it from the name's extension, and "..png" (a frame named ".",
                # the stem of a still image "..png") has none for os.path.splitext (a ValueError)
                if lines is None:
                    Image.fromarray(map_ids(view.id_map(t), keep, values)).save(png, format="PNG")
                    continue
                ids, present = frame_entities(view, t, keep)
                Image.fromarray(map_ids(ids, keep, values)).save(png, format="PNG")
                mots_id = {seg_id: int(values[np.searchsorted(keep, seg_id)]) for seg_id in present}
                for seg in sorted(present.values(), key=lambda s: mots_id[s["id"]]):
                    lines.write(_txt_line(t, mots_id[seg["id"]], full_mask(ids, seg)))
        finally:
            if lines is not None:
                lines.close()
        labels = [f"class{k}" for k in range(1, class_id)] + [DEFAULT_CATEGORY]
        (inst / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
        marker = {"format": "entitysam-export", "export": "mots", "video": view.name, "class_id": class_id,
                  "instances": {str(m): e for e, m in mapping.items()}}
        (stage / MARKER).write_text(jsonio.dumps(marker, indent=1) + "\n", encoding="utf-8")
    return out


def exported_layout(marker: Any) -> dict[Any, Any]:
    """What an earlier MOTS export wrote besides its marker (see the module docstring), by the
    video its marker names (nothing else for a marker without one)."""
    video = marker.get("video") if isinstance(marker, dict) else None
    if not isinstance(video, str) or video in ("", ".", "..") or "/" in video:
        return {}
    return {video: {"instances": {re.compile(r"[^/]+\.png"): None, "labels.txt": None}}, f"{video}.txt": None}


def _txt_line(t: int, value: int, mask: np.ndarray) -> str:
    """One MOTS txt line: frame, object id (class * 1000 + instance), class, height, width, RLE."""
    h, w = mask.shape
    return f"{t} {value} {value // MAX_INSTANCES} {h} {w} {rle_encode(mask)['counts']}\n"
