"""`entitysam eval vipseg` on generated VIPSeg-layout datasets with the tiny model: official
layout, metrics, resuming after an interruption or a kill, shards and torchrun ranks merging to
the numbers of one run, skipping finished videos, and the errors for unusable inputs."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _media import link_into
from conftest import REPO
from entitysam import EntitySAM, cli
from entitysam.data.synthetic.vipseg import make_vipseg_dataset
from entitysam.errors import OutputError
from entitysam.eval.metrics import evaluate
from entitysam.eval.runner.output import EvalOutput, IncompleteError, merge_outputs
from entitysam.eval.runner.plan import EvalInputError, VideoEntry, load_plan
from entitysam.eval.runner.run import evaluate_vipseg, parse_shard, shard_videos
from entitysam.io import panoptic
from entitysam.io.idpng import read_id_png
from entitysam.io.panoptic import frame_segments

FRAMES = (4, 5, 3)
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
                  "PYTHONPATH": str(REPO / "src") + os.pathsep + str(REPO / "tests")}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_checkpoint):
    d = tmp_path_factory.mktemp("eval")
    link_into(d, tiny_checkpoint)
    ds = make_vipseg_dataset(d / "VIPSeg_720P", num_videos=3, num_frames=FRAMES, seed=0)
    return d, ds


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return EntitySAM.from_checkpoint(tiny_checkpoint)


def run_eval(env, out, *extra):
    d, ds = env
    return cli.main(["eval", "vipseg", "--data-root", str(ds.root), "--checkpoint", str(d / "tiny.pth"),
                     "--output", str(out), "--threads", "1", "--workers", "1", "-q", *map(str, extra)])


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """One uninterrupted, unsharded run."""
    out = tmp_path_factory.mktemp("ref") / "out"
    assert run_eval(env, out) == 0
    return out


def read_json(path):
    return json.loads(Path(path).read_text())


def scores(out):
    m = read_json(out / "metrics.json")
    return m["veq"], m["stq"]


def assert_same_predictions(a, b, videos):
    assert read_json(a / "pred.json") == read_json(b / "pred.json")
    for vid in videos:
        names = sorted(os.listdir(a / "pan_pred" / vid))
        assert names == sorted(os.listdir(b / "pan_pred" / vid))
        for n in names:
            assert (a / "pan_pred" / vid / n).read_bytes() == (b / "pan_pred" / vid / n).read_bytes()
    assert scores(a) == scores(b)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- the dataset generator


def test_generated_dataset_has_the_vipseg_layout_and_moving_entities(env):
    _, ds = env
    gt = read_json(ds.gt_json)
    assert [v["video_id"] for v in gt["videos"]] == list(ds.videos) == ["vid_000", "vid_001", "vid_002"]
    assert ds.split_file.read_text().split() == list(ds.videos)
    for vid, n, video, anno in zip(ds.videos, FRAMES, gt["videos"], gt["annotations"]):
        stems = [f"{t:08d}" for t in range(n)]
        assert sorted(os.listdir(ds.images_dir / vid)) == [f"{s}.jpg" for s in stems]
        assert [im["file_name"] for im in video["images"]] == [f"{s}.png" for s in stems]
        present = []
        for im, frame in zip(video["images"], anno["annotations"]):
            ids = read_id_png(ds.gt_dir / vid / im["file_name"])
            segs = {s["id"]: s for s in frame["segments_info"]}
            assert set(np.unique(ids).tolist()) - {0} == set(segs)
            assert all(segs[i]["area"] == int((ids == i).sum()) for i in segs)
            present.append({i: segs[i]["area"] for i in segs})
        # scripted things: A enters, B is occluded while A crosses it, C leaves through the border
        assert 2901 not in present[0] and 2901 in present[-1]
        assert 2903 in present[0] and 2903 not in present[-1]
        assert min(p[2902] for p in present) < max(p[2902] for p in present)


# ----------------------------------------------------------------------------- end to end


def test_end_to_end_official_layout_and_metrics(env, reference, tmp_path):
    d, ds = env
    out = reference
    assert sorted(p.name for p in out.iterdir()) == ["log.json", "logs", "metrics.json", "pan_pred", "parts",
                                                     "pred.json", "run.json"]
    assert sorted(os.listdir(out / "pan_pred")) == list(ds.videos)  # no partial folders left
    pred = read_json(out / "pred.json")
    assert [v["video_id"] for v in pred["annotations"]] == list(ds.videos)
    for vid, n, video in zip(ds.videos, FRAMES, pred["annotations"]):
        names = [f"{t:08d}" for t in range(n)]
        assert sorted(os.listdir(out / "pan_pred" / vid)) == [f"{s}.png" for s in names]
        assert [f["file_name"] for f in video["annotations"]] == [f"{s}.jpg" for s in names]
        for s, frame in zip(names, video["annotations"]):
            ids = read_id_png(out / "pan_pred" / vid / f"{s}.png")
            segs = frame["segments_info"]
            # area > 0 only, creation (= id) order, official bbox (no +1)
            assert [{k: x[k] for k in ("id", "area", "bbox")} for x in segs] == frame_segments(ids, "official")
            assert all(x["area"] > 0 and x["iscrowd"] == 0 for x in segs)
        # the same predictions as `entitysam segment` on the frame folder
        seg_out = tmp_path / "seg"
        assert cli.main(["segment", str(ds.images_dir / vid), "-o", str(seg_out), "--checkpoint",
                         str(d / "tiny.pth"), "--save", "panoptic", "-q"]) == 0
        for s in names:
            np.testing.assert_array_equal(read_id_png(seg_out / vid / "panoptic" / f"{s}.png"),
                                          read_id_png(out / "pan_pred" / vid / f"{s}.png"))
    # metrics.json = the metrics of the written predictions
    m = read_json(out / "metrics.json")
    direct = json.loads(json.dumps(evaluate(out, ds.gt_dir, ds.gt_json, workers=1)))
    assert (m["veq"], m["stq"]) == (direct["veq"], direct["stq"])
    assert m["run"]["videos"] == 3 and m["run"]["frames"] == sum(FRAMES) and m["run"]["model"]["config"] == "tiny"
    log = read_json(out / "log.json")
    assert [v["video"] for v in log["videos"]] == list(ds.videos)
    for v, n in zip(log["videos"], FRAMES):
        assert v["frames"] == n and v["seconds"] > 0 and v["fps"] > 0 and v["peak_rss_mib"] > 50
    assert log["total"]["frames"] == sum(FRAMES)
    assert [r["status"] for r in map(json.loads, (out / "logs" / "run.jsonl").read_text().splitlines())] == ["done"] * 3


# ----------------------------------------------------------------------------- resuming


def test_interrupted_run_resumes_redoing_only_unfinished_videos(env, model, reference, tmp_path, monkeypatch):
    _, ds = env
    out = tmp_path / "out"
    real_add = panoptic.PanopticWriter.add
    calls = {"n": 0}

    def add_then_interrupt(self, t, frame, id_map, segments=None):
        calls["n"] += 1
        if self.video_id == "vid_001" and t == 2:
            raise KeyboardInterrupt
        return real_add(self, t, frame, id_map, segments)

    monkeypatch.setattr(panoptic.PanopticWriter, "add", add_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        evaluate_vipseg(ds.root, out, model=model, workers=1)
    monkeypatch.undo()
    assert sorted(os.listdir(out / "parts")) == ["vid_000.json"]
    assert sorted(os.listdir(out / "pan_pred")) == ["vid_000"]  # the partial folder is gone
    assert not (out / "pred.json").exists() and not (out / "metrics.json").exists()

    import entitysam.pipeline.segment as api

    segmented = []
    real_segment = api.segment
    monkeypatch.setattr(api, "segment", lambda m, source, **kw: segmented.append(source.name) or real_segment(
        m, source, **kw))
    summary = evaluate_vipseg(ds.root, out, model=model, workers=1)
    assert segmented == ["vid_001", "vid_002"]
    assert summary.skipped == ["vid_000"] and summary.done == ["vid_001", "vid_002"] and summary.merged
    assert_same_predictions(out, reference, ds.videos)
    statuses = [json.loads(x)["status"] for x in (out / "logs" / "run.jsonl").read_text().splitlines()]
    assert statuses == ["done", "interrupted", "skipped", "done", "done"]


def test_killed_process_resumes(env, reference, tmp_path):
    """A hard kill (SIGKILL in the middle of the second video) leaves a partial folder; the next
    run removes it, keeps the first video and finishes the others."""
    d, ds = env
    out = tmp_path / "out"
    args = ["eval", "vipseg", "--data-root", str(ds.root), "--checkpoint", str(d / "tiny.pth"), "--output", str(out),
            "--threads", "1", "--workers", "1", "-q"]
    script = (
        "import os, signal, sys\n"
        "from entitysam.io import panoptic\n"
        "real = panoptic.PanopticWriter.add\n"
        "def add(self, t, frame, id_map, segments=None):\n"
        "    real(self, t, frame, id_map, segments)\n"
        "    if self.video_id == 'vid_001' and t == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "panoptic.PanopticWriter.add = add\n"
        "from entitysam.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    killed = subprocess.run([sys.executable, "-c", script, *args], env={**os.environ, **SUBPROCESS_ENV},
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert os.listdir(out / "parts") == ["vid_000.json"]
    partial = [p for p in os.listdir(out / "pan_pred") if p.startswith(".vid_001.partial-")]
    assert len(partial) == 1 and len(os.listdir(out / "pan_pred" / partial[0])) >= 3

    assert run_eval(env, out) == 0
    assert sorted(os.listdir(out / "pan_pred")) == list(ds.videos)
    assert_same_predictions(out, reference, ds.videos)


def test_partial_folders_of_a_run_killed_on_another_machine_are_removed(tmp_path):
    """Shards and ranks on several machines share the output folder: a killed run's partial folder
    is named with that machine's pid, alive here maybe (pid 1 in containers): kept for good, as a
    live run's. Under the video's lock, held while staging, no other run is writing it."""
    from entitysam.io.output_lock import OutputLock

    out = EvalOutput(tmp_path / "out")
    stale = out.pan_pred / f".vid_001.partial-{os.getppid()}-0123abcd"  # a live pid of this machine
    stale.mkdir(parents=True)
    (stale / "00000.png").write_bytes(b"png")
    lock = OutputLock.acquire(out.pan_pred / "vid_001")
    try:
        fresh = out.stage("vid_001")
    finally:
        lock.release()
    assert sorted(os.listdir(out.pan_pred)) == [fresh.name]  # the killed run's folder is gone


def test_complete_videos_are_skipped_without_loading_the_model(env, model, reference, tmp_path, monkeypatch):
    _, ds = env
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / "metrics.json").unlink()
    loads = []
    summary = evaluate_vipseg(ds.root, out, model=lambda: loads.append(1) or model, workers=1)
    assert loads == [] and summary.skipped == list(ds.videos) and summary.done == []
    assert scores(out) == scores(reference)  # merged and scored again

    import entitysam.pipeline.segment as api

    segmented = []
    real_segment = api.segment
    monkeypatch.setattr(api, "segment", lambda m, source, **kw: segmented.append(source.name) or real_segment(
        m, source, **kw))
    (out / "parts" / "vid_001.json").unlink()
    (out / "pan_pred" / "vid_002" / "00000001.png").unlink()  # a video with a missing PNG is not complete
    summary = evaluate_vipseg(ds.root, out, model=lambda: loads.append(1) or model, workers=1)
    assert loads == [1] and segmented == ["vid_001", "vid_002"] and summary.skipped == ["vid_000"]
    assert_same_predictions(out, reference, ds.videos)
    # --overwrite redoes everything, but never deletes a file that entitysam did not write
    (out / "pan_pred" / "vid_001" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=re.escape(f"({out}/pan_pred/vid_001/notes.txt)")):
        evaluate_vipseg(ds.root, out, model=lambda: loads.append(1) or model, workers=1, overwrite=True)
    assert loads == [1] and (out / "pan_pred" / "vid_001" / "notes.txt").read_text() == "mine"
    (out / "pan_pred" / "vid_001" / "notes.txt").unlink()
    segmented.clear()
    summary = evaluate_vipseg(ds.root, out, model=model, workers=1, overwrite=True)
    assert segmented == list(ds.videos)
    assert_same_predictions(out, reference, ds.videos)


def test_a_video_locked_by_another_run_is_left_to_it(env, model, reference, tmp_path):
    """Two runs on one output folder never write the same video at once: a video whose lock
    (pan_pred/.<video>.lock) another process holds is left to that process, not staged or committed;
    once the lock is free the next run does it and merges."""
    _, ds = env
    out = tmp_path / "out"
    EvalOutput(out).prepare(load_plan(ds.root))  # an evaluation folder, as another run made it
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom entitysam.io.output_lock import OutputLock\n"
         "OutputLock.acquire(sys.argv[1])\nprint('locked', flush=True)\ntime.sleep(120)\n",
         str(out / "pan_pred" / "vid_001")], env={**os.environ, **SUBPROCESS_ENV}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        summary = evaluate_vipseg(ds.root, out, model=model, workers=1)
        assert summary.busy == ["vid_001"] and summary.done == ["vid_000", "vid_002"] and not summary.merged
        assert summary.missing == ["vid_001"] and not (out / "parts" / "vid_001.json").exists()
        assert not (out / "pan_pred" / "vid_001").exists() and not (out / "pred.json").exists()
        assert not [p for p in os.listdir(out / "pan_pred") if p.startswith(".vid_001.partial")]
    finally:
        holder.kill()
        holder.wait()
    summary = evaluate_vipseg(ds.root, out, model=model, workers=1)
    assert summary.done == ["vid_001"] and summary.merged
    assert sorted(os.listdir(out / "pan_pred")) == list(ds.videos)  # the lock files are gone
    assert_same_predictions(out, reference, ds.videos)
    statuses = [json.loads(x)["status"] for x in (out / "logs" / "run.jsonl").read_text().splitlines()]
    assert statuses == ["done", "busy", "done", "skipped", "skipped", "done"]


# ----------------------------------------------------------------------------- parallel


def test_shard_split_is_deterministic_balanced_and_complete():
    videos = [VideoEntry(f"v{k}", ("x",) * n) for k, n in enumerate([30, 5, 12, 12, 40, 1, 7])]
    slices = [shard_videos(videos, i, 3) for i in range(3)]
    assert slices == [shard_videos(videos, i, 3) for i in range(3)]
    ids = [v.video_id for s in slices for v in s]
    assert sorted(ids) == sorted(v.video_id for v in videos) and len(ids) == len(set(ids))
    loads = [sum(v.num_frames for v in s) for s in slices]
    assert max(loads) - min(loads) <= 12
    for s in slices:  # list order inside a slice
        assert [v.video_id for v in s] == [v.video_id for v in videos if v in s]
    assert shard_videos(videos, 0, 1) == videos
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(EvalInputError):
            parse_shard(bad)


def test_two_shards_then_merge_equal_one_run(env, reference, tmp_path, capsys):
    _, ds = env
    out = tmp_path / "out"
    assert run_eval(env, out, "--shard", "0/2") == 0
    first = sorted(os.listdir(out / "parts"))
    assert 0 < len(first) < 3 and not (out / "pred.json").exists() and not (out / "metrics.json").exists()
    assert run_eval(env, out, "--merge-only") == 1  # not all videos done yet
    assert "have no complete predictions" in capsys.readouterr().err
    assert run_eval(env, out, "--shard", "1/2") == 0  # the last shard merges and scores
    assert sorted(os.listdir(out / "parts")) == [f"{v}.json" for v in ds.videos]
    assert_same_predictions(out, reference, ds.videos)
    assert sorted(os.listdir(out / "logs")) == ["shard-0-of-2.jsonl", "shard-1-of-2.jsonl"]
    # --merge-only assembles and scores again from the parts alone
    (out / "pred.json").unlink()
    (out / "metrics.json").unlink()
    capsys.readouterr()
    assert run_eval(env, out, "--merge-only") == 0
    assert "STQ" in capsys.readouterr().out
    assert_same_predictions(out, reference, ds.videos)


def test_run_json_names_the_data_root_and_a_resume_from_a_copy_is_traced(env, reference, tmp_path, capsys):
    """run.json did not say which VIPSeg folder an evaluation read. It now records the data root
    (resolved: here through a link); a resume from a copy of the data elsewhere (same split and
    videos: the same evaluation, as a copied checkpoint is the same model) goes on, says so, and
    each video's part and log.json entry name the data root it was read from."""
    d, ds = env
    out, link, moved = tmp_path / "out", tmp_path / "link", tmp_path / "moved" / "VIPSeg_720P"
    link.symlink_to(ds.root)
    shutil.copytree(ds.root, moved)

    def run(root, *extra):
        return cli.main(["eval", "vipseg", "--data-root", str(root), "--checkpoint", str(d / "tiny.pth"),
                         "--output", str(out), "--threads", "1", "--workers", "1", *map(str, extra)])

    assert run(link, "--shard", "0/2", "-q") == 0
    first = [p.stem for p in (out / "parts").iterdir()]
    original = os.path.realpath(ds.root)
    assert read_json(out / "run.json")["data_root"] == original
    capsys.readouterr()
    assert run(moved, "--shard", "1/2") == 0
    said = capsys.readouterr()
    assert f"was started on the data in {original}; this run reads {os.path.realpath(moved)}" in said.out + said.err
    assert read_json(out / "run.json")["data_root"] == original  # written once, by the run that started it
    roots = {v: read_json(out / "parts" / f"{v}.json")["stats"]["data_root"] for v in ds.videos}
    assert roots == {v: original if v in first else os.path.realpath(moved) for v in ds.videos}
    assert {s["video"]: s["data_root"] for s in read_json(out / "log.json")["videos"]} == roots
    assert_same_predictions(out, reference, ds.videos)


def test_torchrun_ranks_merge_to_the_numbers_of_one_run(env, reference, tmp_path):
    d, ds = env
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "entitysam", "eval", "vipseg", "--data-root", str(ds.root), "--checkpoint", str(d / "tiny.pth"),
           "--output", str(out), "--device", "cpu", "--threads", "1", "--workers", "1"]
    res = subprocess.run(cmd, env={**os.environ, **SUBPROCESS_ENV}, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "STQ" in res.stdout
    assert sorted(os.listdir(out / "logs")) == ["rank-0-of-2.jsonl", "rank-1-of-2.jsonl"]
    done = [json.loads(x)["video"] for f in sorted((out / "logs").iterdir()) for x in f.read_text().splitlines()]
    assert sorted(done) == list(ds.videos)  # each video ran once, on one rank
    assert_same_predictions(out, reference, ds.videos)


# ----------------------------------------------------------------------------- inputs and errors


def test_split_file_selects_a_subset(env, tmp_path):
    d, ds = env
    sub = tmp_path / "sub.txt"
    sub.write_text("vid_002\n\nvid_000\n")
    out = tmp_path / "out"
    assert run_eval(env, out, "--split-file", sub) == 0
    assert sorted(os.listdir(out / "parts")) == ["vid_000.json", "vid_002.json"]
    assert [v["video_id"] for v in read_json(out / "pred.json")["annotations"]] == ["vid_000", "vid_002"]  # GT order
    m = read_json(out / "metrics.json")
    assert m["run"]["videos"] == 2 and m["run"]["gt_json_videos"] == 3
    assert [s["video_id"] for s in m["stq"]["per_sequence"]] == ["vid_000", "vid_002"]
    # the same output folder refuses another video list
    assert run_eval(env, out) == 2


def test_default_split_file_is_found_beside_the_data_root(env, tmp_path):
    _, ds = env
    root = tmp_path / "VIPSeg" / "VIPSeg_720P"
    root.mkdir(parents=True)
    shutil.copy(ds.gt_json, root)
    (tmp_path / "VIPSeg" / "val.txt").write_text("vid_001\n")
    plan = load_plan(root, "val")
    assert plan.video_ids == ["vid_001"] and plan.split_file == (tmp_path / "VIPSeg" / "val.txt").resolve()
    (tmp_path / "VIPSeg" / "val.txt").unlink()
    plan = load_plan(root, "val")  # no split file: the GT JSON's list
    assert plan.video_ids == list(ds.videos) and plan.split_file is None


def test_errors_are_clear(env, model, reference, tmp_path, capsys):
    d, ds = env

    def err(*args, code=2, data_root=None):
        capsys.readouterr()
        rc = cli.main(["eval", "vipseg", "--data-root", str(data_root or ds.root), "--checkpoint",
                       str(d / "tiny.pth"), "--threads", "1", "--workers", "1", "-q", *map(str, args)])
        assert rc == code
        return capsys.readouterr().err

    out = tmp_path / "out"
    assert "data root not found" in err("-o", out, data_root=tmp_path / "nope")
    msg = err("-o", out, "--split", "test")
    assert "panoptic_gt_VIPSeg_test.json" in msg and "val" in msg
    assert "GT JSON not found" in err("-o", out, "--gt-json", tmp_path / "x.json")
    assert "split file not found" in err("-o", out, "--split-file", tmp_path / "none.txt")
    (tmp_path / "bad.txt").write_text("vid_000\nvid_999\n")
    assert "vid_999" in err("-o", out, "--split-file", tmp_path / "bad.txt")
    assert "shard 2/2: need" in err("-o", out, "--shard", "2/2")
    assert "holds no evaluation" in err("-o", out, "--merge-only")
    assert not out.exists()

    # a folder that is not an evaluation output is never written into
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    assert "not an entitysam evaluation" in err("-o", foreign)
    assert sorted(os.listdir(foreign)) == ["notes.txt"]

    # frames that do not match the GT, or missing: reported before any inference
    broken = tmp_path / "broken"
    shutil.copytree(ds.root, broken)
    (broken / "images" / "vid_001" / "00000004.jpg").unlink()
    shutil.rmtree(broken / "images" / "vid_002")
    msg = err("-o", tmp_path / "out2", data_root=broken)
    assert "vid_001" in msg and "00000004" in msg and "vid_002" in msg and "frame folder not found" in msg
    assert not (tmp_path / "out2" / "parts").exists() or not os.listdir(tmp_path / "out2" / "parts")

    # missing GT PNGs: refused before inference (unless --no-metrics)
    shutil.rmtree(broken / "panomasksRGB")
    shutil.copytree(ds.images_dir, broken / "images", dirs_exist_ok=True)
    assert "panomasksRGB" in err("-o", tmp_path / "out3", data_root=broken)
    assert err("-o", tmp_path / "out3", "--no-metrics", data_root=broken, code=0) == ""
    assert (tmp_path / "out3" / "pred.json").exists() and not (tmp_path / "out3" / "metrics.json").exists()

    # predictions of another model are not mixed in
    other = tmp_path / "other"
    shutil.copytree(reference, other)
    (other / "parts" / "vid_001.json").unlink()
    shutil.copy(d / "tiny.pth", tmp_path / "tiny2.pth")
    capsys.readouterr()
    rc = cli.main(["eval", "vipseg", "--data-root", str(ds.root), "--checkpoint", str(tmp_path / "tiny2.pth"),
                   "-o", str(other), "--threads", "1", "-q"])
    assert rc == 2 and "another model" in capsys.readouterr().err

    with pytest.raises(IncompleteError) as exc:
        merge_outputs(load_plan(ds.root), other)
    assert exc.value.missing == ["vid_001"]


def test_a_failing_video_does_not_stop_the_others_and_is_retried(env, reference, tmp_path, capsys):
    _, ds = env
    data = tmp_path / "data"
    shutil.copytree(ds.root, data)
    frame = data / "images" / "vid_001" / "00000002.jpg"
    good = frame.read_bytes()
    frame.write_bytes(b"not a jpeg")
    d = env[0]
    args = ["eval", "vipseg", "--data-root", str(data), "--checkpoint", str(d / "tiny.pth"), "-o", str(tmp_path / "out"),
            "--threads", "1", "--workers", "1", "-q"]
    capsys.readouterr()
    assert cli.main(args) == 1
    msg = capsys.readouterr().err
    assert "1 of 3 videos failed: vid_001" in msg and "00000002.jpg" in msg
    assert sorted(os.listdir(tmp_path / "out" / "parts")) == ["vid_000.json", "vid_002.json"]
    assert not (tmp_path / "out" / "pred.json").exists()
    frame.write_bytes(good)
    assert cli.main(args) == 0
    assert_same_predictions(tmp_path / "out", reference, ds.videos)


def test_a_named_pipe_in_place_of_a_run_log_is_never_written_into(tmp_path):
    """logs/<run>.jsonl was opened by name: a named pipe there made `eval vipseg` wait for a reader
    for ever (here a reader is open, so the old code wrote its record into the pipe instead). The
    log is a regular file or nothing: the record is left out, the run goes on."""
    out = EvalOutput(tmp_path)
    out.logs.mkdir(parents=True)
    os.mkfifo(out.logs / "run.jsonl")
    reader = os.open(out.logs / "run.jsonl", os.O_RDONLY | os.O_NONBLOCK)
    try:
        out.log("run", {"event": "video", "video": "v", "status": "done"})
        assert os.read(reader, 4096) == b""  # nothing was written into the pipe (and no writer holds it)
    finally:
        os.close(reader)
    out.log("other", {"event": "video", "video": "v", "status": "done"})  # a regular file: written as before
    assert json.loads((out.logs / "other.jsonl").read_text())["status"] == "done"


@pytest.mark.parametrize("kind", ["named-pipe", "not-an-object"])
def test_an_unusable_run_json_is_refused_without_waiting(tmp_path, kind):
    """run.json was read by name: a named pipe there made `eval vipseg` wait for ever before any
    work, and JSON that is not an object (`[1]`) was an AttributeError traceback."""
    import threading

    ds = make_vipseg_dataset(tmp_path / "root", num_videos=1, num_frames=2)
    plan = load_plan(ds.root, "val")
    out = tmp_path / "out"
    out.mkdir()
    if kind == "named-pipe":
        os.mkfifo(out / "run.json")
    else:
        (out / "run.json").write_text("[1]\n")
    errors: list[BaseException] = []
    done = threading.Event()

    def prepare():
        try:
            EvalOutput(out).prepare(plan)
        except BaseException as err:  # noqa: BLE001 - (looked at below)
            errors.append(err)
        done.set()

    threading.Thread(target=prepare, daemon=True).start()
    try:
        assert done.wait(10), "prepare() waited for a writer on the named pipe"
    finally:
        if not done.is_set():  # (the old code: let its read end, with nothing)
            os.close(os.open(out / "run.json", os.O_WRONLY | os.O_NONBLOCK))
    assert len(errors) == 1 and isinstance(errors[0], EvalInputError), errors
    assert ("run.json is not a regular file" if kind == "named-pipe" else "holds another evaluation") in str(errors[0])


def test_a_file_of_the_users_at_a_video_lock_path_fails_that_video_only(env, reference, tmp_path, capsys):
    """`pan_pred/.<video>.lock` holding a file of the user's (refused untouched by the lock) ended
    the whole run with one line, the videos after it never done: now that video fails, as a
    `segment --shard` batch fails it, the others are done, the run says which video was not
    evaluated and why (also in logs/run.jsonl), exits 1 and neither merges nor scores."""
    _, ds = env
    out = tmp_path / "out"
    EvalOutput(out).prepare(load_plan(ds.root))
    lock = out / "pan_pred" / ".vid_001.lock"
    lock.write_text("my notes about vid_001\n")
    capsys.readouterr()
    assert run_eval(env, out) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "Traceback" not in "\n".join(err), err
    assert err[0].startswith("error: [2/3] vid_001: failed: ") and str(lock) in err[0]
    assert "refusing to overwrite it" in err[0]
    assert err[1].startswith("error: 1 of 3 videos failed: vid_001 (not evaluated: pred.json and metrics.json")
    assert sorted(os.listdir(out / "parts")) == ["vid_000.json", "vid_002.json"]
    assert not (out / "pred.json").exists() and not (out / "metrics.json").exists()
    assert lock.read_text() == "my notes about vid_001\n"  # untouched, and no folder of the video made
    assert sorted(os.listdir(out / "pan_pred")) == [".vid_001.lock", "vid_000", "vid_002"]
    records = [json.loads(x) for x in (out / "logs" / "run.jsonl").read_text().splitlines()]
    assert [(r["video"], r["status"]) for r in records] == [("vid_000", "done"), ("vid_001", "failed"),
                                                             ("vid_002", "done")]
    assert str(lock) in records[1]["error"]
    lock.rename(tmp_path / "notes.txt")  # moved away: the re-run does the video, merges and scores
    assert run_eval(env, out) == 0
    assert_same_predictions(out, reference, ds.videos)


def test_a_run_with_a_failed_video_does_not_score_its_earlier_predictions(env, reference, tmp_path, capsys):
    """With --overwrite a video that fails keeps its earlier part: the run merged and scored it as
    if redone (metrics.json written, exit 1). A run with a failed video no longer merges."""
    d, ds = env
    data = tmp_path / "data"
    shutil.copytree(ds.root, data)
    (data / "images" / "vid_001" / "00000002.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    for name in ("pred.json", "metrics.json", "log.json"):
        (out / name).unlink()
    args = ["eval", "vipseg", "--data-root", str(data), "--checkpoint", str(d / "tiny.pth"), "-o", str(out),
            "--threads", "1", "--workers", "1", "-q", "--overwrite"]
    assert cli.main(args) == 1
    assert not (out / "pred.json").exists() and not (out / "metrics.json").exists()
    assert "1 of 3 videos failed: vid_001 (not evaluated" in capsys.readouterr().err
