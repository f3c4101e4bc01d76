"""Random VIPSeg-like label videos: ground-truth id maps and predictions with the usual errors.

A video (:func:`render_label_video`) has two stuff segments (sky / ground, wavy moving
horizon), sometimes a wall, moving ellipse "things" that enter and leave the frame, appear and
disappear, and occlude each other (random depth order), often an ``iscrowd`` segment, VOID
regions (a static strip and disk plus a small moving blob) and, in the predictions, the usual
errors: shifted / dilated / eroded masks, identity switches, merged and split things, missed
things (always or on some frames), false positives, unpredicted holes, stuff predicted over
VOID, crowd predicted as its own id, merged into ground or left unpredicted. Everything is a
function of the random generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...io.idpng import write_id_png

__all__ = ["CATEGORIES", "SKY", "GROUND", "WALL", "CROWD", "paint_ellipse", "segments_info", "render_label_video",
           "write_gt_frame"]

SKY, GROUND, WALL, CROWD = 1001, 1002, 1003, 3001
CATEGORIES = [
    {"id": 1, "name": "sky", "isthing": 0},
    {"id": 2, "name": "ground", "isthing": 0},
    {"id": 3, "name": "ball", "isthing": 1},
    {"id": 4, "name": "crate", "isthing": 1},
    {"id": 5, "name": "crowd_people", "isthing": 1},
    {"id": 6, "name": "wall", "isthing": 0},
]

_THING_MODES = ("perfect", "shift", "dilate", "erode", "switch", "merge", "split", "miss", "miss_some")
_THING_P = (0.25, 0.12, 0.1, 0.1, 0.1, 0.08, 0.08, 0.07, 0.1)


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


def paint_ellipse(lab: np.ndarray, cx: float, cy: float, rx: float, ry: float, value: int, half: int = 0) -> None:
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


def segments_info(ids: np.ndarray, order: list[int], meta: dict[int, tuple[int, int]]) -> list[dict]:
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


def render_label_video(rng: np.random.Generator, T: int, W: int, H: int):
    """Render one video of T frames, H x W: (GT id maps [H, W] int64 per frame, GT segment ids in
    segments_info order, {id: (category, iscrowd)}, predicted key maps [H, W] int64 per frame)."""
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
            paint_ellipse(gt, ccx, crowd[1], crowd[2], crowd[3], CROWD)
            if crowd_mode == "own":
                paint_ellipse(pr, ccx, crowd[1], crowd[2], crowd[3], 4)
            elif crowd_mode == "ground":
                paint_ellipse(pr, ccx, crowd[1], crowd[2], crowd[3], 2)
            else:
                paint_ellipse(pr, ccx, crowd[1], crowd[2], crowd[3], 0)
        for i in order:
            th = things[i]
            if not (th.t0 <= t < th.t1):
                continue
            cx = th.cx + th.vx * t + th.wobble * np.sin(0.5 * t + th.phase)
            cy = th.cy + th.vy * t
            paint_ellipse(gt, cx, cy, th.rx, th.ry, th.gid)
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
                paint_ellipse(pr, cx, cy, rx, ry, key, half=-1)
                paint_ellipse(pr, cx, cy, rx, ry, 300 + i, half=1)
            else:
                paint_ellipse(pr, cx, cy, rx, ry, key)
        for fx, fy, fr, fv, ft0, fkey in fps:
            if t >= ft0:
                paint_ellipse(pr, fx + fv * t, fy, fr, fr, fkey)
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


def write_gt_frame(folder: Path, name: str, t: int, gt: np.ndarray, order: list[int],
                    meta: dict[int, tuple[int, int]], compress_level: int) -> tuple[dict, dict]:
    """Write one GT PNG; return its ``images`` and ``annotations`` records."""
    height, width = gt.shape
    write_id_png(folder / name, gt, compress_level=compress_level)
    image = {"id": t, "file_name": name, "width": width, "height": height}
    return image, {"image_id": t, "file_name": name, "segments_info": segments_info(gt, order, meta)}
