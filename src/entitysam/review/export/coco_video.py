"""COCO-style video JSON (the layout of COCO-VID / TAO style datasets)::

    {"info": {...}, "categories": [{"id", "name"}],
     "videos": [{"id": 1, "name", "width", "height", "length", "fps"}],
     "images": [{"id", "video_id", "frame_id", "file_name", "width", "height", "time"}],
     "annotations": [{"id", "image_id", "video_id", "category_id", "instance_id", "track_id",
                      "segmentation": RLE, "bbox": [x, y, w, h], "area", "iscrowd": 0, "score"}]}

One image per frame (``id = frame + 1``, ``frame_id`` = the frame's position, ``file_name`` =
``<video>/<frame>.png`` as the panoptic PNGs are named), one annotation per entity per frame
where it is present; ``instance_id`` = ``track_id`` = the entity id; RLE: COCO compressed;
bbox: COCO's (w = columns covered).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__, jsonio
from ...io.entities import rle_encode
from .common import categories, category_of, exported_entities, frame_entities, full_mask, output_file

__all__ = ["write_coco_video", "coco_video"]


def coco_video(view: Any) -> dict[str, Any]:
    """The JSON object (see the module docstring)."""
    h, w = view.size
    entities = exported_entities(view)
    names = categories(entities)
    keep = np.array([e.id for e in entities], dtype=np.uint32)
    images, annotations = [], []
    for t, frame in enumerate(view.frames):
        image_id = t + 1
        images.append({"id": image_id, "video_id": 1, "frame_id": t, "file_name": f"{view.name}/{frame['name']}.png",
                       "width": w, "height": h, "time": frame["time"]})
        ids, present = frame_entities(view, t, keep)
        for e in entities:
            seg = present.get(e.id)
            if seg is None:
                continue
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "video_id": 1,
                                "category_id": category_of(e, names), "instance_id": e.id, "track_id": e.id,
                                "segmentation": rle_encode(full_mask(ids, seg)), "bbox": seg["bbox"],
                                "area": seg["area"],
                                "iscrowd": 0, "score": None if e.score is None else float(e.score)})
    return {"info": {"description": f"entitysam {__version__} result {view.name}", "version": "1.0"},
            "categories": [{"id": k + 1, "name": n, "supercategory": "entity"} for k, n in enumerate(names)],
            "videos": [{"id": 1, "name": view.name, "width": w, "height": h, "length": len(view.frames),
                        "fps": view.fps}],
            "images": images, "annotations": annotations}


def looks_exported(head: bytes) -> bool:
    """Whether a file starting with `head` is a COCO-style video JSON this module wrote."""
    return head.startswith(b'{"info":{"description":"entitysam ')


def write_coco_video(view: Any, out: Path, *, overwrite: bool = False) -> Path:
    """Write the COCO-style video JSON of `view` to the file `out` (atomically); returns `out`."""
    data = coco_video(view)
    with output_file(out, overwrite, exported=looks_exported) as f:
        f.write(jsonio.dumps(data, compact=True) + "\n")
    return out
