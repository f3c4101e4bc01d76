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

__all__ = ["MAGIC", "encode_id_runs", "decode_id_runs"]

MAGIC = b"EIR1"
_HEADER = struct.Struct("<4s4I")


def _runs(id_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[H, W] ids -> (ids [R], lengths [R]) of the row-wise runs in raster order."""
    h, w = id_map.shape
    starts = np.ones((h, w), dtype=bool)
    starts[:, 1:] = id_map[:, 1:] != id_map[:, :-1]  # column 0 always starts a run: none crosses a row
    positions = np.flatnonzero(starts)
    ends = np.append(positions[1:], h * w)
    return id_map.reshape(-1)[positions], (ends - positions)


def encode_id_runs(id_map: np.ndarray) -> bytes:
    """[H, W] ids in [0, 2**32) -> the run-length bytes of the module docstring."""
    ids = np.asarray(id_map)
    if ids.ndim != 2 or ids.shape[1] > 0xFFFF or ids.size == 0:
        raise InvalidArgumentError(f"an id map must be [H, W] with 1 <= W <= 65535, got shape {ids.shape}")
    if ids.min() < 0 or ids.max() > 0xFFFFFFFF:
        raise InvalidArgumentError("ids must be in [0, 2**32)")
    run_ids, lengths = _runs(ids)
    id_bytes = 2 if int(run_ids.max()) < 65536 else 4
    packed_ids = run_ids.astype("<u2" if id_bytes == 2 else "<u4").tobytes()
    padding = b"\0" * (-len(packed_ids) % 4)  # the lengths start 4-aligned (typed-array views in JS)
    header = _HEADER.pack(MAGIC, ids.shape[1], ids.shape[0], len(run_ids), id_bytes)
    return header + packed_ids + padding + lengths.astype("<u2").tobytes()


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
