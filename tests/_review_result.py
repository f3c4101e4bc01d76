"""A small result folder for the review tests, made without a model (seconds, deterministic).

The id maps are drawn with numpy (entities moving, entering and leaving, one entity with a large
id), written by the writers `entitysam segment` uses (io.result_files + io.staging) with a
manifest of the same form; the input frames are PNGs (lossless) so that `source_frame` can be
compared exactly.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from entitysam.io.result_files import write_result_files
from entitysam.io.staging import StagedOutput

H, W, N = 24, 32, 8
FPS = 5.0
BIG_ID = 1005  # above MOTS's 1000 instances per class: exports must still handle it
SCORES = {1: 0.9, 2: 0.75, 3: 0.5, BIG_ID: 0.66}


def id_maps(big_id: int = BIG_ID) -> list[np.ndarray]:
    """The ground truth [H, W] uint32 id maps of the N frames (big_id: the large id's value)."""
    maps = []
    for t in range(N):
        m = np.zeros((H, W), np.uint32)
        m[:12, :] = 1                           # "stuff": top half, always there
        m[14:20, 2 + t:8 + t] = 2               # moves right
        if t >= 2:
            m[15:22, 20:26] = 3                 # enters at frame 2
        if t <= 5:
            m[0:4, 26:30] = big_id              # leaves after frame 5
        maps.append(m)
    return maps


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(N)]


def make_result(root: Path, name: str = "clip", *, with_input: bool = True, big_id: int = BIG_ID) -> Path:
    """Write the result folder root/<name> (and its input root/input-<name>/); returns the folder.
    big_id: the value of the large id (BIG_ID; up to 2**24 - 1, the largest an id PNG holds)."""
    root.mkdir(parents=True, exist_ok=True)
    src = root / f"input-{name}"
    if with_input:
        src.mkdir()
        for t, im in enumerate(images()):
            Image.fromarray(im).save(src / f"f{t:03d}.png")
    entities = [{"id": big_id if i == BIG_ID else i, "score": s, "query_index": k}
                for k, (i, s) in enumerate(SCORES.items())]
    return write_result(root / name, src, [f"f{t:03d}" for t in range(N)], id_maps(big_id), entities, FPS)


def write_result(folder: Path, input_path: Path, names: list[str], maps: list[np.ndarray], entities: list[dict],
                 fps: float, sample_aspect_ratio: Fraction | None = None) -> Path:
    """A complete result folder (panoptic + entities) of the [H, W] id `maps`, frames named `names`,
    its manifest naming `input_path` as the input, written as `entitysam segment` writes one.
    sample_aspect_ratio: recorded as segment records it; None: not at all (a result of before)."""
    frames = [SimpleNamespace(t=t, index=t, name=name, time=round(t / fps, 6)) for t, name in enumerate(names)]
    with StagedOutput(folder) as staged:
        files = write_result_files(staged.path, ("panoptic", "entities"), name=folder.name, fps=fps, frames=frames,
                                   id_maps=maps, entities=entities, workers=0,
                                   sample_aspect_ratio=sample_aspect_ratio or Fraction(1))
        manifest = {"format": "entitysam-segment", "format_version": 1, "video": folder.name,
                    "input": str(input_path),
                    "selection": {"start": None, "end": None, "stride": 1, "max_frames": None},
                    "num_frames": len(names), "size": list(maps[0].shape), "fps": fps, "entities": len(entities),
                    "files": files}
        if sample_aspect_ratio is not None:
            manifest["sample_aspect_ratio"] = [sample_aspect_ratio.numerator, sample_aspect_ratio.denominator]
        return staged.commit(manifest)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
