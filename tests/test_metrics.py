"""Tests for entitysam.eval.metrics (class-agnostic VEQ and STQ) against the official results."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from entitysam.eval.metrics import MetricsInputError, compute_stq, compute_veq, evaluate, format_table
from entitysam.eval.panoptic_io import pair_counts, read_id_png
from entitysam.data.synthetic.vipseg import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]


def _reference_dir() -> Path:
    env = os.environ.get("ENTITYSAM_SHARED_DIR")
    if env:
        return Path(env) / "reference" if (Path(env) / "reference").is_dir() else Path(env)
    return REPO.parent / "shared" / "reference"


def _fixture() -> Path:
    d = _reference_dir() / "metrics"
    if not (d / "expected.json").is_file():
        pytest.fail(f"missing metrics reference fixture {d} (set ENTITYSAM_SHARED_DIR)")
    return d


def _args(d: Path):
    return d / "pred", d / "gt" / "panomasksRGB", d / "gt" / "panoptic_gt_synth.json"


def _baseline():
    spec = importlib.util.spec_from_file_location("_metrics_baseline", REPO / "benchmarks" / "metrics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def expected():
    return json.loads((_fixture() / "expected.json").read_text())


@pytest.fixture(scope="module")
def fixture_results():
    return evaluate(*_args(_fixture()), workers=1)


# ----------------------------------------------------------------------------- official numbers


@pytest.mark.parametrize("k", ["0", "5", "15", "25", "35"])
def test_veq_window_matches_official(fixture_results, expected, k):
    exp = expected["veq"]["windows_k"][k]
    got = fixture_results["veq"]["windows"][int(k)]
    assert got["nframes"] == exp["nframes"]
    for key in ("vpq", "sq", "rq"):
        assert got[key] == pytest.approx(exp[key], abs=1e-6), key
    for key in ("tp", "fp", "fn"):
        assert got[key] == exp[key], key
    assert f"{got['iou_sum']:.1f}" == f"{exp['iou_sum']:.1f}"
    # the official txt file, rebuilt from our numbers
    line = "{:4d} | {:5.1f} {:5.1f} {:5.1f} {:6.1f} {:7d} {:7d} {:7d}".format(
        0, got["vpq"], got["sq"], got["rq"], got["iou_sum"], got["tp"], got["fp"], got["fn"]
    )
    assert line in expected["veq"]["files"][f"vpq-agnostic-{k}.txt"]


def test_veq_final_matches_official(fixture_results, expected):
    final = fixture_results["veq"]["final"]
    full = expected["veq"]["final_full_precision"]
    printed = expected["veq"]["final_printed_4dp"]
    for ours, theirs in (("vpq", "vpq_all"), ("sq", "vpq_sq"), ("rq", "vpq_rq")):
        assert final[ours] == pytest.approx(full[theirs], abs=1e-6)
        assert f"{final[ours]:.4f}" == f"{printed[theirs]:.4f}"


def test_stq_matches_official(fixture_results, expected):
    stq = fixture_results["stq"]
    for key in ("STQ", "AQ", "IoU"):
        assert stq[key] == pytest.approx(expected["stq"][key], abs=1e-6), key

    def printed(name):
        return [float(x) for x in expected["stq"][name].strip("[]").split()]

    assert stq["STQ_per_seq"] == pytest.approx(printed("STQ_per_seq_printed"), abs=1e-8)
    assert stq["AQ_per_seq"] == pytest.approx(printed("AQ_per_seq_printed"), abs=1e-8)
    assert str(stq["ID_per_seq"]) == expected["stq"]["ID_per_seq_printed"]
    assert str(stq["Length_per_seq"]) == expected["stq"]["Length_per_seq_printed"]
    assert [s["video_id"] for s in stq["per_sequence"]] == expected["videos"]


def test_separate_entry_points_and_table(fixture_results):
    args = _args(_fixture())
    assert compute_veq(*args, workers=1) == fixture_results["veq"]
    stq = compute_stq(*args, workers=1)
    assert {k: stq[k] for k in ("STQ", "AQ", "IoU")} == {k: fixture_results["stq"][k] for k in ("STQ", "AQ", "IoU")}
    table = format_table(fixture_results)
    assert "68.1683" in table and "0.538783" in table and "synth_c" in table


def test_baseline_reproduces_official(expected):
    """The benchmark's re-reading baseline is an independent check of the algorithm."""
    bl = _baseline()
    args = _args(_fixture())
    veq = bl.baseline_veq(*args)
    for k, exp in expected["veq"]["windows_k"].items():
        for key in ("vpq", "sq", "rq", "tp", "fp", "fn"):
            assert veq["windows"][int(k)][key] == pytest.approx(exp[key], abs=1e-6)
    stq = bl.baseline_stq(*args)
    for key in ("STQ", "AQ", "IoU"):
        assert stq[key] == pytest.approx(expected["stq"][key], abs=1e-6)


# ----------------------------------------------------------------------------- properties


def _assert_identical(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_identical(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_workers_1_and_2_identical(tmp_path, fixture_results):
    _assert_identical(evaluate(*_args(_fixture()), workers=2), fixture_results)
    ds = make_synthetic_dataset(tmp_path, num_videos=5, num_frames=9, width=96, height=64, seed=11)
    args = (ds.pred_dir, ds.gt_dir, ds.gt_json)
    _assert_identical(evaluate(*args, workers=2), evaluate(*args, workers=1))


def _quirky(ds, seed: int) -> None:
    """Edit a synthetic dataset's JSONs into legal-but-odd inputs the official code handles."""
    rng = np.random.default_rng(seed)
    gt = json.loads(ds.gt_json.read_text())
    pred = json.loads((ds.pred_dir / "pred.json").read_text())
    for v_gt, v_pred in zip(gt["annotations"], pred["annotations"]):
        for t, (fg, fp) in enumerate(zip(v_gt["annotations"], v_pred["annotations"])):
            segs = fg["segments_info"]
            things = [s for s in segs if s["id"] >= 2000 and s["iscrowd"] == 0]
            r = rng.random()
            name = gt["videos"][[v["video_id"] for v in gt["videos"]].index(v_gt["video_id"])]["images"][t]["file_name"]
            if things and r < 0.2:  # GT pixels whose id is never listed in the JSON
                segs.remove(things[0])
                png = ds.gt_dir / v_gt["video_id"] / name
                ids = read_id_png(png)
                ids[ids == things[0]["id"]] = 5555
                rgb = np.stack([ids & 255, (ids >> 8) & 255, ids >> 16], axis=-1).astype(np.uint8)
                Image.fromarray(rgb).save(png)
            elif things and r < 0.4:  # crowd flag that changes over time
                things[-1]["iscrowd"] = 1
            elif things and r < 0.55:  # duplicate entries of one id (areas add up)
                s = things[0]
                half = dict(s, area=s["area"] // 2)
                s["area"] -= half["area"]
                segs.append(half)
            elif r < 0.7:  # a GT segment listed but absent from the PNG
                segs.append({"id": 7777, "category_id": 3, "iscrowd": 0, "area": 40, "bbox": [0, 0, 1, 1]})
            p_png = read_id_png(ds.pred_dir / "pan_pred" / v_gt["video_id"] / name)
            n0 = int((p_png == 0).sum())
            if n0 and rng.random() < 0.3:  # the unpredicted area listed as segment 0
                fp["segments_info"].append({"id": 0, "category_id": 0, "iscrowd": 0, "area": n0, "bbox": [0, 0, 1, 1]})
    ds.gt_json.write_text(json.dumps(gt))
    (ds.pred_dir / "pred.json").write_text(json.dumps(pred))


@pytest.mark.parametrize(
    "seed,videos,frames,size,quirks",
    [(1, 3, 9, (96, 64), False), (2, 2, 12, (80, 48), False), (3, 3, 3, (64, 48), False), (4, 3, 10, (96, 64), True),
     (5, 2, 9, (64, 40), True)],
)
def test_matches_rereading_baseline(tmp_path, seed, videos, frames, size, quirks):
    ds = make_synthetic_dataset(tmp_path, num_videos=videos, num_frames=frames, width=size[0], height=size[1], seed=seed)
    if quirks:
        _quirky(ds, seed)
    args = (ds.pred_dir, ds.gt_dir, ds.gt_json)
    ours = evaluate(*args, workers=1)
    bl = _baseline()
    _assert_identical(ours["veq"], bl.baseline_veq(*args))
    base_stq = bl.baseline_stq(*args)
    _assert_identical({k: ours["stq"][k] for k in base_stq}, base_stq)


def test_fractional_gt_areas_match_the_rereading_baseline_bit_for_bit(tmp_path):
    """A float GT area is legal and the official script sums it frame after frame; the window sums
    were differences of float prefix sums, off in the last bits (VPQ 47.360870625904354 for 47.36087062590437)."""
    ds = make_synthetic_dataset(tmp_path, num_videos=2, num_frames=9, width=64, height=48, seed=7)
    gt = json.loads(ds.gt_json.read_text())
    for video in gt["annotations"]:
        for frame in video["annotations"]:
            for s in frame["segments_info"]:
                s["area"] += 0.1  # (over its pixel count: an IoU stays <= 1)
    ds.gt_json.write_text(json.dumps(gt))
    args = (ds.pred_dir, ds.gt_dir, ds.gt_json)
    _assert_identical(compute_veq(*args, workers=1), _baseline().baseline_veq(*args))


def test_pair_counts_matches_unique():
    rng = np.random.default_rng(0)
    for shape, n_ids, big in [((37, 53), 5, False), ((20, 30), 400, True), ((1, 1), 1, True), ((64, 64), 3, True)]:
        ids = rng.integers(0, 1 << 24, size=n_ids) if big else rng.integers(0, 5000, size=n_ids)
        g = ids[rng.integers(0, n_ids, size=shape)].astype(np.uint32)
        p = ids[rng.integers(0, n_ids, size=shape)].astype(np.uint32)
        p_packed = p | (rng.integers(0, 256, size=shape).astype(np.uint32) << 24)  # alpha byte is ignored
        keys, counts = np.unique(g.astype(np.int64) * (1 << 24) + p, return_counts=True)
        gi, pi, c = pair_counts(g, p_packed)
        np.testing.assert_array_equal(gi, keys >> 24)
        np.testing.assert_array_equal(pi, keys & 0xFFFFFF)
        np.testing.assert_array_equal(c, counts)


def test_read_id_png_modes(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    c = rgb.astype(np.int64)
    want = c[..., 0] + 256 * c[..., 1] + 65536 * c[..., 2]
    Image.fromarray(rgb).save(tmp_path / "a.png")
    rgba = np.concatenate([rgb, rng.integers(0, 256, size=(7, 9, 1), dtype=np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_id_png(tmp_path / "a.png"), want)
    np.testing.assert_array_equal(read_id_png(tmp_path / "b.png"), want)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "c.png")
    with pytest.raises(MetricsInputError, match="8-bit RGB"):
        read_id_png(tmp_path / "c.png")


def test_read_id_png_refuses_other_formats(tmp_path):
    """Only PNG files are id maps (the review's rule): a CMYK TIFF or a JPEG saved under a .png name
    is refused with the file's name, not decoded into made-up ids."""
    cmyk = np.random.default_rng(2).integers(0, 256, size=(5, 6, 4), dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "d.tif")
    Image.fromarray(cmyk[..., :3]).save(tmp_path / "e.png", format="JPEG")
    with pytest.raises(MetricsInputError, match=r"d\.tif: a TIFF image, not a PNG"):
        read_id_png(tmp_path / "d.tif")
    for packed in (False, True):
        with pytest.raises(MetricsInputError, match=r"e\.png: a JPEG image, not a PNG"):
            read_id_png(tmp_path / "e.png", packed=packed)


# ----------------------------------------------------------------------------- validation


@pytest.fixture
def broken(tmp_path):
    """A writable copy of the fixture and helpers to edit it."""
    src = _fixture()
    dst = tmp_path / "data"
    shutil.copytree(src / "gt", dst / "gt")
    shutil.copytree(src / "pred", dst / "pred")

    class Copy:
        root = dst
        args = _args(dst)
        pred_json = dst / "pred" / "pred.json"
        gt_json = dst / "gt" / "panoptic_gt_synth.json"

        def edit(self, path, fn):
            doc = json.loads(path.read_text())
            fn(doc)
            path.write_text(json.dumps(doc))

        def pred_png(self, video, name="00003.png"):
            return dst / "pred" / "pan_pred" / video / name

        def gt_png(self, video, name="00003.png"):
            return dst / "gt" / "panomasksRGB" / video / name

    return Copy()


def _frame(doc, video, t):
    return next(a for a in doc["annotations"] if a["video_id"] == video)["annotations"][t]


def test_error_png_id_not_in_json(broken):
    removed = {}

    def drop(doc):
        segs = _frame(doc, "synth_b", 3)["segments_info"]
        removed["id"] = segs.pop(1)["id"]

    broken.edit(broken.pred_json, drop)
    with pytest.raises(MetricsInputError, match=rf"synth_b.*00003\.png.*{removed['id']}.*PNG but not in pred\.json"):
        compute_veq(*broken.args, workers=1)
    with pytest.raises(MetricsInputError):
        evaluate(*broken.args, workers=2)  # raised in a worker process, same type
    compute_stq(*broken.args, workers=1)  # like the official STQ script: those pixels are ignored


def test_error_json_id_not_in_png(broken):
    broken.edit(
        broken.pred_json,
        lambda d: _frame(d, "synth_a", 3)["segments_info"].append(
            {"id": 4242, "category_id": 0, "iscrowd": 0, "area": 10, "bbox": [0, 0, 1, 1]}
        ),
    )
    with pytest.raises(MetricsInputError, match=r"synth_a.*00003\.png.*\[4242\].*not present in the predicted PNG"):
        evaluate(*broken.args, workers=1)


def test_error_area_mismatch(broken):
    def bump(doc):
        _frame(doc, "synth_c", 3)["segments_info"][0]["area"] += 1

    broken.edit(broken.pred_json, bump)
    with pytest.raises(MetricsInputError, match=r"synth_c.*00003\.png.*area"):
        compute_veq(*broken.args, workers=1)


def test_error_size_mismatch(broken):
    p = broken.pred_png("synth_a")
    Image.open(p).crop((0, 0, 150, 96)).save(p)
    for fn in (compute_veq, compute_stq):
        with pytest.raises(MetricsInputError, match=r"synth_a.*00003\.png.*160x96.*150x96"):
            fn(*broken.args, workers=1)


def test_error_frame_sizes_differ_within_video(broken):
    for p in (broken.pred_png("synth_a"), broken.gt_png("synth_a")):
        Image.open(p).crop((0, 0, 150, 96)).save(p)
    with pytest.raises(MetricsInputError, match=r"synth_a.*00003\.png.*differs"):
        compute_veq(*broken.args, workers=1)
    compute_stq(*broken.args, workers=1)  # per-frame metric: allowed, as in the official script


def test_error_missing_png(broken):
    broken.pred_png("synth_b", "00005.png").unlink()
    with pytest.raises(MetricsInputError, match=r"predicted PNG.*synth_b.*00005\.png.*not found"):
        evaluate(*broken.args, workers=1)


def test_error_missing_gt_png(broken):
    broken.gt_png("synth_c", "00011.png").unlink()
    with pytest.raises(MetricsInputError, match=r"GT PNG.*synth_c.*00011\.png.*not found"):
        compute_stq(*broken.args, workers=1)


def test_error_missing_video(broken):
    broken.edit(broken.pred_json, lambda d: d["annotations"].pop(1))
    with pytest.raises(MetricsInputError, match=r"synth_b.*no predictions"):
        compute_veq(*broken.args, workers=1)


def test_error_frame_count(broken):
    broken.edit(broken.pred_json, lambda d: d["annotations"][2]["annotations"].pop())
    with pytest.raises(MetricsInputError, match=r"synth_c.*12 GT frame annotations but 11"):
        compute_stq(*broken.args, workers=1)


def test_error_gt_images_vs_annotations(broken):
    broken.edit(broken.gt_json, lambda d: d["videos"][0]["images"].pop())
    with pytest.raises(MetricsInputError, match=r"synth_a.*9 images but 10 frame annotations"):
        evaluate(*broken.args, workers=1)


def test_error_missing_pred_json_and_keys(broken):
    broken.edit(broken.gt_json, lambda d: _frame(d, "synth_a", 2)["segments_info"][0].pop("iscrowd"))
    with pytest.raises(MetricsInputError, match=r"synth_a.*frame 2.*'iscrowd'"):
        compute_veq(*broken.args, workers=1)
    broken.pred_json.unlink()
    with pytest.raises(MetricsInputError, match=r"prediction JSON not found"):
        compute_stq(*broken.args, workers=1)


def test_error_invalid_iou(broken):
    def shrink(doc):  # GT JSON area far below the pixel count: IoU > 1 (official: assertion)
        for s in _frame(doc, "synth_a", 0)["segments_info"]:
            if s["id"] == 1001:
                s["area"] = 10

    broken.edit(broken.gt_json, shrink)
    with pytest.raises(MetricsInputError, match=r"synth_a.*00000\.png.*invalid IoU.*GT segment 1001"):
        compute_veq(*broken.args, workers=1)


def test_error_is_value_error():
    assert issubclass(MetricsInputError, ValueError)
    err = copy.deepcopy(MetricsInputError("x"))
    assert str(err) == "x"


@pytest.mark.parametrize("call, named", [
    (lambda m: m.compute_veq(None, "gt", "gt.json"), "pred_dir must be a path"),
    (lambda m: m.compute_stq("pred", 3, "gt.json"), "gt_dir must be a path"),
    (lambda m: m.evaluate("pred", "gt", None), "gt_json must be a path"),
    (lambda m: m.evaluate("", "gt", "gt.json"), "pred_dir is an empty path"),
    (lambda m: m.evaluate("missing", "missing", "missing.json", workers=0), "workers must be"),
])
def test_arguments_are_checked_before_any_file_is_read(call, named):
    """None or a number for a path was a bare TypeError from pathlib, "" read the current folder,
    and workers=0 was found only once every video had been read (here: not found first)."""
    from entitysam.eval import metrics

    with pytest.raises(ValueError, match=named):
        call(metrics)


# ----------------------------------------------------------------------------- unusable ground truth


def _null_annotations(c):
    c.edit(c.gt_json, lambda d: d["annotations"][0].__setitem__("annotations", None))


def _deep_json(c):
    c.gt_json.write_text("[" * 100000 + "]" * 100000)


def _duplicate_video(c):
    def dup(d):
        d["videos"].append(copy.deepcopy(d["videos"][0]))
        d["annotations"].append(copy.deepcopy(d["annotations"][0]))
    c.edit(c.gt_json, dup)


def _duplicate_frame(c):
    def dup(d):
        d["videos"][0]["images"][1] = copy.deepcopy(d["videos"][0]["images"][0])
    c.edit(c.gt_json, dup)


def _jpeg(path):
    def go(c):
        p = path(c)
        Image.open(p).convert("RGB").save(p, format="JPEG", quality=95)
    return go


def _empty_segments_info(c):
    c.edit(c.gt_json, lambda d: _frame(d, "synth_a", 3).__setitem__("segments_info", []))


UNUSABLE_GT = [
    (_null_annotations, r"annotations\[0\] \(video 'synth_a'\): 'annotations' is NoneType, not a list"),
    (_deep_json, r"GT JSON .*panoptic_gt_synth\.json is unreadable: JSON nested too deeply"),
    (_duplicate_video, r"GT JSON .*video 'synth_a' is listed twice"),
    (_duplicate_frame, r"GT JSON video 'synth_a' images\[1\]: frame '00000\.png' is listed twice"),
    (_jpeg(lambda c: c.gt_png("synth_b")), r"GT PNG .*synth_b.*00003\.png: a JPEG image, not a PNG"),
    (_jpeg(lambda c: c.pred_png("synth_c")), r"predicted PNG .*synth_c.*00003\.png: a JPEG image, not a PNG"),
    (_empty_segments_info,
     r"video 'synth_a' frame 00003\.png: the GT PNG holds segment id \d+, which that frame's GT JSON "
     r"segments_info does not list"),
]


@pytest.mark.parametrize("spoil,message", UNUSABLE_GT, ids=[f.__name__ if f.__name__ != "go" else f"jpeg{i}"
                                                             for i, (f, _) in enumerate(UNUSABLE_GT)])
def test_unusable_gt_is_one_message_and_exit_2(broken, capsys, spoil, message):
    """README "Metrics": unusable inputs give one line and exit 2, never a traceback or a score."""
    from entitysam.cli.metrics import main

    spoil(broken)
    with pytest.raises(MetricsInputError, match=message):
        evaluate(*broken.args, workers=1)
    capsys.readouterr()
    assert main([*map(str, broken.args), "--workers", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and re.search(message, err), err
