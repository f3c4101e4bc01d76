"""Panoptic output: per-frame id PNGs plus their JSON (a one-video VIPSeg ``pred.json``).

Panoptic PNGs and their JSON are shared by two layouts:

* the user layout written by `entitysam segment` (`panoptic/<stem>.png` + `panoptic.json`,
  COCO bbox convention: width = number of columns, `x_max - x_min + 1`);
* the official evaluation layout (`pan_pred/<video>/<stem>.png` + `pred.json`, bbox width
  `x_max - x_min` without the +1, as the official script writes it): call
  :func:`frame_segments` with ``bbox="official"`` and :func:`entitysam.io.idpng.write_id_png`.

In both, the PNG encodes the entity id as ``id = R + 256 G + 65536 B`` (:mod:`entitysam.io.idpng`)
and the JSON lists, per frame, the entities with area > 0 in increasing id order (= creation order).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from .. import jsonio
from . import idpng

__all__ = ["CATEGORIES", "frame_segments", "PanopticWriter", "panoptic_json_head", "panoptic_json_tail"]

CATEGORIES = [{"id": 1, "name": "entity", "isthing": 1, "supercategory": "entity"}]


def frame_segments(id_map: np.ndarray, bbox: str = "coco") -> list[dict[str, Any]]:
    """The entities present in one frame, in increasing id order: ``{"id", "area", "bbox"}``.

    bbox: ``"coco"`` -> [x, y, w, h] with w = x_max - x_min + 1 (columns covered);
    ``"official"`` -> w = x_max - x_min (the official EntitySAM pred.json, no +1).
    """
    if bbox not in ("coco", "official"):
        raise ValueError(f"bbox must be 'coco' or 'official', got {bbox!r}")
    ids = np.asarray(id_map)
    top = int(ids.max(initial=0))
    if top <= 0:
        return []
    ids_of = None
    if top > max(ids.size, 1 << 16):  # a few large ids (24-bit ids are valid): number them 1..n first
        ids_of, compact = np.unique(np.concatenate([[0], ids.ravel()]), return_inverse=True)
        ids = compact[1:].reshape(ids.shape)
    areas = np.bincount(ids.ravel())
    boxes = ndi.find_objects(ids.astype(np.int32, copy=False))
    extra = 0 if bbox == "coco" else 1
    out = []
    for label in np.flatnonzero(areas[1:]) + 1:
        rows, cols = boxes[label - 1]
        out.append({
            "id": int(label if ids_of is None else ids_of[label]),
            "area": int(areas[label]),
            "bbox": [int(cols.start), int(rows.start),
                     int(cols.stop - cols.start - extra), int(rows.stop - rows.start - extra)],
        })
    return out


def panoptic_json_head(video_id: str) -> str:
    """The text of a one-video ``pred.json`` before its first frame entry."""
    return f'{{"annotations": [{{"video_id": {jsonio.dumps(video_id, compact=True)}, "annotations": [\n'


def panoptic_json_tail() -> str:
    """The text of a one-video ``pred.json`` after its last frame entry."""
    return f'\n]}}], "categories": {jsonio.dumps(CATEGORIES, compact=True)}}}\n'


class PanopticWriter:
    """``<dir>/panoptic/<stem>.png`` + ``<dir>/panoptic.json`` (a one-video VIPSeg ``pred.json``).

    panoptic.json::

        {"annotations": [{"video_id": <name>, "annotations": [
            {"image_id": <stem>, "file_name": "<stem>.png", "frame": t, "source_frame": i,
             "segments_info": [{"id", "area", "bbox": [x, y, w, h], "iscrowd": 0, "category_id": 1}]},
            ...]}],
         "categories": [{"id": 1, "name": "entity", "isthing": 1, "supercategory": "entity"}]}

    Frame entries are streamed to the file as frames come. With ``png_dir =
    <pred_dir>/pan_pred/<video>``, ``bbox="official"`` and ``json_path=None`` (the caller
    gathers :meth:`frame_entry` records of several videos into ``pred.json``) the same writer
    produces the official evaluation layout.
    """

    def __init__(self, png_dir: str | os.PathLike, json_path: str | os.PathLike | None, video_id: str,
                 bbox: str = "coco"):
        self.png_dir = Path(png_dir)
        self.png_dir.mkdir(parents=True, exist_ok=True)
        self.video_id = video_id
        self.bbox = bbox
        self.num_frames = 0
        self._json = None
        if json_path is not None:
            self._json = open(json_path, "w", encoding="utf-8")
            self._json.write(panoptic_json_head(video_id))

    @staticmethod
    def frame_entry(t: int, frame: Any, segments: list[dict[str, Any]]) -> dict[str, Any]:
        info = [{**s, "iscrowd": 0, "category_id": 1} for s in segments]
        return {"image_id": frame.name, "file_name": f"{frame.name}.png", "frame": t,
                "source_frame": int(frame.index), "segments_info": info}

    def add(self, t: int, frame: Any, id_map: np.ndarray, segments: list[dict[str, Any]] | None = None) -> None:
        """frame: has ``.name`` (file stem) and ``.index`` (source frame index)."""
        if segments is None:
            segments = frame_segments(id_map, self.bbox)
        self.write_png(frame.name, id_map)
        self.add_entry(t, frame, segments)

    def write_png(self, name: str, id_map: np.ndarray) -> None:
        """The frame's id PNG alone (thread-safe: touches no writer state)."""
        idpng.write_id_png(self.png_dir / f"{name}.png", id_map)

    def add_entry(self, t: int, frame: Any, segments: list[dict[str, Any]]) -> None:
        """The frame's JSON entry alone; entries must come in frame order."""
        if self._json is not None:
            entry = jsonio.dumps(self.frame_entry(t, frame, segments), compact=True)
            self._json.write(("" if self.num_frames == 0 else ",\n") + entry)
        self.num_frames += 1

    def close(self) -> None:
        if self._json is not None and not self._json.closed:
            self._json.write(panoptic_json_tail())
            self._json.close()

    def abort(self) -> None:
        if self._json is not None:
            self._json.close()
