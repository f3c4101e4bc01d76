"""The one id <-> RGB PNG codec of the project: ``id = R + 256 G + 65536 B`` (0 = no entity / VOID).

Every PNG this project reads or writes with ids (panoptic output, VIPSeg ground truth and
predictions, COCO panoptic training data, synthetic datasets) goes through these functions.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

MAX_ID = (1 << 24) - 1


def encode_ids(id_map: np.ndarray) -> np.ndarray:
    """[H, W] ids in [0, 2**24) -> [H, W, 3] uint8 RGB."""
    ids = np.asarray(id_map)
    if ids.min(initial=0) < 0 or ids.max(initial=0) > MAX_ID:
        raise ValueError("ids must be in [0, 2**24)")
    ids = ids.astype(np.uint32, copy=False)
    rgb = np.empty((*ids.shape, 3), dtype=np.uint8)
    rgb[..., 0] = ids & 0xFF
    rgb[..., 1] = (ids >> 8) & 0xFF
    rgb[..., 2] = (ids >> 16) & 0xFF
    return rgb


def decode_ids(rgb: np.ndarray) -> np.ndarray:
    """[H, W, >=3] uint8 -> [H, W] int32 ids (channels beyond the third are ignored)."""
    rgb = np.asarray(rgb)
    ids = rgb[..., 0].astype(np.int32)
    ids |= rgb[..., 1].astype(np.int32) << 8
    ids |= rgb[..., 2].astype(np.int32) << 16
    return ids


def write_id_png(path: str | os.PathLike, id_map: np.ndarray, compress_level: int = 1) -> None:
    """Write the RGB-encoded id PNG (default: fast zlib level, the files are re-read, not archived)."""
    Image.fromarray(encode_ids(id_map)).save(path, format="PNG", compress_level=compress_level)


def read_id_png(path: str | os.PathLike) -> np.ndarray:
    """An RGB-encoded id PNG -> [H, W] int32 ids."""
    with Image.open(path) as im:
        return decode_ids(np.asarray(im.convert("RGB")))
