"""A user's mistake gives one message and the documented exit code: no traceback, no silently
wrong result. Command lines run in a subprocess (`python -m entitysam ...`), as a user runs them;
the Python API raises EntitySAMError subclasses."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _media import link_into, write_frames, write_video
from entitysam import EntitySAM, cli
from entitysam.cli import inputs as cli_inputs
from entitysam.errors import EntitySAMError

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_checkpoint):
    d = tmp_path_factory.mktemp("user-errors")
    link_into(d, tiny_checkpoint)
    write_video(d / "clip.mp4", 4)  # 4 frames, not the session's 6-frame clip: the tests count them
    write_frames(d / "frames", ["0", "1", "2"])
    return d


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return EntitySAM.from_checkpoint(tiny_checkpoint)


def child_env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = str(REPO / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env["PYTHONPATH"]]) if env.get("PYTHONPATH") else src
    return env


def entitysam(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "entitysam", *map(str, args)], capture_output=True, text=True,
                          env=child_env(), timeout=timeout)


def strict_json(path):
    """json.loads that refuses NaN / Infinity (what other JSON readers do)."""
    def refuse(name):
        raise ValueError(f"{path}: non-JSON constant {name}")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def assert_usage_error(proc, message):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert sum(line.startswith("error:") or ": error:" in line for line in proc.stderr.splitlines()) == 1


# ----------------------------------------------------------------------------- segment options

SEGMENT_ERRORS = [
    (("--fps", "nan"), "argument --fps: must be a finite number > 0"),
    (("--fps", "inf"), "argument --fps: must be a finite number > 0"),
    (("--fps", "-1"), "argument --fps: must be a finite number > 0"),
    (("--fps", "0"), "argument --fps: must be a finite number > 0"),
    (("--fps", "fast"), "argument --fps: expected a number"),
    (("--fps", "1e20"), "argument --fps: must be between 0.001 and 1000 frames per second"),
    (("--fps", "1e-320"), "argument --fps: must be between 0.001 and 1000 frames per second"),
    (("--online", "--fps", "1e-320"), "argument --fps: must be between 0.001 and 1000 frames per second"),
    (("--threads", "99999999999"), "argument --threads: must be <= 1024"),
    (("--shard", "1/99999999999999999999"), "N must be at most 9223372036854775807"),
    (("--save", ""), "no output format given"),
    (("--save", ","), "no output format given"),
    (("--save", "panoptic,gif"), "unknown output format 'gif'"),
    (("--threads", "0"), "argument --threads: must be >= 1"),
    (("--threads", "-1"), "argument --threads: must be >= 1"),
    (("--stride", "0"), "argument --stride: must be >= 1"),
    (("--stride", "1.5"), "argument --stride: expected an integer"),
    (("--max-frames", "0"), "argument --max-frames: must be >= 1"),
    (("--max-frames", "-3"), "argument --max-frames: must be >= 1"),
    (("--start", "5", "--end", "2"), "end (2) must be after start (5)"),
    (("--start", "3", "--end", "3"), "end (3) must be after start (3)"),
    (("--start", "2.5s", "--end", "1s"), "end (1.0) must be after start (2.5)"),
    # An end of 0 selects nothing whatever the start: it was a failed video (exit 1) after loading.
    (("--end", "0"), "end (0) must be after the first frame"),
    (("--end", "0s"), "end (0.0) must be after the first frame"),
    (("--start", "1s", "--end", "0"), "end (0) must be after the first frame"),
    (("--online", "--end", "0"), "end (0) must be after the first frame"),
    (("--start", "nans"), "invalid frame position"),
    (("--start", "-1"), "invalid frame position"),
    (("--exact", "--dtype", "bfloat16"), "use --dtype float32"),
    (("--exact", "--dtype", "float16"), "use --dtype float32"),
    (("--online", "--delay", "-1"), "argument --delay: must be >= 0"),
    (("--online", "--queue", "0"), "argument --queue: must be >= 1"),
    (("--queue", "2"), "--queue needs --online"),
    (("--save-logits", "."), "--save-logits .: is a folder"),
    (("--save-logits", str(REPO / "README.md" / "logits.npz")), "README.md is not a folder"),
]


@pytest.mark.parametrize("extra,message", SEGMENT_ERRORS, ids=[" ".join(a) for a, _ in SEGMENT_ERRORS])
def test_segment_refuses_bad_options_before_loading(media, tmp_path, extra, message):
    """Exit 2, one message, before the model is loaded (a checkpoint that does not exist would
    fail with exit 1 if it were loaded) and before any output folder is created."""
    out = tmp_path / "out"
    proc = entitysam("segment", media / "frames", "-o", out, "--checkpoint", tmp_path / "absent.pth", *extra)
    assert_usage_error(proc, message)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_a_command_line_error(media, tmp_path):
    out = tmp_path / "out"
    proc = entitysam("segment", media / "frames", "-o", out, "--checkpoint", tmp_path / "absent.pth",
                     "--device", "cuda")
    assert_usage_error(proc, "CUDA is not available")
    assert not out.exists()


def test_selection_beyond_a_folder_fails_before_loading(media, tmp_path):
    proc = entitysam("segment", media / "frames", "-o", tmp_path / "out", "--checkpoint", tmp_path / "absent.pth",
                     "--start", "5")
    assert proc.returncode == 1 and "selects no frames (it has 3 frames)" in proc.stderr, proc.stderr
    assert "checkpoint" not in proc.stderr  # the model was never loaded
    assert not (tmp_path / "out").exists()


def test_valid_fps_is_recorded_and_every_json_is_strict(media, tmp_path):
    out = tmp_path / "out"
    proc = entitysam("segment", media / "frames", "-o", out, "--checkpoint", media / "tiny.pth", "--fps", "12.5",
                     "--save", "panoptic,entities", "--threads", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    manifest = strict_json(out / "frames" / "manifest.json")
    entities = strict_json(out / "frames" / "entities.json")
    strict_json(out / "frames" / "panoptic.json")
    assert manifest["fps"] == entities["fps"] == 12.5
    assert [f["time"] for f in entities["frames"]] == [0.0, 0.08, 0.16]


# ----------------------------------------------------------------------------- demo, metrics, eval

DEMO_ERRORS = [
    (("--frames", "0"), "argument --frames: must be >= 1"),
    (("--frames", "-4"), "argument --frames: must be >= 1"),
    (("--frames", "99999999999"), "the demo video is rendered in memory"),
    (("--size", "0x0"), "argument --size: the demo size must be between 32x32 and 4096x4096"),
    (("--size", "100000x10"), "argument --size: the demo size must be between 32x32 and 4096x4096"),
    (("--size", "big"), "WIDTHxHEIGHT"),
    (("--seed", "-1"), "argument --seed: the seed must be between 0 and"),
    (("--seed", str(2**40)), "argument --seed: the seed must be between 0 and"),
    (("--threads", "0"), "argument --threads: must be >= 1"),
    (("--save", ""), "no output format given"),
    (("--save", "overlay"), "the formats must include 'panoptic'"),
]


@pytest.mark.parametrize("extra,message", DEMO_ERRORS, ids=[" ".join(a) for a, _ in DEMO_ERRORS])
def test_demo_refuses_bad_options_before_anything(tmp_path, extra, message):
    out = tmp_path / "demo"
    proc = entitysam("demo", "-o", out, "--checkpoint", tmp_path / "absent.pth", *extra)
    assert_usage_error(proc, message)
    assert not out.exists()


def test_demo_api_refuses_bad_numbers(tmp_path):
    from entitysam.pipeline.demo import run_demo

    for kwargs in ({"num_frames": 0}, {"num_frames": 2.5}, {"seed": -1}, {"width": 0}, {"formats": ""}):
        with pytest.raises(EntitySAMError):
            run_demo(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


@pytest.fixture(scope="module")
def metrics_data(tmp_path_factory):
    from entitysam.data.synthetic.vipseg import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("metrics"), num_videos=2, num_frames=3)


@pytest.mark.parametrize("workers", ["0", "-2", "two"])
def test_metrics_workers_must_be_positive(metrics_data, workers):
    ds = metrics_data
    proc = entitysam("metrics", ds.pred_dir, ds.gt_dir, ds.gt_json, "--workers", workers)
    assert_usage_error(proc, "argument --workers")


def test_metrics_json_destination_checked_before_computing(metrics_data, tmp_path):
    ds = metrics_data
    # The predictions are missing: computing would fail on them; the destination is checked first.
    for dest, message in ((tmp_path / "missing" / "m.json", "does not exist"), (tmp_path, "is a folder")):
        proc = entitysam("metrics", tmp_path / "no-predictions", ds.gt_dir, ds.gt_json, "--json", dest)
        assert_usage_error(proc, message)
    proc = entitysam("metrics", ds.pred_dir, ds.gt_dir, ds.gt_json, "--workers", "1", "--json", tmp_path / "m.json")
    assert proc.returncode == 0, proc.stderr
    assert "veq" in strict_json(tmp_path / "m.json")


def test_undefined_metrics_are_written_as_null():
    from entitysam.jsonio import jsonable

    assert jsonable({"IoU": float("nan"), "x": [1.0, float("inf")], 3: 2}) == {"IoU": None, "x": [1.0, None],
                                                                                 "3": 2}


@pytest.fixture(scope="module")
def vipseg(tmp_path_factory):
    from entitysam.data.synthetic.vipseg import make_vipseg_dataset

    return make_vipseg_dataset(tmp_path_factory.mktemp("vipseg") / "VIPSeg_720P", num_videos=2,
                               num_frames=(3, 2), seed=0)


EVAL_ERRORS = [
    (("--workers", "0"), "argument --workers: must be >= 1"),
    (("--threads", "-1"), "argument --threads: must be >= 1"),
    (("--dist-timeout", "nan"), "argument --dist-timeout: must be a finite number > 0"),
    (("--dist-timeout", "0"), "argument --dist-timeout: must be a finite number > 0"),
    (("--dist-timeout", "1e300"), "argument --dist-timeout: must be between 0.001 and 100000 hours"),
    (("--workers", "99999999999"), "argument --workers: must be <= 1024"),
    (("--shard", "3/2"), "need N >= 1 and 0 <= I < N"),
]


@pytest.mark.parametrize("extra,message", EVAL_ERRORS, ids=[" ".join(a) for a, _ in EVAL_ERRORS])
def test_eval_refuses_bad_options(vipseg, tmp_path, extra, message):
    proc = entitysam("eval", "vipseg", "--data-root", vipseg.root, "--checkpoint", tmp_path / "absent.pth",
                     "-o", tmp_path / "out", *extra)
    assert_usage_error(proc, message)
    assert not (tmp_path / "out").exists()


def test_eval_api_checks_workers_before_inference(vipseg, tmp_path):
    from entitysam.eval.runner.run import evaluate_vipseg

    def no_model():
        raise AssertionError("the model must not be loaded")

    for workers in (0, -1, 1.5):
        with pytest.raises(EntitySAMError, match="workers"):
            evaluate_vipseg(vipseg.root, tmp_path / "out", model=no_model, workers=workers)
    assert not (tmp_path / "out").exists()


def test_eval_missing_gt_png_found_before_inference(vipseg, tmp_path):
    import shutil

    root = tmp_path / "VIPSeg_720P"
    shutil.copytree(vipseg.root, root)
    video = sorted(p for p in (root / "panomasksRGB").iterdir())[1]
    victim = sorted(video.iterdir())[-1]
    victim.unlink()
    # a checkpoint that does not exist: had inference started, loading it would fail first (exit 1)
    proc = entitysam("eval", "vipseg", "--data-root", root, "--checkpoint", tmp_path / "absent.pth",
                     "-o", tmp_path / "out")
    assert_usage_error(proc, "GT PNG(s) named by the GT JSON")
    assert victim.name in proc.stderr
    assert not (tmp_path / "out").exists()
    # without metrics the ground truth is not needed
    proc = entitysam("eval", "vipseg", "--data-root", root, "--checkpoint", tmp_path / "absent.pth",
                     "-o", tmp_path / "out", "--no-metrics")
    assert proc.returncode == 1 and "GT PNG" not in proc.stderr, proc.stderr


def _gt_edit(fn):
    def go(root):
        path = root / "panoptic_gt_VIPSeg_val.json"
        doc = json.loads(path.read_text())
        fn(doc)
        path.write_text(json.dumps(doc))
    return go


def _gt_jpeg(root):
    from PIL import Image

    png = sorted((root / "panomasksRGB" / "vid_000").iterdir())[1]
    Image.open(png).convert("RGB").save(png, format="JPEG", quality=95)


GT_SPOILS = {
    "null-annotations": (_gt_edit(lambda d: d["annotations"][0].__setitem__("annotations", None)),
                         "'annotations' is NoneType, not a list"),
    "deep-json": (lambda root: (root / "panoptic_gt_VIPSeg_val.json").write_text("[" * 100000 + "]" * 100000),
                  "is unreadable: JSON nested too deeply"),
    "duplicate-annotations": (_gt_edit(lambda d: d["annotations"].append(d["annotations"][0])),
                              "video 'vid_000' is listed twice"),
    "duplicate-video": (_gt_edit(lambda d: (d["videos"].append(d["videos"][0]),
                                            d["annotations"].append(d["annotations"][0]))),
                        "video 'vid_000' is listed twice"),
    "jpeg-gt-png": (_gt_jpeg, "00000001.png: a JPEG image, not a PNG"),
}


@pytest.mark.parametrize("spoil", GT_SPOILS)
def test_eval_unusable_gt_found_before_inference(vipseg, tmp_path, spoil):
    import shutil

    root = tmp_path / "VIPSeg_720P"
    shutil.copytree(vipseg.root, root)
    fn, message = GT_SPOILS[spoil]
    fn(root)
    proc = entitysam("eval", "vipseg", "--data-root", root, "--checkpoint", tmp_path / "absent.pth",
                     "-o", tmp_path / "out", "--workers", "1")
    assert_usage_error(proc, message)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- batch folders


def test_batch_output_inside_the_batch_folder_is_not_an_input(media, tmp_path):
    import shutil

    batch = tmp_path / "videos"
    batch.mkdir()
    shutil.copy(media / "clip.mp4", batch / "clip.mp4")
    common = ["--checkpoint", media / "tiny.pth", "--save", "panoptic", "--threads", "1", "-q"]
    assert entitysam("segment", "--batch", batch, "-o", batch / "out", *common).returncode == 0
    proc = entitysam("segment", "--batch", batch, "-o", batch / "out", "--overwrite", *common)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (batch / "out").iterdir()) == ["clip"]
    # results written into the batch folder itself (and the earlier output root) are no videos either
    assert entitysam("segment", "--batch", batch, "-o", batch, *common).returncode == 0
    proc = entitysam("segment", "--batch", batch, "-o", batch, "--overwrite", *common)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in batch.iterdir()) == ["clip", "clip.mp4", "out"]


# ----------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_while_the_model_loads(media, tmp_path):
    script = f"""
import os, signal, sys, time
import entitysam.pipeline.loading as loader

def loading(*args, **kwargs):  # a real SIGINT, delivered while "loading"
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)
    raise SystemExit("the interrupt was not delivered")

loader.load_entitysam = loading
from entitysam.cli import main
sys.exit(main(["segment", {str(media / "frames")!r}, "-o", {str(tmp_path / "out")!r},
               "--checkpoint", {str(media / "tiny.pth")!r}]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env(),
                          timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "error: interrupted"
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- Python API


def test_api_misuses_raise_entitysam_errors(media, model, tmp_path):
    bad_calls = {
        "checkpoint None": lambda: EntitySAM.from_checkpoint(None),
        "checkpoint 3": lambda: EntitySAM.from_checkpoint(3),
        "unknown config": lambda: EntitySAM.from_checkpoint(media / "tiny.pth", config="vit-xxl"),
        "unknown model": lambda: EntitySAM.from_pretrained("vit-xxl"),
        "device tpu": lambda: EntitySAM.from_checkpoint(media / "tiny.pth", device="tpu"),
        "device 7": lambda: EntitySAM.from_checkpoint(media / "tiny.pth", device=7),
        "pretrained device tpu": lambda: EntitySAM.from_pretrained("demo", device="tpu"),
        "zero-height array": lambda: model.segment(np.zeros((2, 0, 5, 3), np.uint8)),
        "zero-width frames": lambda: model.segment([np.zeros((4, 0, 3), np.uint8)] * 2),
        "no video": lambda: model.segment(None),
        "mixed list": lambda: model.segment([str(media / "frames" / "0.jpg"), np.zeros((4, 4, 3), np.uint8)]),
        "missing frame path": lambda: model.segment([str(media / "frames" / "0.jpg"), str(tmp_path / "x.jpg")]),
        "dtype fp16": lambda: model.segment(media / "frames", dtype="fp16"),
        "dtype int8": lambda: model.segment(media / "frames", dtype=torch.int8),
        "dtype 5": lambda: model.segment(media / "frames", dtype=5),
        "logits dtype": lambda: model.segment(media / "frames", logits_dtype="int8"),
        "fps nan": lambda: model.segment(media / "frames", fps=float("nan")),
        "fps inf": lambda: model.segment(media / "frames", fps=math.inf),
        "fps 0": lambda: model.segment(media / "frames", fps=0),
        "fps -1": lambda: model.segment(media / "frames", fps=-1),
        "stream fps nan": lambda: model.stream(media / "frames", fps=float("nan")),
        "stream dtype": lambda: model.stream(media / "frames", dtype="half"),
        "start after end": lambda: model.segment(media / "frames", start=2, end=1),
        "start nan": lambda: model.segment(media / "frames", start=float("nan")),
        "stride bool": lambda: model.segment(media / "frames", stride=True),
    }
    for label, call in bad_calls.items():
        with pytest.raises(EntitySAMError) as info:
            call()
        assert isinstance(info.value, (ValueError, TypeError)) or label.startswith("unknown model"), label
        assert str(info.value), label
    with model.segment(media / "frames") as result:
        for formats in ("", ",", ["gif"]):  # ([] is "none": test_absurd_numbers.test_check_formats_one_rule)
            with pytest.raises(EntitySAMError, match="output format"):
                result.save(tmp_path / "saved", formats=formats)
        assert not (tmp_path / "saved").exists()


def test_list_of_frame_paths_is_a_video(media, model):
    paths = [str(media / "frames" / f"{i}.jpg") for i in range(3)]
    with model.segment(paths) as from_list, model.segment(media / "frames") as from_folder:
        assert [f.name for f in from_list.frames] == ["0", "1", "2"]
        np.testing.assert_array_equal(np.stack(list(from_list)), np.stack(list(from_folder)))
    with model.segment([Path(p) for p in reversed(paths)], stride=2) as backwards:
        assert [f.name for f in backwards.frames] == ["2", "0"]


def test_strict_json_helper():
    from entitysam import jsonio

    assert jsonio.dumps({"a": [1.5]}, compact=True) == '{"a":[1.5]}'
    for bad, where in (({"fps": float("nan")}, "$.fps"), ({"e": [{"score": -math.inf}]}, "$.e[0].score")):
        with pytest.raises(EntitySAMError, match=re.escape(f"at {where}:")):
            jsonio.dumps(bad)
    with pytest.raises(ValueError):
        jsonio.dumps(float("nan"))


# ----------------------------------------------------------------------------- online manifest states


def disk_full_from(monkeypatch, frame, *, stays_full):
    """The disk fills up when `frame` is written: that write fails with ENOSPC, and with
    `stays_full` every later new file does too (panoptic.json, the manifest's temporary file)."""
    from entitysam.io import stream_files

    add = stream_files.OnlineWriter.add

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def add_until_full(self, t, *args, **kwargs):
        if t >= frame:
            if stays_full:
                monkeypatch.setattr(stream_files, "write_bytes_atomic", full)
                monkeypatch.setattr(stream_files.OnlineWriter, "_write_panoptic_json", full)
            full()
        return add(self, t, *args, **kwargs)

    monkeypatch.setattr(stream_files.OnlineWriter, "add", add_until_full)


@pytest.mark.parametrize("stays_full", [False, True], ids=["frees-up", "stays-full"])
def test_online_disk_full_manifest_says_failed(media, tmp_path, monkeypatch, capsys, stays_full):
    disk_full_from(monkeypatch, 2, stays_full=stays_full)
    rc = cli.main(["segment", str(media / "clip.mp4"), "-o", str(tmp_path), "--checkpoint", str(media / "tiny.pth"),
                   "--online", "-q"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "no space left on the device (disk full)" in err and "Traceback" not in err
    manifest = strict_json(tmp_path / "clip" / "manifest.json")
    assert manifest["status"] == "failed" and manifest["complete"] is False
    assert "no space left on the device (disk full)" in manifest["error"]
    assert manifest["frames_emitted"] == manifest["num_frames"] == 2


def test_online_disk_full_while_finishing(media, tmp_path, monkeypatch, capsys):
    from entitysam.io import stream_files

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stream_files.OnlineWriter, "_write_panoptic_json", full)
    rc = cli.main(["segment", str(media / "clip.mp4"), "-o", str(tmp_path), "--checkpoint", str(media / "tiny.pth"),
                   "--online", "-q"])
    assert rc == 1
    assert "disk full" in capsys.readouterr().err
    manifest = strict_json(tmp_path / "clip" / "manifest.json")
    assert manifest["status"] == "failed" and "disk full" in manifest["error"]
    assert manifest["frames_emitted"] == 4


def test_online_iteration_to_the_end_finishes_the_outputs(media, model, tmp_path):
    stream = model.stream(media / "clip.mp4", output=tmp_path / "a")
    assert len(list(stream)) == 4  # no `with`, no close()
    assert stream.status == "complete"
    manifest = strict_json(tmp_path / "a" / "manifest.json")
    assert manifest["status"] == "complete" and manifest["complete"] is True and manifest["num_frames"] == 4
    panoptic = strict_json(tmp_path / "a" / "panoptic.json")
    assert len(panoptic["annotations"][0]["annotations"]) == 4
    assert stream.close()["status"] == "complete"  # closing again changes nothing


def test_online_failure_without_close_finishes_the_outputs(media, model, tmp_path, monkeypatch):
    disk_full_from(monkeypatch, 1, stays_full=False)
    stream = model.stream(media / "clip.mp4", output=tmp_path / "a")
    with pytest.raises(OSError):
        for _ in stream:
            pass
    assert stream.status == "failed"
    manifest = strict_json(tmp_path / "a" / "manifest.json")
    assert manifest["status"] == "failed" and "disk full" in manifest["error"]
    assert (tmp_path / "a" / "panoptic.json").is_file()


def test_online_non_finite_score_gives_a_valid_failed_manifest(tmp_path):
    from types import SimpleNamespace

    from entitysam.io.stream_files import OnlineWriter

    writer = OnlineWriter(tmp_path / "o", video="v", formats=("panoptic",), fps=10.0)
    frame = SimpleNamespace(name="000000", index=0, time=0.0)
    writer.add(0, frame, np.zeros((4, 4), np.int32), [])
    manifest = writer.finish("complete", {"tracks": [{"id": 1, "score": float("nan")}]})
    assert strict_json(tmp_path / "o" / "manifest.json") == manifest
    assert manifest["status"] == "failed" and "non-finite" in manifest["error"]
    assert manifest["tracks"] == [{"id": 1, "score": None}]


def test_a_file_that_is_no_checkpoint(media, vipseg, tmp_path):
    """Loading fails (exit 1: the model could not be loaded) with one line, not a pickle traceback."""
    not_a_checkpoint = media / "clip.mp4"
    for args in (("segment", media / "frames", "-o", tmp_path / "a"),
                 ("demo", "-o", tmp_path / "b", "--frames", "2"),
                 ("eval", "vipseg", "--data-root", vipseg.root, "-o", tmp_path / "c", "--no-metrics")):
        proc = entitysam(*args, "--checkpoint", not_a_checkpoint)
        assert proc.returncode == 1, proc.stderr
        # One line naming the file and why (the checkpoint reader's message).
        assert f"checkpoint {not_a_checkpoint}: not a readable PyTorch checkpoint" in proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_ctrl_c_during_parallel_metrics(metrics_data, tmp_path):
    """SIGINT to the command (kill -INT PID: a terminal's Ctrl-C reaches the workers too): one line
    and 130, and the running and queued videos are abandoned, not waited for."""
    ds = metrics_data
    script = f"""
import os, signal, sys, threading, time
import entitysam.eval.metrics as metrics

def slow(args):
    time.sleep(120)

metrics._video_task = slow  # the workers are forked: they run this too
threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()  # kill -INT PID
from entitysam.cli import main
sys.exit(main(["metrics", {str(ds.pred_dir)!r}, {str(ds.gt_dir)!r}, {str(ds.gt_json)!r}, "--workers", "2"]))
"""
    import time

    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env(),
                          timeout=100, start_new_session=True)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "error: interrupted"
    assert time.monotonic() - t0 < 60


def test_batch_inputs_leave_out_everything_entitysam_wrote(media, tmp_path):
    import shutil

    batch = tmp_path / "videos"
    write_frames(batch / "frames-video", ["0", "1"])
    shutil.copy(media / "clip.mp4", batch / "clip.mp4")
    results = {
        "a-result": {"manifest.json": {"format": "entitysam-segment", "complete": True}},
        "an-online-result": {"manifest.json": {"format": "entitysam-online", "status": "running"}},
        "an-eval-output": {"run.json": {"format": "entitysam-eval-vipseg"}},
        "an-output-root/clip": {"manifest.json": {"format": "entitysam-segment", "complete": True}},
        "a-demo-run/demo": {"manifest.json": {"format": "entitysam-segment", "complete": True}},
    }
    for folder, files in results.items():
        (batch / folder).mkdir(parents=True)
        for name, doc in files.items():
            (batch / folder / name).write_text(json.dumps(doc))
    (batch / "out").mkdir()
    assert [p.name for p in cli_inputs.batch_inputs(str(batch), batch / "out")] == ["clip.mp4", "frames-video"]
    assert [p.name for p in cli_inputs.batch_inputs(str(batch), batch / "out" / "deeper")] == ["clip.mp4", "frames-video"]
    # a folder with frames of its own stays a video even beside a result folder
    write_frames(batch / "a-demo-run", ["0"])
    assert "a-demo-run" in [p.name for p in cli_inputs.batch_inputs(str(batch), batch / "out")]
    only_results = tmp_path / "only-results"
    (only_results / "r").mkdir(parents=True)
    (only_results / "r" / "manifest.json").write_text('{"format": "entitysam-segment"}')
    with pytest.raises(EntitySAMError, match="no videos left"):
        cli_inputs.batch_inputs(str(only_results), tmp_path / "o")


TRAIN_ERRORS = [
    ("solver.lr=1", "unknown config key solver.'lr'"),
    ("solver.base_lr=nan", "solver.base_lr must be a finite number"),
    ("solver.base_lr=0", "solver.base_lr must be > 0"),
    ("solver.max_iter=-5", "solver.max_iter must be >= 1"),
    ("data.rotation=inf", "data.rotation must be a finite number"),
    ("log_period=0", "log_period must be >= 1"),
    ("data.frames=0", "data.frames must be >= 1"),
]


@pytest.mark.parametrize("override,message", TRAIN_ERRORS, ids=[o for o, _ in TRAIN_ERRORS])
def test_train_refuses_bad_overrides(tmp_path, override, message):
    proc = entitysam("train", "--config", "tiny-stage1", override, f"output_dir={tmp_path / 'run'}")
    assert_usage_error(proc, message)
    assert not (tmp_path / "run").exists()


def test_train_config_prints_as_strict_json():
    proc = entitysam("train", "--config", "tiny-stage1", "--print-config")
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))


@pytest.mark.parametrize("what, cause", [("missing", "not found"), ("file", "not a folder"),
                                         ("broken-link", "a symbolic link to {tmp}/gone, which does not exist")])
@pytest.mark.parametrize("command", ["view", "export"])
def test_a_result_folder_that_is_not_there_is_a_mistaken_argument(tmp_path, capsys, command, what, cause):
    """`view DIR` / `export DIR` of a DIR that is not there exited 1 ("DIR: not a folder", even when
    nothing was there), where `metrics` and `eval vipseg` refuse a missing folder with 2: a
    folder the user named that is not there is refused before any work, exit 2. A folder that is
    there but holds no usable result still fails with 1."""
    path = tmp_path / "out" / "clip"
    if what == "file":
        path.parent.mkdir()
        path.write_text("x")
    elif what == "broken-link":
        path.parent.mkdir()
        path.symlink_to(tmp_path / "gone")
    argv = [command, str(path)] + (["--format", "ytvis", "-o", str(tmp_path / "x.json")] if command == "export" else [])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    cause = cause.format(tmp=tmp_path)
    assert err == f"error: {path}: {cause} (expected a result folder of `entitysam segment`)\n", err
    assert not (tmp_path / "x.json").exists()
    (tmp_path / "empty").mkdir()
    argv[1] = str(tmp_path / "empty")
    assert cli.main(argv) == 1 and "not a result folder" in capsys.readouterr().err
