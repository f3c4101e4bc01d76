"""The demo video: one textured demo scene written as a VIPSeg-layout video with its ground truth."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ... import jsonio
from .label_video import write_gt_frame
from .scenes import render_demo_scene

__all__ = ["DemoVideo", "DEMO_DEFAULTS", "make_demo_video"]


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
        image, frame = write_gt_frame(gt_dir, f"{stem}.png", t, lut[local[t]], order, meta, 1)
        image_recs.append(image)
        annos.append(frame)
    gt_json = root / "panoptic_gt_VIPSeg_demo.json"
    gt_json.write_text(jsonio.dumps({
        "videos": [{"video_id": name, "images": image_recs}],
        "annotations": [{"video_id": name, "annotations": annos}],
        "categories": [{"id": 1, "name": "thing", "isthing": 1}, {"id": 2, "name": "stuff", "isthing": 0}],
    }))
    return DemoVideo(root, frames_dir, root / "panomasksRGB", gt_json, name, num_frames, (height, width))
