"""Sharded batch segmentation on one machine (issue 22): `entitysam segment --batch DIR --shard I/N`,
torchrun ranks, Slurm array tasks, overlapping and killed shards, the summary JSON.

The demo model on 7 short generated videos (frame folders and mp4 files of 2 to 5 frames): a
sequential run is the reference; every sharded run must leave the same files, byte for byte,
except the timings in the manifests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _media import write_video
from entitysam import cli
from entitysam.distributed.jobs import SegmentOptions, VideoJob, segment_job
from entitysam.distributed.local import SUMMARY_DIR, default_summary_path, shard_from_env, shard_jobs
from entitysam.eval.runner.plan import VideoEntry
from entitysam.eval.runner.run import shard_videos
from entitysam.sharding import ShardError, balanced_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# name -> (kind, frames): lengths differ so that the split by frame count matters
VIDEOS = {"alpha": ("folder", 5), "bravo": ("mp4", 4), "charlie": ("folder", 2), "delta": ("mp4", 3),
          "echo": ("folder", 4), "foxtrot": ("folder", 3), "golf": ("mp4", 2)}
TOTAL_FRAMES = sum(n for _, n in VIDEOS.values())
COMMON = ["--model", "demo", "--save", "panoptic,entities", "--threads", "1"]
TIMING_KEYS = {"timings", "created", "updated", "seconds", "elapsed", "latency", "latency_seconds", "host", "pid"}


def _frames(seed: int, n: int) -> np.ndarray:
    from entitysam.data.synthetic.scenes import render_demo_scene

    images, _ = render_demo_scene(np.random.default_rng(seed), n, 48, 64)
    return images


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("batch-videos")
    for seed, (name, (kind, n)) in enumerate(VIDEOS.items()):
        images = _frames(seed, n)
        if kind == "folder":
            (root / name).mkdir()
            for t, image in enumerate(images):
                Image.fromarray(image).save(root / name / f"{t:05d}.png")
        else:
            write_video(root / f"{name}.mp4", n)
    return root


def segment(*args) -> int:
    return cli.main(["segment", *map(str, args)])


def segment_process(*args, env: dict | None = None, **popen) -> subprocess.Popen:
    """`entitysam segment ...` in its own process (the shards of a run)."""
    environ = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "entitysam", "segment", *map(str, args)], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


@pytest.fixture(scope="module")
def reference(batch, tmp_path_factory) -> Path:
    """One sequential run, the way `entitysam segment --batch` always ran."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert segment("--batch", batch, "-o", out, *COMMON, "-q") == 0
    assert sorted(os.listdir(out)) == sorted(VIDEOS)
    return out


def _strip_timings(value):
    if isinstance(value, dict):
        return {k: _strip_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_strip_timings(v) for v in value]
    return value


def tree(root: Path) -> dict[str, object]:
    """Every file under `root` (the batch summaries aside): its bytes, or for a manifest its
    JSON without the timing keys."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == SUMMARY_DIR or path.is_dir():
            continue
        if path.name == "manifest.json":
            files[str(rel)] = _strip_timings(json.loads(path.read_text()))
        elif path.suffix == ".jsonl":  # online entities: a latency per frame
            files[str(rel)] = [_strip_timings(json.loads(line)) for line in path.read_text().splitlines()]
        else:
            files[str(rel)] = path.read_bytes()
    return files


def assert_same_results(out: Path, reference: Path) -> None:
    got, want = tree(out), tree(reference)
    assert sorted(got) == sorted(want), "different files"
    different = [name for name in want if got[name] != want[name]]
    assert not different, f"files differ from the sequential run: {different}"


def read_summary(out: Path, shard: str) -> dict:
    i, n = (int(x) for x in shard.split("/"))
    return json.loads(default_summary_path(out, (i, n)).read_text())


# ----------------------------------------------------------------------------- split rule


def test_one_split_rule_for_segment_and_eval():
    frames = [5, 4, 2, 3, 4, 3, 2, None, 0]
    slices = [balanced_split(frames, i, 3) for i in range(3)]
    assert sorted(k for s in slices for k in s) == list(range(len(frames)))  # each video exactly once
    assert slices == [balanced_split(frames, i, 3) for i in range(3)]  # deterministic
    loads = [sum(max(frames[k] or 0, 1) for k in s) for s in slices]
    assert max(loads) - min(loads) <= 1
    entries = [VideoEntry(f"v{k}", tuple(f"{t}.png" for t in range(n or 0))) for k, n in enumerate(frames)]
    for i in range(3):  # eval vipseg slices with the same rule
        assert [e.video_id for e in shard_videos(entries, i, 3)] == [f"v{k}" for k in slices[i]]


@pytest.mark.parametrize("text, env, expected", [
    (None, {}, None),
    ("auto", {}, (0, 1)),
    ("1/3", {}, (1, 3)),
    (None, {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, (1, 2)),
    ("auto", {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, (1, 2)),
    (None, {"RANK": "0", "WORLD_SIZE": "1"}, None),
    ("auto", {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4)),
    ("auto", {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2",
              "SLURM_ARRAY_TASK_COUNT": "3"}, (2, 3)),
    (None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, None),  # only with --shard auto
    # no SLURM_ARRAY_TASK_COUNT (older Slurm): the count MIN..MAX by STEP spans, not 1
    ("auto", {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_MAX": "13"}, (2, 4)),
    ("auto", {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "6",
              "SLURM_ARRAY_TASK_STEP": "2"}, (2, 4)),
    # torchrun in an array job: rank R of W in array task I of N takes slice I*W + R of N*W
    ("auto", {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "SLURM_ARRAY_TASK_ID": "2",
              "SLURM_ARRAY_TASK_COUNT": "10"}, (19, 80)),
    ("auto", {"RANK": "1", "WORLD_SIZE": "2", "SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10",
              "SLURM_ARRAY_TASK_MAX": "12"}, (3, 6)),
    ("auto", {"RANK": "0", "WORLD_SIZE": "1", "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"}, (1, 3)),
    (None, {"RANK": "1", "WORLD_SIZE": "2", "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"}, (1, 2)),
])
def test_shard_of_this_process(text, env, expected):
    assert shard_from_env(text, env) == expected


def test_torchrun_ranks_of_an_array_job_cover_each_video_once():
    # Each rank took RANK/WORLD_SIZE whatever its array task: all 3 tasks did the same videos.
    jobs = [VideoJob(Path(f"v{k}"), f"v{k}", n) for k, n in enumerate([5, 4, 2, 3, 4, 3, 2, 1, 7, 6, 1, 2, 3])]
    taken = []
    for task in range(3):
        for rank in range(2):
            env = {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                   "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "3"}
            taken += [job.name for job in shard_jobs(jobs, shard_from_env("auto", env))]
    assert sorted(taken) == sorted(job.name for job in jobs)


def test_local_rank_only_under_torchrun_with_several_ranks():
    from entitysam.distributed.local import local_rank

    assert local_rank({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == 1
    assert local_rank({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) is None
    assert local_rank({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}) is None


@pytest.mark.parametrize("text, env", [
    ("2/2", {}), ("1", {}), ("a/b", {}), ("-1/2", {}), ("0/0", {}), ("1/2/3", {}),
    ("0/2", {"RANK": "0", "WORLD_SIZE": "2"}),
    ("auto", {"RANK": "x", "WORLD_SIZE": "2"}),
    ("auto", {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"}),
    ("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2",
              "SLURM_ARRAY_TASK_COUNT": "4"}),
    ("auto", {"SLURM_ARRAY_TASK_ID": "one", "SLURM_ARRAY_TASK_COUNT": "4"}),
    ("auto", {"SLURM_ARRAY_TASK_ID": "0"}),  # no count: was 1, i.e. task 0 took every video, the others failed
    ("auto", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0"}),
    ("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MAX": "3"}),
    ("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_MAX": "2"}),
    ("auto", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "5",
              "SLURM_ARRAY_TASK_STEP": "2"}),
    ("auto", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_STEP": "0", "SLURM_ARRAY_TASK_COUNT": "4"}),
    ("auto", {"RANK": "0", "WORLD_SIZE": "2", "SLURM_ARRAY_TASK_ID": "1"}),
])
def test_bad_shards_refused(text, env):
    with pytest.raises(ShardError):
        shard_from_env(text, env)


@pytest.mark.parametrize("args, env, words", [
    (["--shard", "2/2"], {}, "0 <= I < N"),
    (["--shard", "x"], {}, "I/N"),
    (["--shard", "0/2"], {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "torchrun"),
    (["--shard", "auto"], {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "2"}, "contiguous array 0-1"),
    (["--shard", "auto"], {"SLURM_ARRAY_TASK_ID": "5"}, "no SLURM_ARRAY_TASK_COUNT (nor SLURM_ARRAY_TASK_MIN and "
     "SLURM_ARRAY_TASK_MAX), so the number of array tasks is unknown: use --shard I/N instead"),
    (["--summary", "s.json"], {}, "--summary needs --shard, torchrun or --ray"),  # --ray takes one too
])
def test_bad_shard_command_lines_exit_2_with_one_line(batch, tmp_path, monkeypatch, capsys, args, env, words):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
                "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP", "SLURM_ARRAY_TASK_MAX"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert segment("--batch", batch, "-o", tmp_path / "out", *COMMON, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the per-video function


def test_segment_job_reports_busy_skipped_done_and_failed(batch, reference, tmp_path):
    from entitysam import EntitySAM
    from entitysam.io.output_lock import OutputLock

    model = EntitySAM.from_pretrained("demo")
    options = SegmentOptions(formats=("panoptic", "entities"), skip_existing=True, quiet=True)
    out = tmp_path / "out"
    job = VideoJob(batch / "charlie", "charlie", 2)
    lock = _lock_in_other_process(out / "charlie")
    try:
        busy = segment_job(model, job, options, out)
    finally:
        lock.kill()
        lock.wait()
    assert (busy.status, busy.frames, busy.error is not None) == ("busy", 0, True)
    assert not (out / "charlie").exists()
    done = segment_job(model, job, options, out)
    assert (done.status, done.frames, done.output) == ("done", 2, str(out / "charlie"))
    assert tree(out / "charlie") == tree(reference / "charlie")
    assert segment_job(model, job, options, out).status == "skipped"
    errors = []
    failed = segment_job(model, VideoJob(batch / "missing", "missing"), options, out, say_error=errors.append)
    assert failed.status == "failed" and "missing" in failed.error and len(errors) == 1
    assert json.loads(json.dumps(failed.to_json()))["status"] == "failed"
    assert OutputLock._held == {}  # every lock released


def _lock_in_other_process(final: Path) -> subprocess.Popen:
    """A process holding the lock of `final` until killed."""
    code = ("import sys, time; from entitysam.io.output_lock import OutputLock; "
            f"OutputLock.acquire({str(final)!r}); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# ----------------------------------------------------------------------------- shards


def test_two_concurrent_shards_then_a_rerun_equal_one_sequential_run(batch, reference, tmp_path):
    out = tmp_path / "out"
    procs = [segment_process("--batch", batch, "-o", out, *COMMON, "--shard", s) for s in ("0/2", "1/2")]
    results = [finish(p) for p in procs]
    assert [rc for rc, _ in results] == [0, 0], [err for _, err in results]
    assert_same_results(out, reference)
    summaries = [read_summary(out, s) for s in ("0/2", "1/2")]
    assert sorted(n for s in summaries for n in s["done"]) == sorted(VIDEOS)
    for k, s in enumerate(summaries):
        assert s["format"] == "entitysam-batch-summary" and s["shard"] == {"index": k, "count": 2}
        assert s["skipped"] == s["busy"] == s["failed"] == []
        assert s["videos"] == len(s["done"]) == len(s["outcomes"])
        assert s["frames"] == sum(VIDEOS[n][1] for n in s["done"])
        assert s["frames_per_second"] > 0 and s["seconds"] > 0 and s["pid"] > 0 and s["host"]
    loads = [s["frames"] for s in summaries]
    assert sum(loads) == TOTAL_FRAMES and abs(loads[0] - loads[1]) <= 1  # balanced by frame count
    n0 = summaries[0]["videos"]
    assert re.search(rf"shard 0/2: {n0} videos: {n0} done, 0 skipped, 0 busy, 0 failed; "
                     rf"{loads[0]} frames in [0-9.]+s \([0-9.]+ frames/s\)", results[0][1]), results[0][1]

    rc, err = finish(segment_process("--batch", batch, "-o", out, *COMMON, "--shard", "0/2"))
    assert rc == 0, err
    again = read_summary(out, "0/2")
    assert again["done"] == [] and sorted(again["skipped"]) == sorted(summaries[0]["done"])
    assert again["frames"] == 0 and again["frames_per_second"] is None
    assert "model" not in err  # a finished shard loads no model
    assert_same_results(out, reference)


def test_overlapping_shards_never_process_a_video_twice(batch, reference, tmp_path):
    out = tmp_path / "out"
    shards = ("0/1", "0/1", "1/2")
    procs = [segment_process("--batch", batch, "-o", out, *COMMON, "--shard", s,
                             "--summary", tmp_path / f"summary-{k}.json") for k, s in enumerate(shards)]
    results = [finish(p) for p in procs]
    assert [rc for rc, _ in results] == [0, 0, 0], [err for _, err in results]
    summaries = [json.loads((tmp_path / f"summary-{k}.json").read_text()) for k in range(len(shards))]
    done = [n for s in summaries for n in s["done"]]
    assert len(done) == len(set(done)), f"processed twice: {done}"
    assert not any(s["failed"] for s in summaries)
    assert finish(segment_process("--batch", batch, "-o", out, *COMMON, "--shard", "0/1"))[0] == 0
    assert_same_results(out, reference)


def test_a_shard_killed_mid_video_is_finished_by_a_rerun(batch, reference, tmp_path):
    out = tmp_path / "out"
    proc = segment_process("--batch", batch, "-o", out, *COMMON, "--shard", "0/1")
    deadline = time.monotonic() + 300
    while not (out.is_dir() and any(".partial-" in p.name for p in out.iterdir())):  # a video half written
        assert proc.poll() is None and time.monotonic() < deadline, "the shard ended before a video was staged"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    complete = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    assert len(complete) < len(VIDEOS)
    assert any(".partial-" in p.name for p in out.iterdir())  # the killed video's leftovers

    rc, err = finish(segment_process("--batch", batch, "-o", out, *COMMON, "--shard", "0/1"))
    assert rc == 0, err
    assert_same_results(out, reference)
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != SUMMARY_DIR]
    assert leftovers == []
    summary = read_summary(out, "0/1")
    assert sorted(summary["skipped"]) == sorted(complete)
    assert len(summary["done"]) == len(VIDEOS) - len(complete)


def _killed_while_staging(args, out: Path, name: str) -> None:
    """Run `segment *args` and SIGKILL it once it stages `name` (as the OOM killer would)."""
    proc = segment_process(*args)
    deadline = time.monotonic() + 300
    staging = f".{name}.partial-{proc.pid}-"  # (not the one a killed run left)
    while not (out.is_dir() and any(p.name.startswith(staging) for p in out.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, f"the shard ended before staging {name}"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def test_a_video_that_kills_its_shard_every_time_does_not_block_the_others(batch, reference, tmp_path):
    """A video that kills the process each time it is segmented (out of memory on a huge video,
    a crash in its decoder): the slice's first video here. Each re-run began with it again and was
    killed again, so the other videos of the slice were never done, re-run after re-run. A
    video whose earlier run was killed now goes last."""
    videos = tmp_path / "videos"
    for name in ("alpha", "charlie"):
        shutil.copytree(batch / name, videos / name)
    out = tmp_path / "out"
    args = ("--batch", videos, "-o", out, *COMMON, "--shard", "0/1")
    _killed_while_staging(args, out, "alpha")  # alpha first: nothing done
    _killed_while_staging(args, out, "alpha")  # again: now after charlie
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == ["charlie"]  # was: none
    rc, err = finish(segment_process(*args))
    assert rc == 0, err
    assert "alpha: an earlier run was killed while segmenting it" in err
    assert read_summary(out, "0/1")["outcomes"][0]["name"] == "alpha"  # outcomes in the slice's order
    for name in ("alpha", "charlie"):  # (the manifests name the inputs' other folder)
        files = {k: v for k, v in tree(out / name).items() if k != "manifest.json"}
        assert files == {k: v for k, v in tree(reference / name).items() if k != "manifest.json"}
        assert tree(out / name)["manifest.json"]["complete"] is True


def test_torchrun_ranks_equal_one_sequential_run(batch, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--module", "entitysam", "segment", "--batch", str(batch), "-o", str(out), *COMMON, "-q"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_results(out, reference)
    summaries = [read_summary(out, s) for s in ("0/2", "1/2")]
    assert sorted(n for s in summaries for n in s["done"]) == sorted(VIDEOS)
    assert len({s["pid"] for s in summaries}) == 2


def test_a_torchrun_rank_with_a_failed_video_does_not_stop_the_others(tmp_path):
    """torchrun stops every rank (SIGTERM) once one exits non-zero. Rank 1's only video is not a
    video: it failed at once and rank 1 exited 1, which stopped rank 0 in the middle of its long
    video (exit 130, no result, no summary), and so on at every re-run. A rank about to exit
    with an error now waits for the other ranks of its node first."""
    videos = tmp_path / "videos"
    (videos / "long").mkdir(parents=True)
    for t, image in enumerate(_frames(0, 16)):  # slice 0 (the heavier video)
        Image.fromarray(image).save(videos / "long" / f"{t:05d}.png")
    (videos / "broken.mp4").write_text("not a video")  # slice 1
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--module", "entitysam", "segment", "--batch", str(videos), "-o", str(out), *COMMON]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0  # rank 1 failed a video
    first, second = read_summary(out, "0/2"), read_summary(out, "1/2")  # was: no summary of rank 0
    assert first["done"] == ["long"] and (out / "long" / "manifest.json").is_file(), proc.stderr[-3000:]
    assert [f["name"] for f in second["failed"]] == ["broken"]
    assert "[shard 1/2] waiting for the other ranks to end" in proc.stderr
    assert not list(Path(tempfile.gettempdir()).glob(f"entitysam-ranks-{os.getuid()}/*"))  # no marker left


def test_torchrun_ranks_that_all_fail_do_not_wait_for_each_other(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("broken1.mp4", "broken2.mp4"):  # one in each slice: both ranks exit 1
        (videos / name).write_text("not a video")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--module", "entitysam", "segment", "--batch", str(videos), "-o", str(tmp_path / "out"), *COMMON]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert sorted(f["name"] for s in ("0/2", "1/2") for f in read_summary(tmp_path / "out", s)["failed"]) == \
        ["broken1", "broken2"]


def test_shard_auto_under_a_slurm_array_is_the_explicit_shard(batch, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(reference, out)  # complete: both runs only list, split and skip
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert segment("--batch", batch, "-o", out, *COMMON, "-q", "--shard", "1/3") == 0
    explicit = read_summary(out, "1/3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "11")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "10")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert segment("--batch", batch, "-o", out, *COMMON, "-q", "--shard", "auto",
                   "--summary", tmp_path / "auto.json") == 0
    auto = json.loads((tmp_path / "auto.json").read_text())
    assert auto["shard"] == explicit["shard"] == {"index": 1, "count": 3}
    assert auto["skipped"] == explicit["skipped"] and len(auto["skipped"]) == auto["videos"] > 0


def test_shard_auto_for_torchrun_in_a_slurm_array_is_its_part_of_the_array_task(batch, reference, tmp_path,
                                                                                 monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(reference, out)  # complete: both runs only list, split and skip
    assert segment("--batch", batch, "-o", out, *COMMON, "-q", "--shard", "5/6") == 0
    explicit = read_summary(out, "5/6")
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "SLURM_ARRAY_TASK_ID": "12",
                       "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_MAX": "12", "SLURM_ARRAY_TASK_COUNT": "3",
                       "SLURM_ARRAY_TASK_STEP": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert segment("--batch", batch, "-o", out, *COMMON, "-q", "--device", "cpu", "--shard", "auto",
                   "--summary", tmp_path / "auto.json") == 0
    auto = json.loads((tmp_path / "auto.json").read_text())  # shard 2*2 + 1 of 3*2, not rank 1 of 2
    assert auto["shard"] == explicit["shard"] == {"index": 5, "count": 6}
    assert auto["videos"] == explicit["videos"] and auto["skipped"] == explicit["skipped"]


def test_a_failed_video_is_in_the_summary_and_exits_1(batch, tmp_path, capsys):
    videos = tmp_path / "videos"
    shutil.copytree(batch / "charlie", videos / "charlie")
    (videos / "broken.mp4").write_text("not a video")
    out = tmp_path / "out"
    assert segment("--batch", videos, "-o", out, *COMMON, "-q", "--shard", "0/1") == 1
    summary = read_summary(out, "0/1")
    assert summary["done"] == ["charlie"] and summary["failed"][0]["name"] == "broken"
    assert "broken" in summary["failed"][0]["error"]
    assert "1 of 2 videos failed: broken" in capsys.readouterr().err


def test_online_mode_shards_equal_an_online_sequential_run(batch, tmp_path):
    videos = tmp_path / "videos"
    shutil.copytree(batch / "charlie", videos / "charlie")
    shutil.copy(batch / "golf.mp4", videos / "golf.mp4")
    online = [*COMMON, "-q", "--online", "--delay", "1"]
    assert segment("--batch", videos, "-o", tmp_path / "sequential", *online) == 0
    for shard in ("0/2", "1/2"):
        assert segment("--batch", videos, "-o", tmp_path / "sharded", *online, "--shard", shard) == 0
    assert_same_results(tmp_path / "sharded", tmp_path / "sequential")
    assert sorted(read_summary(tmp_path / "sharded", "0/2")["done"] + read_summary(tmp_path / "sharded", "1/2")["done"]) \
        == ["charlie", "golf"]
