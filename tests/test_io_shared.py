"""The shared id-PNG codec and atomic writes (entitysam.io.idpng, entitysam.io.atomic)."""

import os

import numpy as np
import pytest

from entitysam.io.atomic import atomic_file, write_bytes_atomic, write_json_atomic
from entitysam.io.idpng import MAX_ID, decode_ids, encode_ids, read_id_png, write_id_png


def test_id_png_round_trip_covers_all_three_bytes(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, MAX_ID + 1, size=(17, 23), dtype=np.int64)
    ids[0, :4] = [0, 255, 256, MAX_ID]
    write_id_png(tmp_path / "a.png", ids)
    assert np.array_equal(read_id_png(tmp_path / "a.png"), ids)
    rgb = encode_ids(ids)
    assert rgb[0, 2].tolist() == [0, 1, 0] and rgb[0, 3].tolist() == [255, 255, 255]
    rgba = np.concatenate([rgb, np.full((*ids.shape, 1), 7, np.uint8)], axis=-1)
    assert np.array_equal(decode_ids(rgba), ids)  # an alpha channel is ignored


@pytest.mark.parametrize("bad", [-1, MAX_ID + 1])
def test_id_png_refuses_ids_out_of_range(bad):
    with pytest.raises(ValueError, match="2\\*\\*24"):
        encode_ids(np.array([[bad]]))


def test_atomic_write_leaves_old_content_and_no_temporary_on_failure(tmp_path):
    target = tmp_path / "x.json"
    write_json_atomic(target, {"a": 1}, durable=True)
    assert target.read_text() == '{"a":1}\n'
    with pytest.raises(ValueError):
        write_json_atomic(target, {"a": float("nan")})
    assert target.read_text() == '{"a":1}\n'
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["x.json"]


def test_atomic_file_streams_then_renames_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "p.png"
    with atomic_file(target) as f:
        write_id_png(f, np.array([[1, 2], [3, 300]]))  # a file object, as online mode writes its PNGs
        assert not target.exists()  # nothing visible until the block ends
    assert read_id_png(target).tolist() == [[1, 2], [3, 300]]
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "t.txt", "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert sorted(os.listdir(tmp_path)) == ["p.png"]
