"""Hostile or mistaken dataset inputs: `entitysam metrics` and `entitysam eval vipseg`
(training data: tests/test_hostile_training_data.py).

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
from entitysam.cli.metrics import main
from entitysam.eval.metrics import MetricsInputError, evaluate


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


def _over_the_json_limit(path):
    """A sparse file one byte over the limit: no disk used, nothing to read if it is sized first."""
    from entitysam.jsonio import MAX_JSON_BYTES

    with open(path, "r+b") as f:
        f.truncate(MAX_JSON_BYTES + 1)


HOSTILE = {
    # each was read whole (and decoded: twice its size in memory) before anything looked at it
    "gt-json-over-the-limit": (lambda ds: _over_the_json_limit(ds.gt_json),
                               r"GT JSON \S+ is 1073741825 bytes, more than the 1 GiB a JSON file read here may hold"),
    "pred-json-over-the-limit": (lambda ds: _over_the_json_limit(ds.pred_dir / "pred.json"),
                                 r"prediction JSON \S+pred\.json is 1073741825 bytes, more than the 1 GiB"),
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


def test_a_scoring_worker_killed_is_one_line_and_exit_1(ds, capsys, monkeypatch):
    """A process of the scoring pool killed (by the out-of-memory killer, with many --workers) was a
    BrokenProcessPool traceback; `eval vipseg` said one line."""
    from concurrent.futures.process import BrokenProcessPool

    import entitysam.eval.metrics as metrics

    def killed(*args, **kwargs):
        raise BrokenProcessPool("A process in the process pool was terminated abruptly while the future was "
                                "running or pending.")

    monkeypatch.setattr(metrics, "evaluate", killed)
    assert main([str(ds.pred_dir), str(ds.gt_dir), str(ds.gt_json), "--workers", "2"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == ("error: a scoring worker process ended abruptly (killed, e.g. for want of memory); "
                                 "fewer --workers take less memory\n"), err


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
    # (a GT JSON of another resolution, as VIPSeg's original-size one beside the 720P PNGs)
    ("area", 10**6, r"has area 1000000 in the GT JSON, not a pixel count of this 3072-pixel frame"),
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


def test_eval_vipseg_refuses_frames_of_another_size_than_the_gt_before_inference(tmp_path, capsys):
    """Predictions have their frames' size: frames of another size than the GT PNGs (VIPSeg's
    original frames beside the 720P PNGs) were segmented, every video, and the scoring then refused
    them ("GT PNG is 64x48 but the predicted PNG is 128x96", exit 2). Now refused before inference;
    a frame turned upright by its EXIF orientation has the size it is shown at."""
    from entitysam import cli
    from entitysam.data.synthetic.vipseg import make_vipseg_dataset

    ds = make_vipseg_dataset(tmp_path / "root", split="val", num_videos=2, num_frames=2)
    for p in sorted((ds.root / "images" / ds.videos[0]).iterdir()):  # stored on its side, shown upright
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.open(p).convert("RGB").transpose(Image.Transpose.ROTATE_90).save(p, exif=exif.tobytes())
    for p in sorted((ds.root / "images" / ds.videos[1]).iterdir()):
        im = Image.open(p)
        im.resize((im.width * 2, im.height * 2)).save(p)
    out = tmp_path / "out"
    code = cli.main(["eval", "vipseg", "--data-root", str(ds.root), "--model", "demo", "-o", str(out),
                     "--workers", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"error: 1 video(s) cannot be evaluated:\n  video '{ds.videos[1]}': its frames are "
                                 "128x96 (WxH, frame 00000000.jpg), the size of its predictions, but 2 of its 2 GT "
                                 "PNGs are not (00000000.png: 64x48); the metrics need them of one size\n"), err
    assert not any((out / "parts").iterdir())


# ----------------------------------------------------------------------------- names in the GT JSON


def _gt_file_name(value):
    return lambda ds: _edit(ds.gt_json, lambda d: d["videos"][0]["images"][0].__setitem__("file_name", value))


def _gt_video_id(value):
    def spoil(ds):
        for path in (ds.gt_json, ds.pred_dir / "pred.json"):
            _edit(path, lambda d: [e.__setitem__("video_id", value) for e in d["annotations"][:1]])
        _edit(ds.gt_json, lambda d: d["videos"][0].__setitem__("video_id", value))
    return spoil


HOSTILE_NAMES = {
    # each was a ValueError / UnicodeEncodeError traceback from os.stat
    "file-name-nul": (_gt_file_name("a\x00b.png"), r"images\[0\]: file_name 'a\\x00b\.png' cannot be a file name"),
    "file-name-surrogate": (_gt_file_name("a\ud800.png"), r"images\[0\]: file_name 'a\\ud800\.png' cannot be"),
    "video-id-surrogate": (_gt_video_id("v\ud800"), r"videos\[0\]: video_id 'v\\ud800' cannot be a file name"),
    # read a file outside the GT folder, and the same file as the prediction
    "file-name-absolute": (lambda ds: _gt_file_name(str(_first_gt_png(ds)))(ds),
                           r"images\[0\]: file_name '/.*\.png' names a file outside its folder"),
    "file-name-dotdot": (_gt_file_name("../vid_001/00000.png"), r"file_name '\.\./vid_001/00000\.png' names a file "
                                                               r"outside its folder"),
}


@pytest.mark.parametrize("name", list(HOSTILE_NAMES))
def test_gt_json_names_that_are_no_file_in_their_folder_are_one_line(ds, name):
    import os
    import subprocess
    import sys

    spoil, message = HOSTILE_NAMES[name]
    spoil(ds)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    r = subprocess.run([sys.executable, "-m", "entitysam", "metrics", str(ds.pred_dir), str(ds.gt_dir),
                        str(ds.gt_json), "--workers", "1", "--metric", "stq"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert re.fullmatch(r"error: GT JSON .*" + message + r".*\n", r.stderr), r.stderr


def _split_not_utf8(ds):
    ds.split_file.write_bytes(b"vid_000\n\xff\xfe\n")


@pytest.mark.parametrize("spoil,message", [
    # each was a traceback from load_plan (UnicodeDecodeError; TypeError: 'int' object is not iterable)
    (_split_not_utf8, r"the split file .*val\.txt is not UTF-8 text \(byte 8: b'\\xff'\); it lists one video id "
                      r"per line"),
    (lambda ds: _edit(ds.gt_json, lambda d: d["videos"][0].__setitem__("images", 5)),
     r"GT JSON .* videos\[0\] \(video 'vid_000'\): 'images' is int, not a list"),
    (lambda ds: _edit(ds.gt_json, lambda d: d["videos"][1].__setitem__("images", True)),
     r"GT JSON .* videos\[1\] \(video 'vid_001'\): 'images' is bool, not a list"),
], ids=["split-file-not-utf8", "images-int", "images-bool"])
def test_eval_vipseg_unreadable_video_lists_are_one_line(tmp_path, capsys, spoil, message):
    from entitysam import cli
    from entitysam.data.synthetic.vipseg import make_vipseg_dataset

    ds = make_vipseg_dataset(tmp_path / "root", split="val", num_videos=2, num_frames=2)
    spoil(ds)
    code = cli.main(["eval", "vipseg", "--data-root", str(ds.root), "--model", "demo", "-o", str(tmp_path / "out"),
                     "--workers", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and re.fullmatch(rf"error: {message}\n", err), err
    assert not (tmp_path / "out").exists()


def test_png_declaring_over_50_megapixels_is_refused_before_decoding(ds):
    """12000x12000 (under Pillow's error limit): Pillow's DecompressionBombWarning printed two lines,
    then the PNG was decoded (a real 420 KB bomb: 1.6 GB per worker). Now one line, nothing decoded."""
    import os
    import subprocess
    import sys

    png = _first_gt_png(ds)
    _bomb_header(png, 12000, 12000)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    r = subprocess.run([sys.executable, "-m", "entitysam", "metrics", str(ds.pred_dir), str(ds.gt_dir),
                        str(ds.gt_json), "--workers", "1"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert re.fullmatch(rf"error: GT PNG .* {re.escape(str(png))} is 12000x12000 = 144\.0 megapixels, over the limit "
                        r"of 50 megapixels: refused before decoding it\n", r.stderr), r.stderr


# ----------------------------------------------------------------------------- split file not a file


@pytest.mark.parametrize("given", [False, True], ids=["found-in-data-root", "split-file-option"])
def test_eval_vipseg_refuses_a_split_file_that_is_a_fifo(tmp_path, capsys, given):
    """DATA_ROOT/val.txt as a FIFO was skipped: every video of the GT JSON was evaluated instead of
    the split's (exit 0); --split-file FIFO said "split file not found". Now refused, never waited on."""
    import os

    from entitysam import cli
    from entitysam.data.synthetic.vipseg import make_vipseg_dataset

    ds = make_vipseg_dataset(tmp_path / "root", split="val", num_videos=2, num_frames=2)
    fifo = ds.split_file if not given else tmp_path / "subset.txt"
    if not given:
        fifo.unlink()
    os.mkfifo(fifo)
    extra = ["--split-file", str(fifo)] if given else []
    code = cli.main(["eval", "vipseg", "--data-root", str(ds.root), "--model", "demo", "-o", str(tmp_path / "out"),
                     "--workers", "1", "-q", *extra])
    err = capsys.readouterr().err
    assert code == 2 and re.fullmatch(rf"error: the split file {re.escape(str(fifo))} is not a regular file; it lists "
                                      r"one video id per line\n", err), err
    assert not (tmp_path / "out").exists()


def _frame_folder_loop(ds):
    folder = ds.images_dir / ds.videos[1]
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    folder.symlink_to(folder.name)


def _link_loop(path):
    import shutil

    shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.symlink_to(path.name)


def _gt_png_fifo(ds):
    import os

    png = sorted((ds.gt_dir / ds.videos[1]).iterdir())[1]
    png.unlink()
    os.mkfifo(png)


@pytest.mark.parametrize("spoil,message", [
    # each was "frame folder not found" / "are missing": the file is there, something else is wrong
    (_frame_folder_loop, r"error: 1 video\(s\) cannot be evaluated:\n  video 'vid_001': cannot list "
                         r".*/images/vid_001: Too many levels of symbolic links\n"),
    (_gt_png_fifo, r"error: GT PNG .*/panomasksRGB/vid_001/\w+\.png: not a regular file: .*--no-metrics.*\n"),
    # "frames folder not found", "GT PNG folder not found", "2 GT PNG(s) ... are missing", and
    # "GT PNG cannot be read: PATH ([Errno 40] Too many levels of symbolic links: 'PATH')"
    (lambda ds: _link_loop(ds.images_dir), r"error: cannot list \S*/images: Too many levels of symbolic links "
                                           r"\(frames folder: expected images/<video>/\*\.jpg in the data root\)\n"),
    (lambda ds: _link_loop(ds.gt_dir), r"error: cannot list \S*/panomasksRGB: Too many levels of symbolic links "
                                       r"\(GT PNG folder: .*\): use --gt-dir DIR .*--no-metrics.*\n"),
    (lambda ds: _link_loop(ds.gt_dir / ds.videos[1]), r"error: 1 GT PNG folder\(s\) cannot be read:\n  video "
                                                      r"'vid_001': cannot list \S*/panomasksRGB/vid_001: Too many "
                                                      r"levels of symbolic links\n.*--no-metrics.*\n"),
    (lambda ds: _link_loop(sorted((ds.gt_dir / ds.videos[1]).iterdir())[1]),
     r"error: cannot read GT PNG \S*/panomasksRGB/vid_001/\w+\.png: Too many levels of symbolic links: use "
     r"--no-metrics.*\n"),
], ids=["frame-folder-link-loop", "gt-png-fifo", "images-link-loop", "gt-dir-link-loop", "gt-video-folder-link-loop",
        "gt-png-link-loop"])
def test_eval_vipseg_names_the_real_cause_of_an_unusable_input(tmp_path, capsys, spoil, message):
    from entitysam import cli
    from entitysam.data.synthetic.vipseg import make_vipseg_dataset

    ds = make_vipseg_dataset(tmp_path / "root", split="val", num_videos=2, num_frames=2)
    spoil(ds)
    code = cli.main(["eval", "vipseg", "--data-root", str(ds.root), "--model", "demo", "-o", str(tmp_path / "out"),
                     "--workers", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and re.fullmatch(message, err), err


# ----------------------------------------------------------------------------- names on stdout


def test_stq_table_keeps_a_video_id_with_a_line_break_on_one_row(ds, capsys):
    """A video_id "vid\\n\\x1b[2J" (a legal folder name) printed its STQ row over two lines, the
    second starting with a terminal escape that clears the screen; now escaped, one row per video."""
    gt = json.loads(ds.gt_json.read_text())
    old = gt["videos"][0]["video_id"]
    new = old + "\n\x1b[2J"
    for folder in (ds.gt_dir, ds.pred_dir / "pan_pred"):
        (folder / old).rename(folder / new)
    for path in (ds.gt_json, ds.pred_dir / "pred.json"):
        _edit(path, lambda d: [e.__setitem__("video_id", new) for e in d["annotations"] if e["video_id"] == old])
    _edit(ds.gt_json, lambda d: d["videos"][0].__setitem__("video_id", new))
    assert main([str(ds.pred_dir), str(ds.gt_dir), str(ds.gt_json), "--workers", "1", "--metric", "stq"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\s+\d+  ", line)]
    assert len(rows) == 2 and all(row.endswith(" 3") for row in rows) and "\x1b" not in out, out
    assert rows[0].split()[1].startswith(old + "\\n\\x1b[2J"), out


@pytest.mark.parametrize("reader", ["check_png", "read_id_png"])
def test_a_png_swapped_for_a_pipe_after_its_check_is_no_hang(tmp_path, monkeypatch, reader):
    """The metrics checked that a PNG was a regular file, then opened it by name: a named pipe put
    in its place in between made the open wait for a writer for ever (the scoring hung)."""
    import os

    from _blocking import release_readers, swap_for_a_pipe, within
    from entitysam.eval import panoptic_io
    from entitysam.io.idpng import write_id_png

    path = tmp_path / "00000001.png"
    write_id_png(path, np.arange(12, dtype=np.int32).reshape(3, 4))
    real_stat, real_open = os.stat, os.open
    swapped = []

    def swap_after(fn):
        def call(p, *args, **kwargs):
            out = fn(p, *args, **kwargs)
            if not swapped and isinstance(p, (str, os.PathLike)) and os.fspath(p) == str(path):
                swapped.append(fn.__name__)
                monkeypatch.undo()  # the swap below calls os itself
                swap_for_a_pipe(path)  # right after the program's first look at it
            return out
        return call

    monkeypatch.setattr(os, "stat", swap_after(real_stat))
    monkeypatch.setattr(os, "open", swap_after(real_open))
    try:
        out = within(30, getattr(panoptic_io, reader), path, what="GT PNG")
    except MetricsInputError as err:
        assert "not a regular file" in str(err)
    else:  # what it opened was still the file: it read the file's ids
        assert reader == "check_png" or out.tolist() == np.arange(12).reshape(3, 4).tolist()
    finally:
        release_readers(path)
    assert swapped, "the program never looked at the file"


# ----------------------------------------------------------------------------- a JSON input not a file


@pytest.mark.parametrize("which", ["gt_json", "pred_json"])
def test_a_json_input_that_is_a_fifo_is_named_as_such(ds, capsys, which):
    """A named pipe in the GT JSON's or pred.json's place was called "not found" (is_file() says
    False of it), and one swapped in after that check hung the read; now it is opened once without
    waiting and refused as what it is."""
    import os

    path = ds.gt_json if which == "gt_json" else ds.pred_dir / "pred.json"
    path.unlink()
    os.mkfifo(path)
    assert main([str(ds.pred_dir), str(ds.gt_dir), str(ds.gt_json), "--workers", "1"]) == 2
    out, err = capsys.readouterr()
    what = "GT JSON" if which == "gt_json" else "prediction JSON"
    assert out == "" and re.fullmatch(rf"error: {what} {re.escape(str(path))} is not a regular file\n", err), err


def test_eval_vipseg_gt_json_option_naming_a_fifo_is_named_as_such(tmp_path, capsys):
    import os

    from entitysam import cli
    from entitysam.data.synthetic.vipseg import make_vipseg_dataset

    ds = make_vipseg_dataset(tmp_path / "root", split="val", num_videos=2, num_frames=2)
    fifo = tmp_path / "gt.json"
    os.mkfifo(fifo)
    code = cli.main(["eval", "vipseg", "--data-root", str(ds.root), "--gt-json", str(fifo), "--model", "demo",
                     "-o", str(tmp_path / "out"), "--workers", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and re.fullmatch(rf"error: GT JSON {re.escape(str(fifo))} is not a regular file\n", err), err
    assert not (tmp_path / "out").exists()


def test_a_small_json_reads_under_a_memory_cap(tmp_path):
    """Every JSON read asked for a buffer of the whole size limit (1 GiB) before reading a byte: under
    a cap on virtual memory (`ulimit -v`, as batch clusters set) a 9-byte file was a MemoryError."""
    import os
    import subprocess
    import sys

    (tmp_path / "small.json").write_text('{"a": 1}')
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (900 * 2**20, 900 * 2**20)); "
            "from entitysam.jsonio import load_file; from entitysam.errors import EntitySAMError; "
            "print(load_file(sys.argv[1], 'test json', EntitySAMError))")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "small.json")], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "{'a': 1}", run.stderr[-500:]
