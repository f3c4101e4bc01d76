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

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .. import jsonio

__all__ = ["SyntheticDataset", "SyntheticVIPSeg", "make_synthetic_dataset", "make_vipseg_dataset", "DemoVideo",
           "make_demo_video", "render_demo_scene", "scene_texture"]

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
    gt_json.write_text(jsonio.dumps({"videos": gt_videos, "annotations": gt_annos, "categories": _CATEGORIES}))
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
    gt_json.write_text(jsonio.dumps({"videos": videos, "annotations": annos, "categories": _CATEGORIES}))
    split_path = None
    if split_file:
        split_path = root / f"{split}.txt"
        split_path.write_text("".join(f"{n}\n" for n in names))
    return SyntheticVIPSeg(root=root, images_dir=images_dir, gt_dir=gt_dir, gt_json=gt_json, split_file=split_path,
                           split=split, videos=tuple(names), num_frames=tuple(counts))


# ----------------------------------------------------------------------------- demo scenes
#
# One visual family for the demo model: the training images (`entitysam.train.synthetic`, style
# "demo") are single frames of these scenes and `entitysam demo` segments a whole one, so the
# model is evaluated on what it was trained for (other seeds, other frames).

DEMO_SKY, DEMO_GROUND, DEMO_WALL = 1, 2, 3  # scene-local ids; things are 10, 11, ...


def _fractal_noise(rng: np.random.Generator, h: int, w: int, beta: float) -> np.ndarray:
    """[h, w] zero-mean unit-std noise with a 1/f^beta spectrum (clouds, bark, terrain).

    No installed package ships photographs, so this stands in for natural-image patches: it has
    their power-law spectrum, which flat colours and periodic patterns lack.
    """
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f ** beta
    spec[0, 0] = 0.0
    v = np.fft.irfft2(spec, s=(h, w))
    return ((v - v.mean()) / (v.std() + 1e-8)).astype(np.float32)


def scene_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """[h, w, 3] float32 texture in [0, 255] around a random base colour.

    Kinds: stripes, checker, fine noise, gradient, natural-like 1/f noise tinted between two
    colours, and two-tone blotches.
    """
    base = rng.uniform(15, 240, size=3).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = int(rng.integers(6))
    if kind == 0:  # stripes
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(4, 18)
        v = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period)
    elif kind == 1:  # checker
        cell = int(rng.integers(3, 11))
        v = (((yy // cell + xx // cell) % 2) * 2 - 1).astype(np.float32)
    elif kind == 2:  # fine noise
        v = rng.standard_normal((h, w)).astype(np.float32) * 0.7
    elif kind == 3:  # gradient
        theta = rng.uniform(0, 2 * np.pi)
        v = (xx * np.cos(theta) + yy * np.sin(theta)) / max(h, w, 1) * 2
    else:
        v = _fractal_noise(rng, h, w, rng.uniform(1.0, 1.8))
        if kind == 5:  # blotches: thresholded natural noise
            v = np.tanh(3 * v)
        other = rng.uniform(15, 240, size=3).astype(np.float32)
        mix = (np.clip(v * 0.35 + 0.5, 0, 1))[..., None]
        return np.clip(base * (1 - mix) + other * mix * 0.6 + base * mix * 0.4, 0, 255)
    amp = rng.uniform(10, 40, size=3).astype(np.float32)
    return np.clip(base + v[..., None] * amp, 0, 255)


def _shape_patch(rng: np.random.Generator, kind: str, r: float) -> np.ndarray:
    """A bool [2R+1, 2R+1] mask of a shape of radius ~r centred in its patch."""
    if kind == "bar":  # thin structure: 2-4 px wide, long
        length, width = r, rng.uniform(1.0, 2.0)
    else:
        length, width = r, r * rng.uniform(0.45, 1.0)
    R = int(np.ceil(max(length, width))) + 1
    yy, xx = np.mgrid[-R:R + 1, -R:R + 1].astype(np.float32)
    a = rng.uniform(0, np.pi)
    u = xx * np.cos(a) + yy * np.sin(a)
    v = -xx * np.sin(a) + yy * np.cos(a)
    if kind == "ellipse":
        return (u / length) ** 2 + (v / width) ** 2 <= 1
    if kind in ("box", "bar"):
        return (np.abs(u) <= length) & (np.abs(v) <= width)
    if kind == "triangle":
        angles = a + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
        pts = np.stack([np.cos(angles), np.sin(angles)], 1) * r
        inside = np.ones_like(xx, bool)
        sign = None
        for i in range(3):
            (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % 3]
            s = (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0)
            sign = np.sign((x1 - x0) * (pts[(i + 2) % 3][1] - y0) - (y1 - y0) * (pts[(i + 2) % 3][0] - x0))
            inside &= s * sign >= 0
        return inside
    # blob: a few overlapping ellipses (an irregular, natural-looking outline)
    m = np.zeros_like(xx, bool)
    for _ in range(int(rng.integers(2, 5))):
        ox, oy = rng.uniform(-0.4, 0.4, 2) * r
        rx, ry = rng.uniform(0.35, 0.6, 2) * r
        m |= ((xx - ox) / rx) ** 2 + ((yy - oy) / ry) ** 2 <= 1
    return m


@dataclass
class _SceneThing:
    mask: np.ndarray  # [h, w] bool patch
    texture: np.ndarray  # [h, w, 3] float32, moves with the thing
    x0: float  # patch centre at t = 0 (pixels)
    y0: float
    vx: float  # pixels per frame
    vy: float
    wobble: float
    phase: float
    z: float


THING_KINDS = ("ellipse", "box", "triangle", "bar", "blob")


def _scene_things(rng: np.random.Generator, T: int, H: int, W: int, n_random: int, scripted: bool) -> list[_SceneThing]:
    m = min(H, W)
    things = []

    def add(kind: str, r: float, x0: float, y0: float, vx: float, vy: float, z: float, wobble: float = 0.0):
        mask = _shape_patch(rng, kind, r)
        things.append(_SceneThing(mask, scene_texture(rng, *mask.shape), x0, y0, vx, vy, wobble,
                                  float(rng.uniform(0, 2 * np.pi)), z))

    for _ in range(n_random):
        kind = THING_KINDS[int(rng.integers(len(THING_KINDS)))]
        u = rng.uniform()
        r = m * (rng.uniform(0.03, 0.05) if u < 0.15 else rng.uniform(0.25, 0.32) if u > 0.88 else rng.uniform(0.07, 0.18))
        if kind == "bar":
            r = m * rng.uniform(0.15, 0.3)
        speed = rng.uniform(0.0, 0.012) * m
        a = rng.uniform(0, 2 * np.pi)
        add(kind, r, rng.uniform(0.05, 0.95) * W, rng.uniform(0.1, 0.95) * H, speed * np.cos(a), speed * np.sin(a),
            float(rng.uniform()), float(rng.uniform(0, 0.01) * m))
    if scripted:
        # A enters from the left and crosses in front of B; C leaves through the right border;
        # a fast D crosses behind B. Speeds are chosen so every event happens within T frames.
        T1 = max(T - 1, 1)
        cy = rng.uniform(0.55, 0.75) * H
        rb = m * rng.uniform(0.13, 0.18)
        xb = rng.uniform(0.4, 0.6) * W
        add(str(rng.choice(["ellipse", "box", "blob"])), rb, xb, cy, 0.0, 0.0, 0.5)
        ra = m * rng.uniform(0.1, 0.14)
        add(str(rng.choice(["ellipse", "triangle", "blob"])), ra, -ra, cy + rng.uniform(-0.05, 0.05) * H,
            (xb + 0.35 * W + ra) / T1, 0.0, 0.9)
        rc = m * rng.uniform(0.08, 0.12)
        xc = rng.uniform(0.7, 0.8) * W
        add(str(rng.choice(["box", "ellipse", "blob"])), rc, xc, rng.uniform(0.2, 0.4) * H,
            (W - xc + 1.6 * rc) / T1, 0.0, 0.7)
        add("ellipse", m * rng.uniform(0.05, 0.08), W * 1.05, cy + rng.uniform(-0.08, 0.08) * H,
            -(W * 1.1) / T1 * rng.uniform(0.7, 0.9), 0.0, 0.1)
    return sorted(things, key=lambda th: th.z)  # painted back to front


def _paste(canvas: np.ndarray, ids: np.ndarray, th: _SceneThing, cx: float, cy: float, value: int) -> None:
    h, w = th.mask.shape
    top, left = int(round(cy)) - h // 2, int(round(cx)) - w // 2
    H, W = ids.shape
    y0, y1, x0, x1 = max(top, 0), min(top + h, H), max(left, 0), min(left + w, W)
    if y0 >= y1 or x0 >= x1:
        return
    m = th.mask[y0 - top:y1 - top, x0 - left:x1 - left]
    ids[y0:y1, x0:x1][m] = value
    canvas[y0:y1, x0:x1][m] = th.texture[y0 - top:y1 - top, x0 - left:x1 - left][m]


def render_demo_scene(rng: np.random.Generator, num_frames: int, height: int, width: int, *,
                      things: tuple[int, int] = (2, 5), scripted: bool = True, frames: Sequence[int] | None = None,
                      noise: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A textured scene of `num_frames` frames: images uint8 [n, H, W, 3] and ids int32 [n, H, W].

    Stuff: sky above a wavy horizon, ground below, sometimes a wall on one side, each with its
    own texture. Things: a random number in `things` (inclusive) of textured ellipses, boxes,
    triangles, thin bars and irregular blobs of varied sizes that drift, plus (`scripted`) four
    whose paths guarantee the events of a video: one enters from the left and passes in front
    of a static one, one leaves through the right border, one crosses behind. Textures move with
    their thing; later (higher z) things occlude earlier ones. Ids: 1 sky, 2 ground, 3 wall,
    10 + k the k-th thing in painting order; 0 never occurs. `frames` renders only those frame
    indices (n = len(frames)); the camera is static.
    """
    T, H, W = num_frames, height, width
    xs = np.arange(W)
    horizon = H * rng.uniform(0.3, 0.55) + H * 0.05 * np.sin(xs * 2 * np.pi / W * rng.uniform(0.5, 2) + rng.uniform(0, 6))
    below = np.arange(H)[:, None] >= horizon[None, :]
    stuff_ids = np.where(below, DEMO_GROUND, DEMO_SKY).astype(np.int32)
    if rng.uniform() < 0.5:
        wall_w = int(W * rng.uniform(0.12, 0.25))
        if rng.uniform() < 0.5:
            stuff_ids[:, :wall_w] = DEMO_WALL
        else:
            stuff_ids[:, W - wall_w:] = DEMO_WALL
    background = np.zeros((H, W, 3), np.float32)
    for sid in (DEMO_SKY, DEMO_GROUND, DEMO_WALL):
        m = stuff_ids == sid
        if m.any():
            background[m] = scene_texture(rng, H, W)[m]
    n_random = int(rng.integers(things[0], things[1] + 1))
    scene = _scene_things(rng, T, H, W, n_random, scripted)
    order = range(T) if frames is None else frames
    images, id_maps = [], []
    for t in order:
        canvas = background.copy()
        ids = stuff_ids.copy()
        for k, th in enumerate(scene):
            cx = th.x0 + th.vx * t + th.wobble * np.sin(0.4 * t + th.phase)
            cy = th.y0 + th.vy * t
            _paste(canvas, ids, th, cx, cy, 10 + k)
        frame_rng = np.random.default_rng([int(rng.integers(2**31)), t])
        canvas += frame_rng.normal(0, noise, canvas.shape).astype(np.float32)  # sensor noise
        images.append(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
        id_maps.append(ids)
    return np.stack(images), np.stack(id_maps)


@dataclass(frozen=True)
class DemoVideo:
    root: Path
    frames_dir: Path  # <root>/images/<name>/<00000000>.jpg
    gt_dir: Path  # <root>/panomasksRGB (VIPSeg layout)
    gt_json: Path
    name: str
    num_frames: int
    size: tuple[int, int]  # (H, W)


DEMO_DEFAULTS = {"num_frames": 40, "width": 320, "height": 240, "seed": 2025}


def make_demo_video(root: str | os.PathLike, *, num_frames: int = DEMO_DEFAULTS["num_frames"],
                    width: int = DEMO_DEFAULTS["width"], height: int = DEMO_DEFAULTS["height"],
                    seed: int = DEMO_DEFAULTS["seed"], name: str = "demo", jpeg_quality: int = 95) -> DemoVideo:
    """Write one demo scene (`render_demo_scene`) as a VIPSeg-layout video under `root`.

    Frames are JPEGs (`images/<name>/%08d.jpg`), the ground truth PNGs `panomasksRGB/<name>/`
    with random 24-bit ids, and `panoptic_gt_VIPSeg_demo.json` lists every segment (all are
    entities, none crowd, no VOID), so `entitysam.eval.metrics.evaluate` scores a prediction
    folder against it. Everything is a function of `seed`; the training images use other seeds.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if width < 32 or height < 32:
        raise ValueError(f"the demo video needs at least 32x32 pixels, got {width}x{height}")
    root = Path(root)
    rng = np.random.default_rng([seed, 9])
    images, local = render_demo_scene(rng, num_frames, height, width)
    present = np.unique(local)
    gids = rng.choice(np.arange(1, 1 << 24), size=len(present), replace=False)
    lut = np.zeros(int(present.max()) + 1, np.int64)
    lut[present] = gids
    meta = {int(g): (2 if p < 10 else 1, 0) for p, g in zip(present.tolist(), gids.tolist())}
    order = [int(g) for g in gids]
    frames_dir, gt_dir = root / "images" / name, root / "panomasksRGB" / name
    frames_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    image_recs, annos = [], []
    for t in range(num_frames):
        stem = f"{t:08d}"
        Image.fromarray(images[t]).save(frames_dir / f"{stem}.jpg", quality=jpeg_quality)
        image, frame = _write_gt_frame(gt_dir, f"{stem}.png", t, lut[local[t]], order, meta, 1)
        image_recs.append(image)
        annos.append(frame)
    gt_json = root / "panoptic_gt_VIPSeg_demo.json"
    gt_json.write_text(jsonio.dumps({
        "videos": [{"video_id": name, "images": image_recs}],
        "annotations": [{"video_id": name, "annotations": annos}],
        "categories": [{"id": 1, "name": "thing", "isthing": 1}, {"id": 2, "name": "stuff", "isthing": 0}],
    }))
    return DemoVideo(root, frames_dir, root / "panomasksRGB", gt_json, name, num_frames, (height, width))
