"""YouTube-VIS results JSON: what the YouTube-VIS / OVIS evaluation reads as predictions.

A list with one record per exported entity::

    [{"exported_by": "entitysam", "video_id": 1, "category_id": c, "score": s,
      "segmentations": [RLE or null per frame]}, ...]

RLE: COCO compressed (``{"size": [H, W], "counts": str}``), null where the entity is absent;
``category_id``: 1 for ``entity``, then one per review label (see ``common.categories``);
``score``: the entity's score (1.0 when the result does not record one); ``exported_by``: first
key of every record, which the evaluations ignore and which tells ``--overwrite`` that the file is
an export of this module (a results list of another tool is never replaced).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ... import jsonio
from ...errors import InvalidArgumentError
from ...io.entities import rle_encode
from .common import categories, category_of, exported_entities, frame_entities, full_mask, output_file

__all__ = ["write_ytvis", "ytvis_records"]

EXPORTED_BY = "entitysam"


def ytvis_records(view: Any, video_id: int = 1) -> list[dict[str, Any]]:
    """The results list (see the module docstring)."""
    entities = exported_entities(view)
    names = categories(entities)
    keep = np.array([e.id for e in entities], dtype=np.uint32)
    segs: dict[int, list[Any]] = {e.id: [] for e in entities}
    for t in range(len(view.frames)):
        ids, present = frame_entities(view, t, keep)
        for e in entities:
            segs[e.id].append(rle_encode(full_mask(ids, present[e.id])) if e.id in present else None)
    return [{"exported_by": EXPORTED_BY, "video_id": video_id, "category_id": category_of(e, names),
             "score": 1.0 if e.score is None else float(e.score), "segmentations": segs[e.id]}
            for e in entities]


def looks_exported(head: bytes) -> bool:
    """Whether a file starting with `head` is a results JSON this module wrote (compact: a list of
    records starting with the marker key), or an empty list (nothing there to lose)."""
    return head.startswith(b'[{"exported_by":"entitysam"') or head.strip() == b"[]"


def write_ytvis(view: Any, out: Path, *, overwrite: bool = False, video_id: int = 1) -> Path:
    """Write the YouTube-VIS results JSON of `view` to the file `out` (atomically); returns `out`."""
    if isinstance(video_id, bool) or not isinstance(video_id, int):
        raise InvalidArgumentError(f"video_id must be an integer, got {video_id!r}")
    records = ytvis_records(view, video_id)
    with output_file(out, overwrite, exported=looks_exported) as f:
        f.write(jsonio.dumps(records, compact=True) + "\n")
    return out
