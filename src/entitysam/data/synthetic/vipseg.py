"""Deterministic synthetic VIPSeg-layout datasets, for metric and evaluation tests and benchmarks.

``make_synthetic_dataset(root, ...)`` (GT + predictions, for the metrics) writes::

    root/gt/panomasksRGB/<video>/<00000>.png   RGB ids (id = R + 256 G + 65536 B), 0 = VOID
    root/gt/panoptic_gt_synthetic.json         {"videos", "annotations", "categories"} (VIPSeg layout)
    root/pred/pan_pred/<video>/<00000>.png     predicted RGB ids (random 24-bit ids, like real colours)
    root/pred/pred.json                        {"annotations": [{"video_id", "annotations": [...]}]}

Each video is a random label video of :mod:`entitysam.data.synthetic.label_video` (stuff,
things entering, leaving and occluding each other, crowd and VOID regions, predictions with
the usual errors). Everything is a function of ``seed``.

``make_vipseg_dataset(root, ...)`` (inputs + GT, for ``entitysam eval vipseg``) writes the
``VIPSeg_720P`` layout from the same ground-truth scenes::

    root/images/<video>/<00000000>.jpg         RGB frames rendered from the GT (a colour per segment)
    root/panomasksRGB/<video>/<00000000>.png   GT ids as above
    root/panoptic_gt_VIPSeg_<split>.json       {"videos", "annotations", "categories"}
    root/<split>.txt                           one video id per line
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ... import jsonio
from ...argtypes import InvalidArgumentError, check_flags, check_int, check_path_arg
from ...io.paths import safe_name
from ...io.idpng import write_id_png
from .label_video import CATEGORIES, paint_ellipse, render_label_video, segments_info, write_gt_frame

__all__ = ["SyntheticDataset", "SyntheticVIPSeg", "make_synthetic_dataset", "make_vipseg_dataset",
           "check_vipseg_request", "VIPSEG_MAX_PIXELS"]

# Each video is rendered in memory (label maps of int64 and more): at most this many pixels
# (frames x width x height), about 1-2 GiB at the peak.
VIPSEG_MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class SyntheticDataset:
    root: Path
    gt_dir: Path  # panomasksRGB
    gt_json: Path
    pred_dir: Path  # holds pan_pred/ and pred.json
    videos: tuple[str, ...]


@dataclass(frozen=True)
class SyntheticVIPSeg:
    root: Path  # the data root (like VIPSeg_720P)
    images_dir: Path
    gt_dir: Path  # panomasksRGB
    gt_json: Path
    split_file: Path | None
    split: str
    videos: tuple[str, ...]
    num_frames: tuple[int, ...]  # per video


def make_synthetic_dataset(
    root: str | os.PathLike,
    *,
    num_videos: int = 3,
    num_frames: int = 10,
    width: int = 160,
    height: int = 96,
    seed: int = 0,
    prefix: str = "vid",
    compress_level: int = 1,
) -> SyntheticDataset:
    """Write a synthetic VIPSeg-layout GT + prediction dataset under ``root`` (see module doc)."""
    root = Path(root)
    gt_dir = root / "gt" / "panomasksRGB"
    pred_dir = root / "pred"
    gt_videos, gt_annos, pred_annos, names = [], [], [], []
    for v in range(num_videos):
        vid = f"{prefix}_{v:03d}"
        names.append(vid)
        rng = np.random.default_rng([seed, v])
        gt_maps, gt_order, meta, pred_maps = render_label_video(rng, num_frames, width, height)
        # predicted keys -> random distinct 24-bit ids (like the colours of real predictions)
        keys = sorted(set().union(*[set(np.unique(p).tolist()) for p in pred_maps]) - {0})
        ids = rng.choice(np.arange(1, 1 << 24), size=len(keys), replace=False) if keys else np.zeros(0, np.int64)
        key_to_id = dict(zip(keys, ids.tolist()))
        lut_keys = np.array([0] + keys, np.int64)
        lut_ids = np.array([0] + ids.tolist(), np.int64)
        pred_meta = {i: (0, 0) for i in ids.tolist()}
        (gt_dir / vid).mkdir(parents=True, exist_ok=True)
        (pred_dir / "pan_pred" / vid).mkdir(parents=True, exist_ok=True)
        images, g_frames, p_frames = [], [], []
        for t, (g, pk) in enumerate(zip(gt_maps, pred_maps)):
            name = f"{t:05d}.png"
            p = lut_ids[np.searchsorted(lut_keys, pk)]
            image, g_frame = write_gt_frame(gt_dir / vid, name, t, g, gt_order, meta, compress_level)
            write_id_png(pred_dir / "pan_pred" / vid / name, p, compress_level=compress_level)
            images.append(image)
            g_frames.append(g_frame)
            p_frames.append(
                {"segments_info": segments_info(p, [key_to_id[k] for k in keys], pred_meta), "file_name": f"{t:05d}.jpg"}
            )
        gt_videos.append({"video_id": vid, "images": images})
        gt_annos.append({"video_id": vid, "annotations": g_frames})
        pred_annos.append({"video_id": vid, "annotations": p_frames})
    gt_json = root / "gt" / "panoptic_gt_synthetic.json"
    gt_json.write_text(jsonio.dumps({"videos": gt_videos, "annotations": gt_annos, "categories": CATEGORIES}))
    (pred_dir / "pred.json").write_text(jsonio.dumps({"annotations": pred_annos}))
    return SyntheticDataset(root=root, gt_dir=gt_dir, gt_json=gt_json, pred_dir=pred_dir, videos=tuple(names))


# ----------------------------------------------------------------------------- VIPSeg inputs

_SCRIPTED = (2901, 2902, 2903)  # enters and passes in front of / is occluded / leaves the frame


def _paint_scripted(gt_maps: list[np.ndarray]) -> None:
    """Three things on top of a random scene, so that every video has an entity that enters the
    frame (A, from the left), one that it occludes while crossing (B, static) and one that leaves
    (C, out through the right border)."""
    T = len(gt_maps)
    for t, gt in enumerate(gt_maps):
        H, W = gt.shape
        u = t / max(T - 1, 1)
        cy = 0.62 * H
        paint_ellipse(gt, 0.45 * W, cy, 0.13 * W, 0.2 * H, _SCRIPTED[1])  # B, behind
        rx = 0.12 * W
        paint_ellipse(gt, -1.2 * rx + u * (0.9 * W + 1.2 * rx), cy + 0.05 * H, rx, 0.16 * H, _SCRIPTED[0])  # A
        paint_ellipse(gt, 0.8 * W + u * 0.5 * W, 0.3 * H, 0.1 * W, 0.12 * H, _SCRIPTED[2])  # C


def _render_frame(gt: np.ndarray, t: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB frame whose regions follow the GT: a flat colour per id (VOID: a grey ramp), a
    brightness gradient, a little noise."""
    H, W = gt.shape
    ids, inv = np.unique(gt, return_inverse=True)
    palette = np.empty((len(ids), 3), np.float32)
    for k, sid in enumerate(ids.tolist()):
        palette[k] = (110.0, 110.0, 110.0) if sid == 0 else np.random.default_rng(sid).uniform(30, 235, 3)
    img = palette[inv.reshape(H, W)]
    ramp = np.linspace(-18, 18, W, dtype=np.float32)[None, :, None] + 4.0 * np.sin(0.7 * t)
    img = img + ramp + rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def make_vipseg_dataset(
    root: str | os.PathLike,
    *,
    split: str = "val",
    num_videos: int = 3,
    num_frames: int | Sequence[int] = 4,
    width: int = 64,
    height: int = 48,
    seed: int = 0,
    prefix: str = "vid",
    split_file: bool = True,
    jpeg_quality: int = 90,
) -> SyntheticVIPSeg:
    """Write a small dataset in the ``VIPSeg_720P`` layout (see module doc) under ``root``.

    num_frames: frames of every video, or one count per video. Frame files are named
    ``%08d`` (``00000000.jpg`` / ``.png``), zero-padded like VIPSeg's, so the official
    lexicographic order is the temporal order. Videos are ``<prefix>_<k>``; their order in the
    GT JSON and in ``<split>.txt`` is k = 0, 1, ... Each video has the random scene of
    :func:`make_synthetic_dataset` (stuff, things entering and leaving, occlusions, a crowd
    region, VOID) plus three scripted things: one enters from the left and passes in front of a
    second, a third leaves through the right border. Everything is a function of ``seed``.
    """
    root, counts = check_vipseg_request(root, split=split, num_videos=num_videos, num_frames=num_frames, width=width,
                                        height=height, seed=seed, prefix=prefix, split_file=split_file,
                                        jpeg_quality=jpeg_quality)
    images_dir, gt_dir = root / "images", root / "panomasksRGB"
    videos, annos, names = [], [], []
    for v, T in enumerate(counts):
        vid = f"{prefix}_{v:03d}"
        names.append(vid)
        rng = np.random.default_rng([seed, v, 7])
        gt_maps, gt_order, meta, _ = render_label_video(rng, T, width, height)
        _paint_scripted(gt_maps)
        for sid in _SCRIPTED:
            meta[sid] = (3 + sid % 2, 0)
        order = gt_order + list(_SCRIPTED)
        (images_dir / vid).mkdir(parents=True, exist_ok=True)
        (gt_dir / vid).mkdir(parents=True, exist_ok=True)
        images, frames = [], []
        for t, g in enumerate(gt_maps):
            stem = f"{t:08d}"
            Image.fromarray(_render_frame(g, t, rng)).save(images_dir / vid / f"{stem}.jpg", quality=jpeg_quality)
            image, frame = write_gt_frame(gt_dir / vid, f"{stem}.png", t, g, order, meta, 1)
            images.append(image)
            frames.append(frame)
        videos.append({"video_id": vid, "images": images})
        annos.append({"video_id": vid, "annotations": frames})
    gt_json = root / f"panoptic_gt_VIPSeg_{split}.json"
    gt_json.write_text(jsonio.dumps({"videos": videos, "annotations": annos, "categories": CATEGORIES}))
    split_path = None
    if split_file:
        split_path = root / f"{split}.txt"
        split_path.write_text("".join(f"{n}\n" for n in names))
    return SyntheticVIPSeg(root=root, images_dir=images_dir, gt_dir=gt_dir, gt_json=gt_json, split_file=split_path,
                           split=split, videos=tuple(names), num_frames=tuple(counts))


def check_vipseg_request(root: Any, *, split: Any, num_videos: Any, num_frames: Any, width: Any, height: Any,
                         seed: Any, prefix: Any, split_file: Any, jpeg_quality: Any) -> tuple[Path, list[int]]:
    """The arguments of :func:`make_vipseg_dataset` checked before anything is written (each failed
    deep inside, after writing part of the dataset, or not at all: ``prefix="../x"`` wrote outside
    ``images/``, ``width=10**9`` ran out of memory). Returns (root, frames of each video)."""
    root = check_path_arg(root, "root")
    if root.exists() and not root.is_dir():
        raise InvalidArgumentError(f"root {root} exists and is not a folder")
    check_int(num_videos, "num_videos", 1)
    if isinstance(num_frames, (str, bytes)) or not isinstance(num_frames, (int, np.integer, Sequence)):
        raise InvalidArgumentError(f"num_frames must be an integer or one integer per video, got {num_frames!r}")
    counts = [num_frames] * num_videos if isinstance(num_frames, (int, np.integer)) else list(num_frames)
    if len(counts) != num_videos:
        raise InvalidArgumentError(f"num_frames has {len(counts)} counts for {num_videos} videos")
    counts = [check_int(int(n) if isinstance(n, np.integer) else n, "num_frames", 1) for n in counts]
    check_int(width, "width", 1, 8192)
    check_int(height, "height", 1, 8192)
    if max(counts) * width * height > VIPSEG_MAX_PIXELS:
        raise InvalidArgumentError(f"each video is rendered in memory: frames x width x height must be at most "
                                   f"{VIPSEG_MAX_PIXELS}, got {max(counts)} frames of {width}x{height}")
    check_int(seed, "seed", 0)
    for name, value in (("prefix", prefix), ("split", split)):  # parts of file names
        if not isinstance(value, str) or not value or safe_name(value) != value:
            raise InvalidArgumentError(f"{name} must be a non-empty string usable in a file name (no '/', '\\', "
                                       f"surrounding spaces or leading '.'), got {value!r}")
    check_flags(split_file=split_file)
    check_int(jpeg_quality, "jpeg_quality", 1, 100)
    return root, counts
