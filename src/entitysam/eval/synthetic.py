"""Deterministic synthetic VIPSeg-layout datasets, for metric and evaluation tests and benchmarks.

``make_synthetic_dataset(root, ...)`` (GT + predictions, for the metrics) writes::

    root/gt/panomasksRGB/<video>/<00000>.png   RGB ids (id = R + 256 G + 65536 B), 0 = VOID
    root/gt/panoptic_gt_synthetic.json         {"videos", "annotations", "categories"} (VIPSeg layout)
    root/pred/pan_pred/<video>/<00000>.png     predicted RGB ids (random 24-bit ids, like real colours)
    root/pred/pred.json                        {"annotations": [{"video_id", "annotations": [...]}]}

Each video has two stuff segments (sky / ground, wavy moving horizon), sometimes a wall,
moving ellipse "things" that enter and leave the frame, appear and disappear, and
occlude each other (random depth order), often an ``iscrowd`` segment, VOID regions
(a static strip and disk plus a small moving blob) and, in the predictions, the usual
errors: shifted / dilated / eroded masks, identity switches, merged and split things,
missed things (always or on some frames), false positives, unpredicted holes,
stuff predicted over VOID, crowd predicted as its own id, merged into ground or left
unpredicted.  Everything is a function of ``seed``.

``make_vipseg_dataset(root, ...)`` (inputs + GT, for ``entitysam eval vipseg``) writes the
``VIPSeg_720P`` layout from the same ground-truth scenes::

    root/images/<video>/<00000000>.jpg         RGB frames rendered from the GT (a colour per segment)
    root/panomasksRGB/<video>/<00000000>.png   GT ids as above
    root/panoptic_gt_VIPSeg_<split>.json       {"videos", "annotations", "categories"}
    root/<split>.txt                           one video id per line
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

__all__ = ["SyntheticDataset", "SyntheticVIPSeg", "make_synthetic_dataset", "make_vipseg_dataset"]

SKY, GROUND, WALL, CROWD = 1001, 1002, 1003, 3001
_CATEGORIES = [
    {"id": 1, "name": "sky", "isthing": 0},
    {"id": 2, "name": "ground", "isthing": 0},
    {"id": 3, "name": "ball", "isthing": 1},
    {"id": 4, "name": "crate", "isthing": 1},
    {"id": 5, "name": "crowd_people", "isthing": 1},
    {"id": 6, "name": "wall", "isthing": 0},
]

_THING_MODES = ("perfect", "shift", "dilate", "erode", "switch", "merge", "split", "miss", "miss_some")
_THING_P = (0.25, 0.12, 0.1, 0.1, 0.1, 0.08, 0.08, 0.07, 0.1)


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


@dataclass
class _Thing:
    gid: int
    cat: int
    z: float
    cx: float
    cy: float
    vx: float
    vy: float
    rx: float
    ry: float
    wobble: float
    phase: float
    t0: int
    t1: int  # visible for t0 <= t < t1
    mode: str
    shift: tuple[int, int]
    grow: float
    switch_at: int
    merge_into: int  # index of the thing whose prediction key it takes (mode "merge")
    miss_mod: int


def _paint_ellipse(lab: np.ndarray, cx: float, cy: float, rx: float, ry: float, value: int, half: int = 0) -> None:
    """Fill an axis-aligned ellipse; half=+1/-1 paints only the right/left half."""
    if rx <= 0.5 or ry <= 0.5:
        return
    H, W = lab.shape
    x0, x1 = max(int(np.floor(cx - rx)), 0), min(int(np.ceil(cx + rx)) + 1, W)
    y0, y1 = max(int(np.floor(cy - ry)), 0), min(int(np.ceil(cy + ry)) + 1, H)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    if half > 0:
        m &= xx >= cx
    elif half < 0:
        m &= xx < cx
    lab[y0:y1, x0:x1][m] = value


def _encode_rgb(ids: np.ndarray) -> np.ndarray:
    ids = ids.astype(np.uint32)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def _segments(ids: np.ndarray, order: list[int], meta: dict[int, tuple[int, int]]) -> list[dict]:
    """segments_info for the non-zero ids of a map, in ``order`` (ids absent from the map are skipped)."""
    vals, counts = np.unique(ids, return_counts=True)
    area = dict(zip(vals.tolist(), counts.tolist()))
    out = []
    for sid in order:
        if sid == 0 or sid not in area:
            continue
        m = ids == sid
        ys = np.flatnonzero(m.any(axis=1))
        xs = np.flatnonzero(m.any(axis=0))
        cat, crowd = meta[sid]
        out.append(
            {
                "id": int(sid),
                "category_id": int(cat),
                "iscrowd": int(crowd),
                "area": int(area[sid]),
                "bbox": [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)],
            }
        )
    return out


def _make_things(rng: np.random.Generator, T: int, W: int, H: int) -> list[_Thing]:
    things = []
    k = int(rng.integers(3, 9))
    for i in range(k):
        rx = float(rng.uniform(0.03, 0.11) * W)
        ry = float(rx * rng.uniform(0.6, 1.4))
        enter = rng.random() < 0.4
        if enter:  # start outside the left or right border and cross the frame
            side = rng.choice([-1, 1])
            cx = -rx * 0.8 if side < 0 else W + rx * 0.8
            vx = -side * rng.uniform(0.02, 0.06) * W
        else:
            cx = float(rng.uniform(0.1, 0.9) * W)
            vx = float(rng.normal(0, 0.015) * W)
        cy = float(rng.uniform(0.35, 0.85) * H)
        vy = float(rng.normal(0, 0.005) * H)
        t0 = 0 if rng.random() < 0.7 else int(rng.integers(0, max(T // 2, 1)))
        t1 = T if rng.random() < 0.7 else int(rng.integers(min(t0 + 1, T), T + 1))
        mode = str(rng.choice(_THING_MODES, p=_THING_P))
        things.append(
            _Thing(
                gid=2000 + 17 * i + 1,
                cat=int(rng.integers(3, 5)),
                z=float(rng.random()),
                cx=float(cx), cy=cy, vx=float(vx), vy=vy, rx=rx, ry=ry,
                wobble=float(rng.uniform(0, 0.02) * W),
                phase=float(rng.uniform(0, 2 * np.pi)),
                t0=t0, t1=max(t1, t0 + 1),
                mode=mode,
                shift=(int(rng.integers(-4, 5)), int(rng.integers(-3, 4))),
                grow=float(rng.uniform(1.5, 3.5)),
                switch_at=int(rng.integers(1, max(T, 2))),
                merge_into=int(rng.integers(0, k)),
                miss_mod=int(rng.integers(2, 4)),
            )
        )
    return things


def _video(rng: np.random.Generator, T: int, W: int, H: int):
    """Render one video: lists of GT id maps, GT segment metadata, pred key maps."""
    things = _make_things(rng, T, W, H)
    horizon = rng.uniform(0.35, 0.6) * H
    amp, freq, ph, drift = rng.uniform(2, 0.06 * H), rng.uniform(1, 4) * 2 * np.pi / W, rng.uniform(0, 6.3), rng.normal(0, 0.01 * H)
    has_wall = rng.random() < 0.5
    wall_w = rng.uniform(0.1, 0.25) * W
    has_crowd = rng.random() < 0.8
    crowd = [rng.uniform(0.1, 0.9) * W, rng.uniform(0.25, 0.6) * H, rng.uniform(0.05, 0.1) * W, rng.uniform(0.05, 0.12) * H, rng.normal(0, 0.005 * W)]
    crowd_mode = str(rng.choice(["own", "ground", "zero"]))
    sky_switch = int(rng.integers(1, max(T, 2))) if rng.random() < 0.3 else T + 1
    ground_on_void = rng.random() < 0.6
    disk = (rng.uniform(0.3, 0.7) * W, rng.uniform(0.1, 0.3) * H, rng.uniform(0.02, 0.05) * W)
    n_fp = int(rng.integers(0, 3))
    fps = [
        (rng.uniform(0, W), rng.uniform(0, H), rng.uniform(0.02, 0.06) * W, rng.normal(0, 0.01 * W), int(rng.integers(0, T)), 9000 + j)
        for j in range(n_fp)
    ]
    hole_p = rng.uniform(0, 0.3)
    order = sorted(range(len(things)), key=lambda i: things[i].z)
    xs = np.arange(W)

    meta = {SKY: (1, 0), GROUND: (2, 0), WALL: (6, 0), CROWD: (5, 1)}
    for th in things:
        meta[th.gid] = (th.cat, 0)
    gt_maps, pred_maps = [], []
    for t in range(T):
        gt = np.empty((H, W), np.int64)
        pr = np.empty((H, W), np.int64)
        hline = horizon + drift * t + amp * np.sin(freq * xs + ph + 0.3 * t)
        below = np.arange(H)[:, None] >= hline[None, :]
        gt[:] = np.where(below, GROUND, SKY)
        # prediction: horizon off by a couple of pixels, sky id may switch mid-video
        p_below = np.arange(H)[:, None] >= (hline + 2.0)[None, :]
        pr[:] = np.where(p_below, 2, 1 if t < sky_switch else 11)
        if has_wall:
            gt[:, : int(wall_w)] = WALL
            pr[:, : int(wall_w) + 1] = 3
        if has_crowd:
            ccx = crowd[0] + crowd[4] * t
            _paint_ellipse(gt, ccx, crowd[1], crowd[2], crowd[3], CROWD)
            if crowd_mode == "own":
                _paint_ellipse(pr, ccx, crowd[1], crowd[2], crowd[3], 4)
            elif crowd_mode == "ground":
                _paint_ellipse(pr, ccx, crowd[1], crowd[2], crowd[3], 2)
            else:
                _paint_ellipse(pr, ccx, crowd[1], crowd[2], crowd[3], 0)
        for i in order:
            th = things[i]
            if not (th.t0 <= t < th.t1):
                continue
            cx = th.cx + th.vx * t + th.wobble * np.sin(0.5 * t + th.phase)
            cy = th.cy + th.vy * t
            _paint_ellipse(gt, cx, cy, th.rx, th.ry, th.gid)
            key = 100 + i
            rx, ry = th.rx, th.ry
            m = th.mode
            if m == "shift":
                cx, cy = cx + th.shift[0], cy + th.shift[1]
            elif m == "dilate":
                rx, ry = rx + th.grow, ry + th.grow
            elif m == "erode":
                rx, ry = rx - th.grow, ry - th.grow
            elif m == "switch" and t >= th.switch_at:
                key = 200 + i
            elif m == "merge":
                key = 100 + th.merge_into
            elif m == "miss" or (m == "miss_some" and t % th.miss_mod == 1):
                continue
            if m == "split":
                _paint_ellipse(pr, cx, cy, rx, ry, key, half=-1)
                _paint_ellipse(pr, cx, cy, rx, ry, 300 + i, half=1)
            else:
                _paint_ellipse(pr, cx, cy, rx, ry, key)
        for fx, fy, fr, fv, ft0, fkey in fps:
            if t >= ft0:
                _paint_ellipse(pr, fx + fv * t, fy, fr, fr, fkey)
        # VOID: static strip + disk + a small moving blob
        void = np.zeros((H, W), bool)
        void[int(0.9 * H) :, : int(0.2 * W)] = True
        yy, xx = np.ogrid[:H, :W]
        void |= (xx - disk[0]) ** 2 + (yy - disk[1]) ** 2 <= disk[2] ** 2
        bx, by = (0.5 + 0.4 * np.sin(0.4 * t)) * W, (0.75 + 0.1 * np.cos(0.3 * t)) * H
        void |= ((xx - bx) / (0.03 * W)) ** 2 + ((yy - by) / (0.04 * H)) ** 2 <= 1
        gt[void] = 0
        if not ground_on_void:
            pr[void & (pr == 2)] = 0
        if rng.random() < hole_p:  # an unpredicted rectangle
            hx, hy = int(rng.integers(0, W)), int(rng.integers(0, H))
            pr[hy : hy + max(H // 12, 1), hx : hx + max(W // 12, 1)] = 0
        gt_maps.append(gt)
        pred_maps.append(pr)
    gt_order = [SKY, GROUND, WALL, CROWD] + [th.gid for th in things]
    return gt_maps, gt_order, meta, pred_maps


def _write_gt_frame(folder: Path, name: str, t: int, gt: np.ndarray, order: list[int],
                    meta: dict[int, tuple[int, int]], compress_level: int) -> tuple[dict, dict]:
    """Write one GT PNG; return its ``images`` and ``annotations`` records."""
    height, width = gt.shape
    Image.fromarray(_encode_rgb(gt)).save(folder / name, compress_level=compress_level)
    image = {"id": t, "file_name": name, "width": width, "height": height}
    return image, {"image_id": t, "file_name": name, "segments_info": _segments(gt, order, meta)}


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
        gt_maps, gt_order, meta, pred_maps = _video(rng, num_frames, width, height)
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
            image, g_frame = _write_gt_frame(gt_dir / vid, name, t, g, gt_order, meta, compress_level)
            Image.fromarray(_encode_rgb(p)).save(pred_dir / "pan_pred" / vid / name, compress_level=compress_level)
            images.append(image)
            g_frames.append(g_frame)
            p_frames.append(
                {"segments_info": _segments(p, [key_to_id[k] for k in keys], pred_meta), "file_name": f"{t:05d}.jpg"}
            )
        gt_videos.append({"video_id": vid, "images": images})
        gt_annos.append({"video_id": vid, "annotations": g_frames})
        pred_annos.append({"video_id": vid, "annotations": p_frames})
    gt_json = root / "gt" / "panoptic_gt_synthetic.json"
    gt_json.write_text(json.dumps({"videos": gt_videos, "annotations": gt_annos, "categories": _CATEGORIES}))
    (pred_dir / "pred.json").write_text(json.dumps({"annotations": pred_annos}))
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
        _paint_ellipse(gt, 0.45 * W, cy, 0.13 * W, 0.2 * H, _SCRIPTED[1])  # B, behind
        rx = 0.12 * W
        _paint_ellipse(gt, -1.2 * rx + u * (0.9 * W + 1.2 * rx), cy + 0.05 * H, rx, 0.16 * H, _SCRIPTED[0])  # A
        _paint_ellipse(gt, 0.8 * W + u * 0.5 * W, 0.3 * H, 0.1 * W, 0.12 * H, _SCRIPTED[2])  # C


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
    root = Path(root)
    counts = [int(num_frames)] * num_videos if isinstance(num_frames, (int, np.integer)) else [int(n) for n in num_frames]
    if len(counts) != num_videos:
        raise ValueError(f"num_frames has {len(counts)} counts for {num_videos} videos")
    if min(counts, default=1) < 1:
        raise ValueError("every video needs at least one frame")
    images_dir, gt_dir = root / "images", root / "panomasksRGB"
    videos, annos, names = [], [], []
    for v, T in enumerate(counts):
        vid = f"{prefix}_{v:03d}"
        names.append(vid)
        rng = np.random.default_rng([seed, v, 7])
        gt_maps, gt_order, meta, _ = _video(rng, T, width, height)
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
            image, frame = _write_gt_frame(gt_dir / vid, f"{stem}.png", t, g, order, meta, 1)
            images.append(image)
            frames.append(frame)
        videos.append({"video_id": vid, "images": images})
        annos.append({"video_id": vid, "annotations": frames})
    gt_json = root / f"panoptic_gt_VIPSeg_{split}.json"
    gt_json.write_text(json.dumps({"videos": videos, "annotations": annos, "categories": _CATEGORIES}))
    split_path = None
    if split_file:
        split_path = root / f"{split}.txt"
        split_path.write_text("".join(f"{n}\n" for n in names))
    return SyntheticVIPSeg(root=root, images_dir=images_dir, gt_dir=gt_dir, gt_json=gt_json, split_file=split_path,
                           split=split, videos=tuple(names), num_frames=tuple(counts))
