"""The id maps as the player reads them: row-wise runs of equal ids, a small binary the browser
turns into ids, boundary pixels and the tint of a frame without touching each pixel
(static/idmaps.js; the PNG had to be inflated, read back from a canvas and scanned pixel by pixel).

Layout (little endian), ``R`` runs in raster order, none crossing a row (each row starts one)::

    bytes 0-3    b"EIR1"
    bytes 4-19   uint32 width, height, R, id_bytes (2 when every id < 65536, else 4)
    then         R ids (uint16 or uint32), zero-padded to a multiple of 4 bytes
    then         R run lengths (uint16; width <= 65535)
"""

from __future__ import annotations

import struct

import numpy as np

from ..errors import InvalidArgumentError
from ..io.idpng import decode_ids

__all__ = ["MAGIC", "encode_id_runs", "encode_rgb_id_runs", "decode_id_runs"]

MAGIC = b"EIR1"
_HEADER = struct.Struct("<4s4I")


def _runs(values: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """values [H * W, ...] of the pixels, starts [H, W] bool (True where a run starts; column 0 is
    forced: no run crosses a row) -> (values [R, ...], lengths [R]) of the runs in raster order."""
    h, w = starts.shape
    starts[:, 0] = True
    positions = np.flatnonzero(starts)
    ends = np.append(positions[1:], h * w)
    return values[positions], ends - positions


def _pack(width: int, height: int, run_ids: np.ndarray, lengths: np.ndarray) -> bytes:
    id_bytes = 2 if int(run_ids.max()) < 65536 else 4
    packed_ids = run_ids.astype("<u2" if id_bytes == 2 else "<u4").tobytes()
    padding = b"\0" * (-len(packed_ids) % 4)  # the lengths start 4-aligned (typed-array views in JS)
    header = _HEADER.pack(MAGIC, width, height, len(run_ids), id_bytes)
    return header + packed_ids + padding + lengths.astype("<u2").tobytes()


def _check_size(shape: tuple[int, ...]) -> None:
    if shape[0] == 0 or not 1 <= shape[1] <= 0xFFFF:
        raise InvalidArgumentError(f"an id map must be [H, W] with H >= 1 and 1 <= W <= 65535, got shape {shape}")


def encode_id_runs(id_map: np.ndarray) -> bytes:
    """[H, W] ids in [0, 2**32) -> the run-length bytes of the module docstring."""
    ids = np.asarray(id_map)
    if ids.ndim != 2:
        raise InvalidArgumentError(f"an id map must be [H, W], got shape {ids.shape}")
    _check_size(ids.shape)
    if ids.min() < 0 or ids.max() > 0xFFFFFFFF:
        raise InvalidArgumentError("ids must be in [0, 2**32)")
    starts = np.empty(ids.shape, dtype=bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    run_ids, lengths = _runs(ids.reshape(-1), starts)
    return _pack(ids.shape[1], ids.shape[0], run_ids, lengths)


def encode_rgb_id_runs(rgb: np.ndarray) -> bytes:
    """[H, W, 3] uint8 id PNG pixels (id = R + 256 G + 65536 B) -> the same bytes as
    ``encode_id_runs(decode_ids(rgb))``, 3-4x faster: only the runs' first pixels are decoded
    (what a cold 1080p frame costs the server)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InvalidArgumentError(f"RGB id pixels must be [H, W, 3] uint8, got {rgb.dtype} {rgb.shape}")
    _check_size(rgb.shape)
    differs = rgb[:, 1:] != rgb[:, :-1]
    starts = np.empty(rgb.shape[:2], dtype=bool)
    starts[:, 1:] = differs[..., 0] | differs[..., 1] | differs[..., 2]  # (.any(axis=2) is 9x slower)
    run_rgb, lengths = _runs(rgb.reshape(-1, 3), starts)
    return _pack(rgb.shape[1], rgb.shape[0], decode_ids(run_rgb).astype(np.uint32), lengths)


def decode_id_runs(data: bytes) -> np.ndarray:
    """The bytes of `encode_id_runs` -> [H, W] uint32 ids (the reference decoder of the format)."""
    magic, width, height, count, id_bytes = _HEADER.unpack_from(data)
    if magic != MAGIC or id_bytes not in (2, 4):
        raise InvalidArgumentError("not an id run-length map (EIR1)")
    offset = _HEADER.size
    run_ids = np.frombuffer(data, dtype="<u2" if id_bytes == 2 else "<u4", count=count, offset=offset)
    offset += count * id_bytes + (-count * id_bytes) % 4
    lengths = np.frombuffer(data, dtype="<u2", count=count, offset=offset)
    if int(lengths.sum(dtype=np.int64)) != width * height:
        raise InvalidArgumentError("the runs do not cover the map")
    return np.repeat(run_ids.astype(np.uint32), lengths.astype(np.int64)).reshape(height, width)
