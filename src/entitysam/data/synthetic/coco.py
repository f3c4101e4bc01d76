"""Small synthetic COCO-panoptic datasets for tests and smoke runs.

`make_synthetic_coco_panoptic(root, num_images=8, seed=0)` writes::

    root/train2017/<000000000001>.jpg                     textured RGB image
    root/panoptic_train2017/<000000000001>.png            RGB ids (R + 256 G + 65536 B), 0 = unlabeled
    root/annotations/panoptic_train2017.json              COCO panoptic json (images, annotations, categories)

Each image has "stuff" regions (a wavy horizon splitting sky and ground, sometimes a wall),
"things" of varied sizes (ellipses, boxes, triangles, thin bars, small dots, one large
shape) painted in random depth order so that they occlude each other, sometimes an `iscrowd`
segment and an unlabeled (id 0) patch. Every segment has its own texture (stripes, checker,
noise or gradient over a distinct base colour). Everything is a function of `seed`.

`style="demo"` writes instead single frames of the demo scenes
(`entitysam.data.synthetic.scenes.render_demo_scene`: textured stuff, drifting things of five shapes
and varied sizes, thin bars, natural-like 1/f textures, occlusions, things cut by the border),
each at a random time of its own scene: the training set of the shipped demo model, from the
same family as the video `entitysam demo` segments. Every segment is an entity (no crowd, no
unlabeled pixels).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ... import jsonio
from ...errors import EntitySAMError, InvalidArgumentError, OutputError
from ...io.idpng import encode_ids
from .scenes import render_demo_scene

CATEGORIES = [
    {"id": 1, "name": "ellipse", "isthing": 1, "supercategory": "shape"},
    {"id": 2, "name": "box", "isthing": 1, "supercategory": "shape"},
    {"id": 3, "name": "triangle", "isthing": 1, "supercategory": "shape"},
    {"id": 4, "name": "bar", "isthing": 1, "supercategory": "shape"},
    {"id": 5, "name": "crowd", "isthing": 1, "supercategory": "shape"},
    {"id": 101, "name": "sky", "isthing": 0, "supercategory": "stuff"},
    {"id": 102, "name": "ground", "isthing": 0, "supercategory": "stuff"},
    {"id": 103, "name": "wall", "isthing": 0, "supercategory": "stuff"},
]


@dataclass(frozen=True)
class SyntheticCocoPanoptic:
    root: Path
    image_dir: Path
    panoptic_dir: Path
    json_path: Path
    num_images: int


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """[h, w, 3] float texture around a random base colour."""
    base = rng.uniform(20, 235, size=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:  # stripes
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(4, 16)
        v = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period)[..., None]
    elif kind == 1:  # checker
        cell = int(rng.integers(3, 10))
        v = (((yy // cell + xx // cell) % 2) * 2 - 1)[..., None]
    elif kind == 2:  # noise
        v = rng.standard_normal((h, w, 1)).astype(np.float32) * 0.7
    else:  # gradient
        v = ((xx / max(w, 1)) * 2 - 1)[..., None]
    amp = rng.uniform(10, 35, size=3)
    return np.clip(base + v * amp, 0, 255)


def _ellipse(h, w, cy, cx, ry, rx, angle):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    u = ((xx - cx) * c + (yy - cy) * s) / max(rx, 0.5)
    v = (-(xx - cx) * s + (yy - cy) * c) / max(ry, 0.5)
    return u * u + v * v <= 1.0


def _box(h, w, cy, cx, hh, hw, angle):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (np.abs(u) <= hw) & (np.abs(v) <= hh)


def _triangle(h, w, pts):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    (x0, y0), (x1, y1), (x2, y2) = pts

    def side(ax, ay, bx, by):
        return (xx - bx) * (ay - by) - (ax - bx) * (yy - by)

    d1, d2, d3 = side(x0, y0, x1, y1), side(x1, y1, x2, y2), side(x2, y2, x0, y0)
    neg = (d1 < 0) | (d2 < 0) | (d3 < 0)
    pos = (d1 > 0) | (d2 > 0) | (d3 > 0)
    return ~(neg & pos)


def _thing_mask(rng: np.random.Generator, h: int, w: int, kind: str, scale: float) -> np.ndarray:
    m = min(h, w)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    angle = rng.uniform(0, np.pi)
    if kind == "ellipse":
        return _ellipse(h, w, cy, cx, scale * m * rng.uniform(0.5, 1), scale * m * rng.uniform(0.5, 1), angle)
    if kind == "box":
        return _box(h, w, cy, cx, scale * m * rng.uniform(0.4, 1), scale * m * rng.uniform(0.4, 1), angle)
    if kind == "triangle":
        r = scale * m
        pts = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angle + np.array([0, 2.1, 4.2]) + rng.uniform(-.3, .3, 3)]
        return _triangle(h, w, pts)
    # thin bar: long and 2-4 px wide
    return _box(h, w, cy, cx, rng.uniform(1.0, 2.0), m * rng.uniform(0.25, 0.6), angle)


def _paint_image(rng, h, w, things_max):
    """Returns the RGB image, the segment-index map (0 = unlabeled) and per-index (category, iscrowd)."""
    seg = np.zeros((h, w), dtype=np.int32)
    meta: list[tuple[int, int]] = []  # index k-1 -> (category_id, iscrowd)
    yy, xx = np.mgrid[0:h, 0:w]

    # stuff: wavy horizon (sky above, ground below), sometimes a wall on one side
    horizon = h * rng.uniform(0.3, 0.6) + h * 0.06 * np.sin(xx[0] * 2 * np.pi / w * rng.uniform(0.5, 2) + rng.uniform(0, 6))
    meta.append((101, 0))
    seg[:] = 1
    meta.append((102, 0))
    seg[yy > horizon[None, :]] = 2
    if rng.uniform() < 0.5:
        meta.append((103, 0))
        x_wall = int(w * rng.uniform(0.65, 0.85))
        seg[:, x_wall:] = len(meta)

    kinds = ["ellipse", "box", "triangle", "bar"]
    n_things = int(rng.integers(2, things_max + 1))
    for i in range(n_things):
        kind = kinds[int(rng.integers(len(kinds)))]
        r = rng.uniform()
        scale = 0.04 if r < 0.15 else (0.35 if r > 0.85 else rng.uniform(0.08, 0.22))  # dots .. large
        mask = _thing_mask(rng, h, w, kind, scale)
        if mask.sum() < 6:
            continue
        meta.append((CATEGORIES[kinds.index(kind)]["id"], 0))
        seg[mask] = len(meta)  # painted later = in front (occludes earlier things)
    if rng.uniform() < 0.4:  # a crowd region: a cluster of small blobs with one id
        meta.append((5, 1))
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        for _ in range(5):
            seg[_ellipse(h, w, cy + rng.normal(0, h * .05), cx + rng.normal(0, w * .05), h * .03, w * .03, 0)] = len(meta)
    if rng.uniform() < 0.4:  # unlabeled patch
        seg[_box(h, w, rng.uniform(0, h), rng.uniform(0, w), h * 0.05, w * 0.08, rng.uniform(0, 3))] = 0

    image = np.zeros((h, w, 3), dtype=np.float32)
    for k in range(1, len(meta) + 1):
        m = seg == k
        if m.any():
            image[m] = _texture(rng, h, w)[m]
    unl = seg == 0
    image[unl] = rng.uniform(0, 255, size=(int(unl.sum()), 3))
    return image.round().astype(np.uint8), seg, meta


def _paint_demo_image(rng: np.random.Generator, h: int, w: int):
    """One frame of a demo scene, in `_paint_image`'s return format (all segments are entities)."""
    num_frames = int(rng.integers(20, 61))
    t = int(rng.integers(num_frames))
    images, ids = render_demo_scene(rng, num_frames, h, w, frames=[t])
    local = ids[0]
    present = np.unique(local)
    seg = np.searchsorted(present, local).astype(np.int32) + 1  # 1..K in painting order
    meta = [(101 if p == 1 else 102 if p == 2 else 103 if p == 3 else 1, 0) for p in present.tolist()]
    return images[0], seg, meta


def _check_root(root: Path) -> None:
    """OutputError unless `root` is new, empty or an earlier dataset of this generator: it writes
    annotations/panoptic_train2017.json and train2017/000000000001.jpg ..., the names of COCO's own
    files, so pointed at a real dataset it replaced its annotations and images without a word."""
    if not root.exists():
        return
    if not root.is_dir():
        raise OutputError(f"{root} exists and is not a folder")
    if not any(root.iterdir()):
        return
    try:
        doc = json.loads((root / "annotations" / "panoptic_train2017.json").read_text(encoding="utf-8"))
        mine = str(doc["info"]["description"]).startswith("synthetic COCO panoptic")
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        mine = False
    if not mine:
        raise OutputError(f"{root} is not empty and does not hold a synthetic dataset of this generator "
                          "(whose files it would replace): choose a new or empty folder")


def make_synthetic_coco_panoptic(root: str | Path, num_images: int = 8, seed: int = 0,
                                 size: tuple[int, int] | None = None, things_max: int = 8,
                                 image_format: str = "jpg", style: str = "basic") -> SyntheticCocoPanoptic:
    """Write a synthetic COCO-panoptic dataset under `root` (see module docstring).

    size: (H, W) for every image, or None for random sizes (basic: [96, 200] x [120, 240];
    demo: [200, 300] x [240, 360]).
    image_format: "jpg" (as COCO) or "png" (lossless).
    style: "basic" (the test scenes) or "demo" (frames of the demo scenes; `things_max` unused).
    """
    if style not in ("basic", "demo"):
        raise ValueError(f"style must be 'basic' or 'demo', got {style!r}")
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        # 0 or -3 wrote a dataset of no image without a word (training then refuses it)
        raise InvalidArgumentError(f"num_images must be a positive integer, got {num_images!r}")
    root = Path(root)
    _check_root(root)
    image_dir, pan_dir, ann_dir = root / "train2017", root / "panoptic_train2017", root / "annotations"
    for d in (image_dir, pan_dir, ann_dir):
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(num_images):
        if style == "demo":
            h, w = size if size else (int(rng.integers(200, 301)), int(rng.integers(240, 361)))
            image, seg, meta = _paint_demo_image(rng, h, w)
        else:
            h, w = size if size else (int(rng.integers(96, 201)), int(rng.integers(120, 241)))
            image, seg, meta = _paint_image(rng, h, w, things_max)
        ids = rng.choice(np.arange(1, 2**24), size=len(meta), replace=False)  # colour-like ids
        pan_ids = np.zeros_like(seg)
        segments = []
        for k, (cat, crowd) in enumerate(meta, start=1):
            m = seg == k
            area = int(m.sum())
            if area == 0:
                continue  # fully occluded: not in the annotation (as in COCO)
            pan_ids[m] = ids[k - 1]
            ys, xs = np.nonzero(m)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            segments.append({"id": int(ids[k - 1]), "category_id": cat, "iscrowd": crowd, "bbox": bbox, "area": area})
        image_id = i + 1
        stem = f"{image_id:012d}"
        file_name = f"{stem}.{image_format}"
        if image_format == "jpg":
            Image.fromarray(image).save(image_dir / file_name, quality=95)
        else:
            Image.fromarray(image).save(image_dir / file_name)
        Image.fromarray(encode_ids(pan_ids)).save(pan_dir / f"{stem}.png")  # zlib's default level, as before
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        annotations.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segments})
    json_path = ann_dir / "panoptic_train2017.json"
    doc = {"info": {"description": f"synthetic COCO panoptic, seed {seed}"}, "images": images,
           "annotations": annotations, "categories": CATEGORIES}
    json_path.write_text(jsonio.dumps(doc), encoding="utf-8")
    return SyntheticCocoPanoptic(root, image_dir, pan_dir, json_path, num_images)


def main(argv: list[str] | None = None) -> None:
    import argparse  # noqa: PLC0415

    p = argparse.ArgumentParser(description="write a synthetic COCO-panoptic dataset")
    p.add_argument("root")
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("jpg", "png"), default="jpg")
    p.add_argument("--style", choices=("basic", "demo"), default="basic",
                   help="basic: test scenes; demo: frames of the demo scenes (the demo model's training set)")
    a = p.parse_args(argv)
    try:
        ds = make_synthetic_coco_panoptic(a.root, a.num_images, a.seed, image_format=a.format, style=a.style)
    except EntitySAMError as err:
        p.exit(2, f"error: {err}\n")
    print(f"wrote {ds.num_images} images to {ds.root}")


if __name__ == "__main__":
    main()
