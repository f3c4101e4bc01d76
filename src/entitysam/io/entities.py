"""``entities.json`` (per-entity COCO RLE masks), the one RLE encoder and the one per-entity
statistics accumulator (first / last frame, frame count, area) of the project."""

from __future__ import annotations

import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .. import jsonio
from .panoptic import frame_segments

__all__ = ["rle_encode", "segment_rles", "EntityStats", "EntitiesWriter"]


REVIEW_FIELDS = ("label", "hidden")  # per-entity records a reviewed revision adds (entitysam.review)


def _dumps(obj: Any) -> str:
    return jsonio.dumps(obj, compact=True)


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """[H, W] bool mask -> COCO RLE ``{"size": [H, W], "counts": str}`` (pycocotools' compressed form)."""
    from pycocotools import mask as mask_utils  # noqa: PLC0415 - optional dependency

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def segment_rles(id_map: np.ndarray, segments: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The COCO RLE of each segment's mask (``id_map == segment["id"]``), in the order given."""
    return [rle_encode(id_map == seg["id"]) for seg in segments]


class EntityStats:
    """Per-entity statistics over the frames seen: first and last frame position ``t``, number of
    frames where the entity is present, and its area summed over them (pixels).

    Fed one frame at a time, in increasing ``t``, with the areas of the entities present in it.
    """

    FIELDS = ("first_frame", "last_frame", "num_frames", "area")

    def __init__(self) -> None:
        self._stats: dict[int, list[int]] = {}  # id -> [first, last, count, area]

    def add(self, t: int, areas: Iterable[tuple[int, int]]) -> None:
        """areas: (entity id, area > 0) of the entities present in frame ``t``."""
        for sid, area in areas:
            st = self._stats.setdefault(int(sid), [t, t, 0, 0])
            st[1] = t
            st[2] += 1
            st[3] += int(area)

    def add_id_map(self, t: int, id_map: np.ndarray) -> None:
        """The areas of frame ``t`` counted from its [H, W] id map (0 = no entity)."""
        counts = np.bincount(np.asarray(id_map).ravel())
        self.add(t, ((int(sid), int(counts[sid])) for sid in np.flatnonzero(counts[1:]) + 1))

    def __contains__(self, entity_id: int) -> bool:
        return entity_id in self._stats

    def record(self, entity_id: int) -> dict[str, Any]:
        """``{"first_frame", "last_frame", "num_frames", "area"}``; an entity never present has
        None, None, 0, 0."""
        st = self._stats.get(entity_id, [None, None, 0, 0])
        return dict(zip(self.FIELDS, st))


class EntitiesWriter:
    """``entities.json``: one record per entity with its per-frame COCO RLE mask.

    ::

        {"video": <name>, "size": [H, W], "sample_aspect_ratio": [w, h], "fps": f, "num_frames": n,
         "frames": [{"frame": t, "source_frame": i, "name": <stem>, "time": s}, ...],
         "entities": [{"id", "score", "query_index", "first_frame", "last_frame", "num_frames",
                       "area", "frames": [{"frame": t, "area", "bbox": [x, y, w, h],
                                           "rle": {"size": [H, W], "counts": str}}, ...]}, ...]}

    ``frame`` numbers are positions in the processed sequence (0 .. n-1, an index into
    ``frames``); ``area`` of an entity is summed over its frames; bbox is COCO's (w = columns
    covered). ``sample_aspect_ratio``: [width, height] of a pixel, [1, 1] but for anamorphic video
    (the masks are at the stored size; shown beside the video they are widened by it; files
    written before it was recorded have none: square). Per-entity records are streamed to one temporary file per entity and joined
    when the video is finished, so memory does not grow with the video length.
    """

    def __init__(self, path: str | os.PathLike, video_id: str):
        self.path = Path(path)
        self.video_id = video_id
        self._tmp = self.path.parent / f".{self.path.name}.parts"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._frames = open(self._tmp / "frames.jsonl", "w", encoding="utf-8")
        self._files: dict[int, Any] = {}
        self.stats = EntityStats()
        self.size: tuple[int, int] | None = None
        self.num_frames = 0

    def add(self, t: int, frame: Any, id_map: np.ndarray, segments: list[dict[str, Any]] | None = None,
            rles: Sequence[dict[str, Any]] | None = None) -> None:
        """rles: the segments' masks already encoded (:func:`segment_rles`), else encoded here."""
        if segments is None:
            segments = frame_segments(id_map, "coco")
        self.size = (int(id_map.shape[0]), int(id_map.shape[1]))
        self._frames.write(_dumps({"frame": t, "source_frame": int(frame.index), "name": frame.name,
                                   "time": round(float(frame.time), 6)}) + "\n")
        if rles is None:
            rles = segment_rles(id_map, segments)
        for seg, rle in zip(segments, rles):
            sid = seg["id"]
            rec = {"frame": t, "area": seg["area"], "bbox": seg["bbox"], "rle": rle}
            f = self._files.get(sid)
            if f is None:
                f = self._files[sid] = open(self._tmp / f"{sid}.jsonl", "w", encoding="utf-8")
            f.write(_dumps(rec) + "\n")
        self.stats.add(t, ((seg["id"], seg["area"]) for seg in segments))
        self.num_frames += 1

    def close(self, entities: Sequence[Mapping[str, Any]], fps: float | None = None,
              sample_aspect_ratio: Fraction = Fraction(1)) -> None:
        """entities: ``{"id", "score", "query_index"}`` of every segment (any order); a score may
        be None (unknown), and the review fields ``label`` and ``hidden`` are copied when given.
        sample_aspect_ratio: the pixels' shape (width / height)."""
        self._frames.close()
        for f in self._files.values():
            f.close()
        sar = Fraction(sample_aspect_ratio)
        head = {"video": self.video_id, "size": list(self.size) if self.size else None,
                "sample_aspect_ratio": [sar.numerator, sar.denominator], "fps": fps, "num_frames": self.num_frames}
        with open(self.path, "w", encoding="utf-8") as out:
            out.write(_dumps(head)[:-1] + ',"frames":[\n')
            with open(self._tmp / "frames.jsonl", encoding="utf-8") as f:
                for i, line in enumerate(f):
                    out.write(("" if i == 0 else ",\n") + line.rstrip("\n"))
            out.write('\n],"entities":[\n')
            for k, ent in enumerate(sorted(entities, key=lambda e: e["id"])):
                sid = int(ent["id"])
                st = self.stats.record(sid)
                score = ent["score"]
                rec = {"id": sid, "score": None if score is None else float(score),
                       "query_index": int(ent.get("query_index", -1)), **st,
                       **{k: ent[k] for k in REVIEW_FIELDS if k in ent}}
                out.write(("" if k == 0 else ",\n") + _dumps(rec)[:-1] + ',"frames":[')
                part = self._tmp / f"{sid}.jsonl"
                if part.exists():
                    with open(part, encoding="utf-8") as f:
                        for i, line in enumerate(f):
                            out.write(("" if i == 0 else ",") + line.rstrip("\n"))
                out.write("]}")
            out.write("\n]}\n")
        shutil.rmtree(self._tmp, ignore_errors=True)

    def abort(self) -> None:
        self._frames.close()
        for f in self._files.values():
            f.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
