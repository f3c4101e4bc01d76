"""Textured demo scenes: stuff and things of five shapes that drift, occlude, enter and leave.

One visual family for the demo model: the training images (:mod:`entitysam.data.synthetic.coco`,
style "demo") are single frames of these scenes and `entitysam demo` segments a whole one
(:mod:`entitysam.data.synthetic.demo`), so the model is evaluated on what it was trained for
(other seeds, other frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["DEMO_SKY", "DEMO_GROUND", "DEMO_WALL", "THING_KINDS", "scene_texture", "render_demo_scene"]

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
