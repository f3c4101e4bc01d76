"""A harness run on disk: one .npz of arrays (full low-res logits of every step, eIoU, points,
ids) plus an "info" JSON (who ran it, the machine, the variant and seed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def save_run(path: Path, arrays: dict, info: dict) -> None:
    np.savez(path, **arrays, info=np.array(json.dumps(info)))


def load_run(path: Path) -> tuple[dict, dict]:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "info"}
        info = json.loads(str(data["info"])) if "info" in data.files else {}
    return arrays, info
