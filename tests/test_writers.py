"""Output writers: panoptic PNG/JSON, entities.json (RLE), overlay.mp4, logits.npz, staged folders."""

from __future__ import annotations

import itertools
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from entitysam.errors import OutputError
from entitysam.io.entities import EntitiesWriter
from entitysam.io.idpng import decode_ids, encode_ids, read_id_png, write_id_png
from entitysam.io.logits import save_logits_npz
from entitysam.io.manifest import MANIFEST, read_manifest
from entitysam.io.overlay import OverlayWriter, entity_color
from entitysam.io.panoptic import PanopticWriter, frame_segments
from entitysam.io.staging import StagedOutput


def synthetic_maps(n=5, h=37, w=51, seed=0):
    """Blobs with ids 1..4; id 3 appears only in frames 1-2; frame 4 is empty."""
    rng = np.random.default_rng(seed)
    maps = np.zeros((n, h, w), np.int32)
    for t in range(n - 1):
        maps[t, 2 + t:15 + t, 3:20] = 1
        maps[t, 20:35, 25 + t:50] = 2
        if t in (1, 2):
            maps[t, 5:9, 30:34] = 3
        maps[t, rng.integers(0, h, 20), rng.integers(0, w, 20)] = 4
    return maps


def brute_segments(id_map, plus_one=True):
    out = []
    for sid in sorted(set(np.unique(id_map)) - {0}):
        ys, xs = np.nonzero(id_map == sid)
        e = 1 if plus_one else 0
        out.append({"id": int(sid), "area": int(ys.size),
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + e), int(ys.max() - ys.min() + e)]})
    return out


def frames_meta(n):
    return [SimpleNamespace(index=10 + 2 * t, name=f"f{t}", time=t / 5) for t in range(n)]


@given(st.lists(st.integers(0, (1 << 24) - 1), min_size=1, max_size=40))
@settings(max_examples=30, deadline=None)
def test_id_png_encoding_roundtrip(ids):
    arr = np.array(ids, dtype=np.int64).reshape(1, -1)
    rgb = encode_ids(arr)
    assert rgb.dtype == np.uint8
    rgb = rgb.astype(np.int64)
    np.testing.assert_array_equal(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2], arr)
    np.testing.assert_array_equal(decode_ids(encode_ids(arr)), arr)


def test_id_png_file_roundtrip(tmp_path):
    m = synthetic_maps()[1].copy()
    m[0, 0] = 70000
    write_id_png(tmp_path / "a.png", m)
    np.testing.assert_array_equal(read_id_png(tmp_path / "a.png"), m)


def test_frame_segments_both_bbox_conventions():
    for m in synthetic_maps():
        assert frame_segments(m) == brute_segments(m, True)
        assert frame_segments(m, "official") == brute_segments(m, False)
    assert frame_segments(np.zeros((4, 4), np.int32)) == []


def test_panoptic_and_entities_read_back(tmp_path):
    maps = synthetic_maps()
    meta = frames_meta(len(maps))
    pan = PanopticWriter(tmp_path / "panoptic", tmp_path / "panoptic.json", "vid")
    ents = EntitiesWriter(tmp_path / "entities.json", "vid")
    for t, (m, f) in enumerate(zip(maps, meta)):
        pan.add(t, f, m)
        ents.add(t, f, m)
    pan.close()
    ents.close([{"id": i, "score": 0.5 + i / 10, "query_index": 7 - i} for i in (4, 1, 2, 3)], fps=5.0)

    doc = json.loads((tmp_path / "panoptic.json").read_text())
    assert doc["categories"][0]["id"] == 1
    (video,) = doc["annotations"]
    assert video["video_id"] == "vid" and len(video["annotations"]) == len(maps)
    for t, (entry, m, f) in enumerate(zip(video["annotations"], maps, meta)):
        png = read_id_png(tmp_path / "panoptic" / entry["file_name"])
        np.testing.assert_array_equal(png, m)
        assert entry["image_id"] == f.name and entry["frame"] == t and entry["source_frame"] == f.index
        assert [{k: s[k] for k in ("id", "area", "bbox")} for s in entry["segments_info"]] == brute_segments(png)
        assert all(s["iscrowd"] == 0 and s["category_id"] == 1 for s in entry["segments_info"])

    doc = json.loads((tmp_path / "entities.json").read_text())
    assert doc["size"] == [37, 51] and doc["num_frames"] == len(maps) and doc["fps"] == 5.0
    assert [f["source_frame"] for f in doc["frames"]] == [f.index for f in meta]
    assert [e["id"] for e in doc["entities"]] == [1, 2, 3, 4]
    for e in doc["entities"]:
        present = [t for t in range(len(maps)) if (maps[t] == e["id"]).any()]
        assert [r["frame"] for r in e["frames"]] == present
        assert (e["first_frame"], e["last_frame"], e["num_frames"]) == (present[0], present[-1], len(present))
        assert e["area"] == int((maps == e["id"]).sum())
        assert e["score"] == pytest.approx(0.5 + e["id"] / 10) and e["query_index"] == 7 - e["id"]
        for r in e["frames"]:
            mask = maps[r["frame"]] == e["id"]
            rle = {"size": r["rle"]["size"], "counts": r["rle"]["counts"].encode()}
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
            assert r["area"] == int(mask.sum()) == int(mask_utils.area(rle))
            assert r["bbox"] == [int(v) for v in mask_utils.toBbox(rle)]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # temporary parts removed


def test_overlay_video(tmp_path):
    import av

    maps = synthetic_maps()
    yy, xx = np.mgrid[:37, :51]
    base = np.stack([xx * 5, yy * 6, (xx + yy) * 2], -1).astype(np.uint8)
    images = np.stack([base] * len(maps))
    ov = OverlayWriter(tmp_path / "o.mp4", fps=7.5, labels=True)
    for img, m in zip(images, maps):
        ov.add(img, m)
    ov.close()
    with av.open(str(tmp_path / "o.mp4")) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        assert float(s.average_rate) == pytest.approx(7.5)
    assert len(frames) == len(maps)
    assert frames[0].shape == (38, 52, 3)  # odd sizes padded to even for yuv420p
    # The empty last frame is the input image (up to compression).
    assert np.abs(frames[-1][:37, :51].astype(int) - images[-1]).mean() < 8
    assert np.abs(frames[0][:37, :51].astype(int) - images[0]).mean() > 15  # tinted


def test_entity_colours_distinct_and_stable():
    cols = [np.array(entity_color(i), float) for i in range(1, 51)]
    assert entity_color(7) == entity_color(7)
    dmin = min(np.linalg.norm(a - b) for a, b in itertools.combinations(cols[:12], 2))
    assert dmin > 25


def test_logits_npz_from_memmap(tmp_path):
    mm = np.lib.format.open_memmap(tmp_path / "l.npy", "w+", np.float32, (3, 2, 4, 4))
    mm[:] = np.arange(mm.size, dtype=np.float32).reshape(mm.shape)
    (tmp_path / "x").mkdir()
    out = save_logits_npz(tmp_path / "x" / "logits", mm, np.array([0.1, 0.2]), source_frame=np.arange(3))
    assert out.name == "logits.npz"
    with np.load(out) as z:
        np.testing.assert_array_equal(z["logits"], mm)
        assert z["scores"].tolist() == pytest.approx([0.1, 0.2]) and z["source_frame"].tolist() == [0, 1, 2]
    assert [p.name for p in out.parent.iterdir()] == ["logits.npz"]


def test_staged_output_commit_refuse_overwrite(tmp_path):
    final = tmp_path / "out" / "vid"
    with StagedOutput(final) as s:
        (s.path / "panoptic.json").write_text("1")
        assert not final.exists()
        s.commit({"video": "vid"})
    assert (final / "panoptic.json").read_text() == "1" and read_manifest(final)["video"] == "vid"
    with pytest.raises(OutputError, match="already holds results: pass overwrite=True"):
        StagedOutput(final)
    with StagedOutput(final, overwrite=True) as s:
        (s.path / "entities.json").write_text("2")
        assert (final / "panoptic.json").exists()  # the old result stays until the new one is complete
        s.commit({"video": "vid"})
    assert sorted(p.name for p in final.iterdir()) == ["entities.json", MANIFEST]  # (names a result holds)
    assert sorted(p.name for p in final.parent.iterdir()) == ["vid"]
    (tmp_path / "out" / "other").mkdir()
    with pytest.raises(OutputError, match="already exists \\(not a complete entitysam result\\)"):
        StagedOutput(tmp_path / "out" / "other")


def test_staged_output_failure_leaves_nothing(tmp_path):
    final = tmp_path / "vid"
    with pytest.raises(RuntimeError):
        with StagedOutput(final) as s:
            (s.path / "panoptic").mkdir()
            (s.path / "panoptic" / "0.png").write_bytes(b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_stale_partial_of_dead_process_is_removed(tmp_path):
    """Staging happens only under the result's lock, which StagedOutput holds: every other
    staging folder of the result is a killed run's, also one whose pid is alive here (on an
    output folder shared by several machines the pid may be another machine's; 9c9673f)."""
    stale = tmp_path / ".vid.partial-999999999-abcd"
    stale.mkdir()
    alive_pid = tmp_path / f".vid.partial-{os.getppid()}-abcd"
    alive_pid.mkdir()
    s = StagedOutput(tmp_path / "vid")
    assert not stale.exists() and not alive_pid.exists()
    s.abort()


def test_unwritable_output(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot write the output folder"):
        StagedOutput(tmp_path / "file" / "vid")


def _overlay_per_pixel(image, ids, alpha=0.5):
    """The overlay's definition, written out pixel by pixel in float32 (the reference)."""
    from entitysam.io.overlay import entity_color

    out = image.astype(np.float32)
    h, w = ids.shape
    for y in range(h):
        for x in range(w):
            i = int(ids[y, x])
            if i == 0:
                continue
            colour = np.array(entity_color(i), dtype=np.float32)
            border = any(0 <= yy < h and 0 <= xx < w and ids[yy, xx] != i
                         for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)))
            out[y, x] = colour * 0.6 if border else out[y, x] * (1 - alpha) + colour * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(6))
def test_overlay_pixels_are_the_per_pixel_definition(seed):
    from entitysam.io.overlay import render_overlay

    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 24, 2)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ids = rng.integers(0, 5, (h, w)) * rng.choice([1, 1000, 2**24 // 5])
    alpha = float(rng.choice([0.5, 0.3, 0.8]))
    assert np.array_equal(render_overlay(image, ids, alpha), _overlay_per_pixel(image, ids, alpha))


def test_overlay_of_the_largest_id_is_quick():
    """Ids are 24-bit: 2**24 - 1 is valid. The overlay once built a colour table of every id up to
    the largest, in Python: about a minute per frame for that id."""
    import time

    from entitysam.io.overlay import entity_color, render_overlay

    image = np.full((48, 64, 3), 100, dtype=np.uint8)
    ids = np.zeros((48, 64), dtype=np.int32)
    ids[10:30, 10:40] = 2**24 - 1
    t = time.process_time()  # (CPU time: a loaded machine's waits are not the overlay's)
    out = render_overlay(image, ids)
    assert time.process_time() - t < 2.0
    colour = np.array(entity_color(2**24 - 1), dtype=np.float32)
    assert np.array_equal(out[20, 20], np.clip(np.float32(100) * 0.5 + colour * 0.5 + 0.5, 0, 255).astype(np.uint8))
    assert np.array_equal(out[10, 20], np.clip(colour * np.float32(0.6) + 0.5, 0, 255).astype(np.uint8))
    assert np.array_equal(out[0, 0], image[0, 0])


@pytest.mark.parametrize("scale", [1, 1000, 2**24 // 6])
@pytest.mark.parametrize("bbox", ["coco", "official"])
def test_frame_segments_any_ids(scale, bbox):
    """Every id present, in increasing order, with its area and box, whatever the ids' size
    (24-bit ids are valid; a loop over every id up to the largest took seconds a frame)."""
    import time

    rng = np.random.default_rng(scale)
    ids = rng.integers(0, 6, (40, 50)) * scale
    ids[ids == 5 * scale] = 2**24 - 1 if scale > 1 else 5
    t = time.process_time()  # (CPU time: a loaded machine's waits are not frame_segments')
    got = frame_segments(ids, bbox)
    assert time.process_time() - t < 1.0
    want = []
    for i in sorted(set(ids.ravel().tolist()) - {0}):
        ys, xs = np.nonzero(ids == i)
        extra = 0 if bbox == "coco" else 1
        want.append({"id": i, "area": len(ys), "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1 - extra),
                                                         int(ys.max() - ys.min() + 1 - extra)]})
    assert got == want
