"""Hostile or mistaken dataset inputs: `entitysam metrics` and `entitysam train` data loading.

Each case is a mistake a user can make in a GT JSON, a PNG or a COCO panoptic dataset. The
promise (README "Reliability" / "Metrics", docs/training.md): one `error:` line naming the file
and exit code 2, never a traceback and never a score computed from made-up values.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from entitysam.data.synthetic.vipseg import make_synthetic_dataset
from entitysam.eval.metrics import MetricsInputError, evaluate, main


@pytest.fixture
def ds(tmp_path):
    return make_synthetic_dataset(tmp_path, num_videos=2, num_frames=3, width=64, height=48, seed=5)


def _edit(path, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def _gt_segment(doc, key, value, video=0, frame=0, seg=0):
    doc["annotations"][video]["annotations"][frame]["segments_info"][seg][key] = value


def _first_gt_png(ds):
    vid = json.loads(ds.gt_json.read_text())["videos"][0]
    return ds.gt_dir / vid["video_id"] / vid["images"][0]["file_name"]


def _write_png16(path, rgb8):
    """The same ids as a 16-bit-per-channel RGB PNG (each sample = the 8-bit value)."""
    h, w, _ = rgb8.shape
    raw = b"".join(b"\x00" + rgb8[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _png16(ds):
    png = _first_gt_png(ds)
    _write_png16(png, np.asarray(Image.open(png).convert("RGB")))


def _huge_int_text(ds):  # an integer over Python's 4300-digit limit: json.load raises a bare ValueError
    ds.gt_json.write_text(ds.gt_json.read_text().replace('"area": ', '"area": ' + "9" * 5000 + ", \"x\": ", 1))


def _gt(key, value):
    return lambda ds: _edit(ds.gt_json, lambda d: _gt_segment(d, key, value))


def _no_videos(ds):
    _edit(ds.gt_json, lambda d: (d.__setitem__("videos", []), d.__setitem__("annotations", [])))


HOSTILE = {
    # each was a traceback (OverflowError in the int64 id tables / the float area sums)
    "gt-id-2**70": (_gt("id", 2**70), r"segment id \d+ is outside 0\.\.16777215"),
    "gt-id-1e300": (_gt("id", 1e300), r"segment id 1e\+300 is outside 0\.\.16777215"),
    "gt-area-10**400": (_gt("area", 10**400), r"area over 10\*\*12 in the GT JSON, not a pixel count"),
    "gt-area-digits": (_huge_int_text, r"panoptic_gt.*is not valid JSON: Exceeds the limit"),
    # each was scored: a missed segment that no PNG can hold, or an IoU from an impossible area
    "gt-id-negative": (_gt("id", -3), r"segment id -3 is outside 0\.\.16777215"),
    "gt-id-over-24-bits": (_gt("id", 2**24 + 5), r"segment id 16777221 is outside"),
    "gt-area-inf": (_gt("area", float("inf")), r"area inf in the GT JSON, not a pixel count of this 3072-pixel"),
    "gt-area-nan": (_gt("area", float("nan")), r"area nan in the GT JSON"),
    "gt-area-negative": (_gt("area", -5), r"area -5 in the GT JSON"),
    "gt-area-over-frame": (_gt("area", 10**6), r"area 1000000 in the GT JSON"),
    # each was read as "not crowd" without a word (the official test is `iscrowd == 1`)
    "iscrowd-string": (_gt("iscrowd", "1"), r"iscrowd '1', not 0 or 1"),
    "iscrowd-2": (_gt("iscrowd", 2), r"iscrowd 2, not 0 or 1"),
    "iscrowd-nan": (_gt("iscrowd", float("nan")), r"iscrowd nan, not 0 or 1"),
    # was scored from the high byte of each 16-bit sample: other ids, other numbers
    "png-16-bit": (_png16, r"GT PNG .*\.png: a 16-bit-per-channel PNG"),
    # was a table of zeros and STQ nan with exit code 0
    "no-videos": (_no_videos, r"GT JSON lists no videos"),
    "video-without-frames": (
        lambda ds: _edit(ds.gt_json, lambda d: (d["videos"][0].__setitem__("images", []),
                                                d["annotations"][0].__setitem__("annotations", []))),
        r"video '\w+'\): lists no images"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_metrics_input_is_one_line_and_exit_2(ds, capsys, name):
    spoil, message = HOSTILE[name]
    spoil(ds)
    if name == "video-without-frames":  # pred.json must agree, or the frame count is what is refused
        _edit(ds.pred_dir / "pred.json", lambda d: d["annotations"][0].__setitem__("annotations", []))
    args = [str(ds.pred_dir), str(ds.gt_dir), str(ds.gt_json)]
    with pytest.raises(MetricsInputError, match=message):
        evaluate(*args, workers=1)
    capsys.readouterr()
    assert main([*args, "--workers", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and re.search(message, err), err


def test_legal_odd_values_are_still_scored(ds):
    """What the official scripts accept stays accepted: iscrowd as a bool or float, a float
    area within the frame, a GT segment listed but absent from the PNG (a missed segment)."""
    base = evaluate(ds.pred_dir, ds.gt_dir, ds.gt_json, workers=1)

    def odd(d):
        _gt_segment(d, "iscrowd", False)
        _gt_segment(d, "iscrowd", 0.0, seg=1)
        d["annotations"][1]["annotations"][0]["segments_info"].append(
            {"id": 7777, "category_id": 3, "iscrowd": 0, "area": 40.5, "bbox": [0, 0, 1, 1]})

    _edit(ds.gt_json, odd)
    got = evaluate(ds.pred_dir, ds.gt_dir, ds.gt_json, workers=1)
    assert got["veq"]["windows"][0]["fn"] == base["veq"]["windows"][0]["fn"] + 1


def _bomb_header(path, w=20000, h=20000):
    """A PNG whose header claims w x h pixels (over Pillow's decompression-bomb limit), one row of data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * (1 + 3 * w))) + chunk(b"IEND", b""))


def test_png_over_the_decompression_bomb_limit_is_one_line(ds, capsys):
    """Was a PIL.Image.DecompressionBombError traceback (it is no OSError)."""
    _bomb_header(_first_gt_png(ds))
    assert main([str(ds.pred_dir), str(ds.gt_dir), str(ds.gt_json), "--workers", "1"]) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and re.search(r"GT PNG .* cannot be read: .*exceeds limit", err), err


def test_fifo_under_a_frame_name_does_not_hang(ds):
    """A FIFO named like a predicted frame blocked Image.open forever; now: not a regular file."""
    import os
    import subprocess
    import sys

    vid = json.loads(ds.gt_json.read_text())["videos"][0]
    png = ds.pred_dir / "pan_pred" / vid["video_id"] / vid["images"][0]["file_name"]
    png.unlink()
    os.mkfifo(png)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    try:
        r = subprocess.run([sys.executable, "-m", "entitysam", "metrics", str(ds.pred_dir), str(ds.gt_dir),
                            str(ds.gt_json), "--workers", "1"], capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("entitysam metrics hung on a FIFO")
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert re.fullmatch(r"error: predicted PNG .*: not a regular file\n", r.stderr), r.stderr


@pytest.mark.parametrize("target", ["gt_json", "pred_json", "gt_png"])
def test_json_output_never_replaces_an_input(ds, capsys, target):
    """`--json gt.json` overwrote the ground truth with the scores (exit 0); now refused, untouched."""
    vid = json.loads(ds.gt_json.read_text())["videos"][0]
    path = {"gt_json": ds.gt_json, "pred_json": ds.pred_dir / "pred.json",
            "gt_png": ds.gt_dir / vid["video_id"] / vid["images"][0]["file_name"]}[target]
    before = path.read_bytes()
    assert main([str(ds.pred_dir), str(ds.gt_dir), str(ds.gt_json), "--workers", "1", "--json", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and re.fullmatch(r"error: --json .*: is (the input|a file of the input folder) .*\n", err), err
    assert path.read_bytes() == before
    assert main([str(ds.pred_dir), str(ds.gt_dir), str(ds.gt_json), "--workers", "1",
                 "--json", str(ds.pred_dir / "metrics.json")]) == 0  # beside pred.json is fine


# ----------------------------------------------------------------------------- training data


@pytest.fixture
def coco(tmp_path):
    from entitysam.data.synthetic.coco import make_synthetic_coco_panoptic

    make_synthetic_coco_panoptic(tmp_path / "coco", num_images=3, seed=2)
    return tmp_path / "coco"


def _coco_json(root):
    return root / "annotations" / "panoptic_train2017.json"


def _train(root, tmp_path, *extra):
    from entitysam.train import cli as train_cli

    return train_cli.main(["--config", "tiny-stage2", f"data.root={root}", f"output_dir={tmp_path / 'out'}",
                           "solver.max_iter=2", "--quiet", *extra])


TRAIN_DATA_MISTAKES = {
    # each was a traceback (JSONDecodeError, KeyError, ValueError of int(), TypeError)
    "invalid-json": (lambda r: _coco_json(r).write_text("{nope"), r"panoptic_train2017\.json: not valid JSON"),
    "no-annotations-key": (lambda r: _edit(_coco_json(r), lambda d: d.pop("annotations")),
                           r"no 'annotations' list"),
    "empty-annotations": (lambda r: _edit(_coco_json(r), lambda d: d.__setitem__("annotations", [])),
                          r"panoptic_train2017\.json: no annotations"),
    "annotation-without-file_name": (lambda r: _edit(_coco_json(r), lambda d: d["annotations"][1].pop("file_name")),
                                     r"annotations\[1\]: no 'file_name'"),
    "segment-id-string": (lambda r: _edit(_coco_json(r), lambda d: d["annotations"][1]["segments_info"][0]
                                          .__setitem__("id", "abc")),
                          r"annotations\[1\] segments_info\[0\]: segment id 'abc' is not an integer"),
    "images-not-a-list": (lambda r: _edit(_coco_json(r), lambda d: d.__setitem__("images", "x")),
                          r"'images' must be a list of objects"),
    # was trained with id 1 (int(1.5)) without a word
    "segment-id-fraction": (lambda r: _edit(_coco_json(r), lambda d: d["annotations"][1]["segments_info"][0]
                                            .__setitem__("id", 1.5)), r"segment id 1\.5 is not an integer"),
    # was dropped as a crowd segment (bool("0") is True)
    "iscrowd-string": (lambda r: _edit(_coco_json(r), lambda d: d["annotations"][1]["segments_info"][0]
                                       .__setitem__("iscrowd", "0")), r"segments_info\[0\]: iscrowd '0' is not 0 or 1"),
    # each was a FileNotFoundError traceback at the iteration that first drew the image (only the
    # first annotation's files were checked)
    "missing-image": (lambda r: (r / "train2017" / "000000000002.jpg").unlink(),
                      r"1 dataset file\(s\) missing: .*train2017/000000000002\.jpg"),
    "missing-png": (lambda r: (r / "panoptic_train2017" / "000000000003.png").unlink(),
                    r"1 dataset file\(s\) missing: .*panoptic_train2017/000000000003\.png"),
}


@pytest.mark.parametrize("name", list(TRAIN_DATA_MISTAKES))
def test_train_dataset_mistakes_are_one_line_and_exit_2_before_any_work(coco, tmp_path, capsys, name):
    spoil, message = TRAIN_DATA_MISTAKES[name]
    spoil(coco)
    assert _train(coco, tmp_path) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and re.search(message, err), err
    assert not (tmp_path / "out").exists()


def _corrupt_image(r):
    (r / "train2017" / "000000000002.jpg").write_bytes(b"garbage")


def _jpeg_panoptic(r):
    p = r / "panoptic_train2017" / "000000000001.png"
    Image.open(p).convert("RGB").save(p, format="JPEG")


def _other_size_image(r):
    p = r / "train2017" / "000000000001.jpg"
    Image.open(p).resize((50, 40)).save(p)


UNREADABLE_DURING_TRAINING = {
    "corrupt-image": (_corrupt_image, r"cannot read .*train2017/000000000002\.jpg: cannot identify image file"),
    # trained on without a word: JPEG artefacts are made-up ids, a stretched mask is another picture's
    "jpeg-panoptic": (_jpeg_panoptic, r"panoptic file .*000000000001\.png: a JPEG image of mode RGB, not an 8-bit"),
    "image-of-another-size": (_other_size_image, r"000000000001\.png is \d+x\d+ but its image .*000000000001\.jpg "
                                                 r"is 50x40"),
}


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("name", list(UNREADABLE_DURING_TRAINING))
def test_unreadable_file_met_during_training_is_one_line_and_exit_1(coco, tmp_path, capsys, name, workers):
    """Met in the data loader (also in a worker process): one line naming the file, no traceback."""
    spoil, message = UNREADABLE_DURING_TRAINING[name]
    spoil(coco)
    assert _train(coco, tmp_path, "solver.max_iter=3", f"data.num_workers={workers}") == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and re.search(message, err), err


# ----------------------------------------------------------------------------- resume


@pytest.fixture
def trained(coco, tmp_path):
    """A finished 2-iteration tiny-stage2 run in tmp_path/out (its model_final.pth)."""
    assert _train(coco, tmp_path) == 0
    return tmp_path / "out" / "model_final.pth"


def _resume_cases(ckpt, tmp_path):
    import torch

    torch.save({"model": {}}, tmp_path / "weights_only.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    return {
        # each was a traceback: FileNotFoundError, load_state_dict's RuntimeError, KeyError, TypeError
        "missing-path": ([f"resume={tmp_path / 'nope.pth'}"], 2, r"resume checkpoint not found: .*nope\.pth"),
        "other-model": ([f"resume={ckpt}", "model.name=demo"], 1,
                        r"resume checkpoint .*model_final\.pth: checkpoint does not fit the 'demo' model"),
        "not-a-training-checkpoint": ([f"resume={tmp_path / 'weights_only.pth'}"], 1,
                                      r"weights_only\.pth is not a training checkpoint of this package"),
        "a-list": ([f"resume={tmp_path / 'list.pth'}"], 1, r"list\.pth is not a training checkpoint"),
        "other-trainable-set": ([f"resume={ckpt}", "model.trainable=all"], 1,
                                r"model_final\.pth: its optimizer / scheduler state does not fit this run"),
    }


@pytest.mark.parametrize("name", ["missing-path", "other-model", "not-a-training-checkpoint", "a-list",
                                  "other-trainable-set"])
def test_unusable_resume_checkpoint_is_an_error_not_a_traceback(coco, tmp_path, trained, capsys, name):
    extra, code, message = _resume_cases(trained, tmp_path)[name]
    capsys.readouterr()
    assert _train(coco, tmp_path / "again", "solver.max_iter=3", *extra) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and re.search(message, err), err
    if name != "other-model":  # that one lists every differing key, as for `entitysam segment --checkpoint`
        assert len(err.strip().splitlines()) == 1, err


def test_auto_resume_with_its_checkpoint_gone_does_not_start_over(coco, tmp_path, trained, capsys):
    """output_dir/last_checkpoint naming a deleted file: the run silently restarted at iteration 0
    and overwrote the folder's checkpoints; now one line, exit 2, nothing touched."""
    out = trained.parent
    (out / "last_checkpoint").write_text("model_0000001.pth")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert _train(coco, tmp_path, "solver.max_iter=4") == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: .*last_checkpoint names the checkpoint .*model_0000001\.pth, which is not a file: "
                        r".*resume=never.*\n", err), err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


# ----------------------------------------------------------------------------- eval vipseg


def test_eval_vipseg_refuses_gt_names_its_predictions_cannot_have_before_inference(tmp_path, capsys):
    """GT file names "00000000.x.png": predictions are written as "00000000.png" (official rule)
    and the metrics looked for "00000000.x.png", so every video was segmented, then the scoring
    failed. Now refused before the output folder is made."""
    from entitysam import cli
    from entitysam.data.synthetic.vipseg import make_vipseg_dataset

    make_vipseg_dataset(tmp_path / "root", split="val", num_videos=1, num_frames=2)
    gt_json = tmp_path / "root" / "panoptic_gt_VIPSeg_val.json"

    def dotted(d):
        vid = d["videos"][0]["video_id"]
        for im in d["videos"][0]["images"]:
            new = im["file_name"].replace(".png", ".x.png")
            (tmp_path / "root" / "panomasksRGB" / vid / im["file_name"]).rename(
                tmp_path / "root" / "panomasksRGB" / vid / new)
            im["file_name"] = new

    _edit(gt_json, dotted)
    code = cli.main(["eval", "vipseg", "--data-root", str(tmp_path / "root"), "--model", "demo",
                     "-o", str(tmp_path / "out"), "--workers", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.fullmatch(r"error: 2 GT image file name\(s\) of the GT JSON .* are not '<name>\.png' without another "
                        r"dot or a folder: vid_000/00000000\.x\.png, vid_000/00000001\.x\.png .*--no-metrics.*\n", err), err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- VEQ memory


def _fresh_ids_video(frames, h=16, w=16):
    """A video whose every pixel has a new id in every frame (a prediction without tracking)."""
    from entitysam.eval.panoptic_io import pair_counts
    from entitysam.eval.veq import FrameVEQInput

    out = []
    for t in range(frames):
        ids = (np.arange(h * w, dtype=np.uint32) + 1 + t * h * w).reshape(h, w)
        g, p, c = pair_counts(ids, ids)
        segs = [{"id": int(i), "area": 1, "iscrowd": 0} for i in ids.ravel()]
        out.append(FrameVEQInput(f"{t:05d}", g, p, c, segs, [{"id": s["id"]} for s in segs]))
    return out


def _peak_bytes(fn):
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_veq_memory_grows_linearly_not_quadratically_with_video_length():
    """The per-video tables were [frames, pairs of the whole video]: with ids that change from frame
    to frame, 4x the frames took 16x the memory (40 frames of 64x48: 1 GB). Now by blocks of windows."""
    from entitysam.eval.veq import veq_video_stats

    short, long = _fresh_ids_video(32), _fresh_ids_video(128)
    res = {}
    peak_short = _peak_bytes(lambda: res.setdefault("short", veq_video_stats(short)))
    peak_long = _peak_bytes(lambda: res.setdefault("long", veq_video_stats(long)))
    assert res["long"][1] == (128 * 256.0, 128 * 256, 0, 0)  # every segment matched to itself, IoU 1
    assert res["long"][8] == (121 * 8 * 256.0, 121 * 8 * 256, 0, 0)
    assert peak_long < 3 * peak_short, (peak_short, peak_long)


def test_veq_over_block_boundaries_matches_the_rereading_baseline(tmp_path):
    """Videos longer than one block of windows give the numbers of the official re-reading algorithm."""
    import importlib.util

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("_metrics_baseline", repo / "benchmarks" / "metrics.py")
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    ds = make_synthetic_dataset(tmp_path, num_videos=2, num_frames=75, width=64, height=48, seed=9)

    def crowd(d):  # a crowd flag that changes over time, across a block boundary
        for t in range(28, 40):
            segs = d["annotations"][0]["annotations"][t]["segments_info"]
            things = [s for s in segs if s["id"] >= 2000]
            if things:
                things[0]["iscrowd"] = 1

    _edit(ds.gt_json, crowd)
    args = (ds.pred_dir, ds.gt_dir, ds.gt_json)
    assert evaluate(*args, workers=1)["veq"] == baseline.baseline_veq(*args)


# ----------------------------------------------------------------------------- synthetic data


def test_synthetic_coco_generator_never_replaces_a_real_dataset(tmp_path, capsys):
    """Pointed at a folder holding a COCO panoptic json (e.g. datasets/coco), the generator replaced
    annotations/panoptic_train2017.json and the train2017/0000000000NN.jpg images it names; and
    --num-images 0 or -3 wrote an empty dataset. Now refused (exit 2), nothing written."""
    from entitysam.data.synthetic.coco import main

    real = tmp_path / "coco"
    (real / "annotations").mkdir(parents=True)
    (real / "annotations" / "panoptic_train2017.json").write_text('{"info": {"description": "COCO 2017"}}')
    (real / "train2017").mkdir()
    (real / "train2017" / "000000000001.jpg").write_bytes(b"a real picture")
    before = {p: p.read_bytes() for p in real.rglob("*") if p.is_file()}
    for argv, message in (([str(real)], r"is not empty and does not hold a synthetic dataset"),
                          ([str(tmp_path / "new"), "--num-images", "0"], r"num_images must be a positive integer")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert re.fullmatch(rf"error: .*{message}.*\n", err), err
    assert {p: p.read_bytes() for p in real.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "new").exists()
    main([str(tmp_path / "synth"), "--num-images", "1"])  # new, then its own dataset again: fine
    main([str(tmp_path / "synth"), "--num-images", "2"])
    assert "wrote 2 images" in capsys.readouterr().out


def test_training_reads_a_16_bit_grayscale_image_as_inference_does(tmp_path):
    """convert("RGB") clipped 16-bit grayscale at 255 (a white picture, trained on without a word);
    now scaled to 8 bits like io.sources.images.image_to_rgb (what segmenting the file sees)."""
    from entitysam.io.sources.images import image_to_rgb
    from entitysam.train.data import load_rgb

    gray = np.linspace(0, 65535, 24 * 32).reshape(24, 32).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as im:
        want = image_to_rgb(im)
    got = load_rgb(str(tmp_path / "g.png"))
    np.testing.assert_array_equal(got, want)
    assert got.shape == (24, 32, 3) and 120 <= got[12, 16, 0] <= 136  # mid-gray, not white


def test_eval_vipseg_refuses_a_palette_gt_png_before_inference(tmp_path, capsys):
    """A palette (or gray) GT PNG passed the header check and failed the scoring, after every
    video was segmented; now refused before the output folder is made."""
    from entitysam import cli
    from entitysam.data.synthetic.vipseg import make_vipseg_dataset

    ds = make_vipseg_dataset(tmp_path / "root", split="val", num_videos=1, num_frames=2)
    png = sorted((ds.gt_dir / ds.videos[0]).iterdir())[1]
    Image.open(png).convert("P").save(png)
    code = cli.main(["eval", "vipseg", "--data-root", str(ds.root), "--model", "demo", "-o", str(tmp_path / "out"),
                     "--workers", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and re.fullmatch(rf"error: GT PNG {re.escape(str(png))}: expected an 8-bit RGB image .*"
                                      r"got mode 'P'.*--no-metrics.*\n", err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key,value,message", [
    ("area", float("nan"), r"has area nan in the GT JSON, not a pixel count"),
    ("iscrowd", "1", r"has iscrowd '1', not 0 or 1"),
    ("id", 2**30, r"segment id 1073741824 is outside 0\.\.16777215"),
])
def test_eval_vipseg_refuses_gt_values_the_metrics_refuse_before_inference(tmp_path, capsys, key, value, message):
    """Refused by the metrics (see HOSTILE above), they stopped `eval vipseg` only after every
    video was segmented; now before the output folder is made."""
    from entitysam import cli
    from entitysam.data.synthetic.vipseg import make_vipseg_dataset

    ds = make_vipseg_dataset(tmp_path / "root", split="val", num_videos=2, num_frames=2)
    _edit(ds.gt_json, lambda d: _gt_segment(d, key, value, video=1, frame=1))
    code = cli.main(["eval", "vipseg", "--data-root", str(ds.root), "--model", "demo", "-o", str(tmp_path / "out"),
                     "--workers", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and re.fullmatch(rf"error: GT JSON .* video 'vid_001' frame 1 segments_info\[0\]: .*{message}"
                                      r".*--no-metrics.*\n", err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["the-json-itself", "under-the-json"])
def test_train_output_dir_on_a_file_is_one_line_and_exit_2(coco, tmp_path, capsys, where):
    """output_dir naming a file (or a path under one) was a FileExistsError / NotADirectoryError
    traceback after the model was built; now refused first, the file untouched."""
    from entitysam.train import cli as train_cli

    js = _coco_json(coco)
    before = js.read_bytes()
    out = js if where == "the-json-itself" else js / "run"
    code = train_cli.main(["--config", "tiny-stage2", f"data.root={coco}", f"output_dir={out}", "solver.max_iter=1",
                           "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and re.fullmatch(r"error: output_dir '.*': .*(exists and is not a folder|is not a folder)\n",
                                      err), err
    assert js.read_bytes() == before


def test_eval_vipseg_refuses_gt_images_out_of_time_order(tmp_path, capsys):
    """Frames are segmented in sorted order, VEQ windows follow the GT JSON's list: a GT JSON listing
    a video's images out of order scored windows of non-consecutive frames (demo: VPQ 23.56 instead of
    23.30, exit 0). Now refused before inference."""
    from entitysam import cli
    from entitysam.data.synthetic.vipseg import make_vipseg_dataset

    ds = make_vipseg_dataset(tmp_path / "root", split="val", num_videos=1, num_frames=3)

    def shuffle(d):
        order = [1, 0, 2]
        d["videos"][0]["images"] = [d["videos"][0]["images"][i] for i in order]
        d["annotations"][0]["annotations"] = [d["annotations"][0]["annotations"][i] for i in order]

    _edit(ds.gt_json, shuffle)
    code = cli.main(["eval", "vipseg", "--data-root", str(ds.root), "--model", "demo", "-o", str(tmp_path / "out"),
                     "--workers", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "lists its images in another order than the frames' sorted file names (position 0: " \
        "'00000001', frame '00000000'); VEQ windows need them in time order" in err, err
    assert not (tmp_path / "out" / "pan_pred" / ds.videos[0]).exists()
