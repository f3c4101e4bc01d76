"""The run-length id maps of `entitysam view` (entitysam.review.idruns): exact round trip, the
16/32-bit id choice, runs that never cross a row, refusals."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from entitysam.errors import InvalidArgumentError
from entitysam.io.idpng import encode_ids
from entitysam.review.idruns import MAGIC, decode_id_runs, encode_id_runs, encode_rgb_id_runs


def header(data: bytes) -> tuple:
    return struct.unpack_from("<4s4I", data)


@pytest.mark.parametrize("big", [300, 70000])
def test_round_trip_is_exact(big):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 4, (13, 17)).astype(np.uint32)
    ids[2:5, 3:9] = big
    data = encode_id_runs(ids)
    decoded = decode_id_runs(data)
    assert decoded.dtype == np.uint32
    np.testing.assert_array_equal(decoded, ids)
    magic, width, height, _runs, id_bytes = header(data)
    assert (magic, width, height, id_bytes) == (MAGIC, 17, 13, 2 if big < 65536 else 4)


def test_each_row_starts_a_run_and_equal_neighbours_share_one():
    ids = np.array([[1, 1, 2], [2, 2, 2]], np.uint32)  # the 2 at the end of row 0 continues on row 1
    magic, width, height, runs, id_bytes = header(encode_id_runs(ids))
    assert runs == 3  # [1 1] [2] | [2 2 2]
    data = encode_id_runs(ids)
    offset = 20 + 4  # 3 uint16 ids padded to 8 bytes
    assert list(np.frombuffer(data, "<u2", 3, 20)) == [1, 2, 2]
    assert list(np.frombuffer(data, "<u2", 3, offset + 4)) == [2, 1, 3]


def test_a_uniform_1080p_map_is_one_run_a_row():
    data = encode_id_runs(np.zeros((1080, 1920), np.uint32))
    assert header(data)[3] == 1080 and len(data) < 20 + 1080 * 4 + 4


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 3)), np.zeros((0, 4)), np.zeros((1, 70000)), -np.ones((2, 2))])
def test_bad_maps_are_refused(bad):
    with pytest.raises(InvalidArgumentError):
        encode_id_runs(bad)


def test_bad_bytes_are_refused():
    data = encode_id_runs(np.ones((2, 2), np.uint32))
    with pytest.raises(InvalidArgumentError):
        decode_id_runs(b"XXXX" + data[4:])
    with pytest.raises(InvalidArgumentError):
        decode_id_runs(data[:4] + struct.pack("<I", 3) + data[8:])  # claims 3 columns: the runs cover 4 pixels


@pytest.mark.parametrize("big", [300, 70000, (1 << 24) - 1])
def test_runs_of_the_png_pixels_are_the_runs_of_the_ids(big):
    """encode_rgb_id_runs (what the server sends: only run starts decoded) == encode_id_runs of the ids."""
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 3, (11, 23)).astype(np.uint32) * 256  # equal R bytes, different G: runs must differ
    ids[3:8, 5:19] = big
    ids[0, :] = 7
    assert encode_rgb_id_runs(encode_ids(ids)) == encode_id_runs(ids)
    np.testing.assert_array_equal(decode_id_runs(encode_rgb_id_runs(encode_ids(ids))), ids)


def test_bad_rgb_is_refused():
    for bad in (np.zeros((2, 2), np.uint8), np.zeros((2, 2, 4), np.uint8), np.zeros((2, 2, 3), np.int32)):
        with pytest.raises(InvalidArgumentError):
            encode_rgb_id_runs(bad)
