"""Batch segmentation on a local Ray cluster (`entitysam.distributed.segment_many`,
`entitysam segment --ray`): the same files as a sequential run, a killed actor's video retried.

One Ray session (2 CPUs) is shared by the module's tests: starting Ray takes ~10-20 s here.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from _video_compare import DecodedVideo
from entitysam.distributed.jobs import SegmentOptions, VideoJob, segment_job
from entitysam.io.sources import FrameSelection

NUM_VIDEOS = 6
TIMINGS = ("seconds", "created")  # the only manifest keys that differ between runs


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    """6 small demo-scene frame folders of 2 to 4 frames (different lengths: longest first matters)."""
    from entitysam.data.synthetic.demo import make_demo_video

    root = tmp_path_factory.mktemp("ray-videos")
    for i in range(NUM_VIDEOS):
        make_demo_video(root, num_frames=2 + i % 3, width=64, height=48, seed=i, name=f"video{i}")
    return sorted((root / "images").iterdir())


@pytest.fixture(scope="module")
def sequential(videos, tmp_path_factory, one_torch_thread) -> Path:
    """The results of a sequential run (what `entitysam segment` does, one torch thread)."""
    from entitysam.pipeline.loading import load_model

    out = tmp_path_factory.mktemp("sequential")
    model = load_model(None, config="demo", device="cpu")
    for path in videos:
        outcome = segment_job(model, VideoJob(path, path.name), SegmentOptions(quiet=True), out)
        assert outcome.status == "done", outcome
    return out


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'entitysam[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def tree(root: Path) -> dict[str, object]:
    """Every file under root (hidden ones included) -> its bytes; manifests without timings;
    overlay videos as their decoded frames (x264 is not bit-reproducible under load, see
    tests/_video_compare.py)."""
    files: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(root).as_posix()
        if path.name == "manifest.json":
            doc = json.loads(path.read_text())
            files[rel] = {k: v for k, v in doc.items() if k not in TIMINGS}
        elif path.suffix in (".mp4", ".ts"):
            files[rel] = DecodedVideo(path)
        else:
            files[rel] = path.read_bytes()
    return files


def results(root: Path) -> dict[str, object]:
    """tree() without the batch summaries (a sequential run writes none)."""
    return {k: v for k, v in tree(root).items() if not k.startswith(".entitysam-batch/")}


def test_two_actors_write_what_a_sequential_run_writes(ray_session, videos, sequential, tmp_path):
    from entitysam.distributed import segment_many

    out = tmp_path / "out"
    summary = segment_many(videos, out, num_actors=2, model="demo", device="cpu", options=SegmentOptions(),
                           progress=False, summary_path=out / ".entitysam-batch" / "ray.json")
    assert summary.ok and summary.names("done") == [p.name for p in videos]
    assert summary.actors == 2 and summary.lost == []
    assert summary.frames == sum(2 + i % 3 for i in range(NUM_VIDEOS))
    assert results(out) == tree(sequential)
    written = json.loads((out / ".entitysam-batch" / "ray.json").read_text())
    assert written["format"] == "entitysam-batch-summary" and written["runner"] == "ray"
    assert written["done"] == [p.name for p in videos] and written["lost"] == []
    # a re-run with skip_existing finds every result complete on the driver: no actor started
    again = segment_many(videos, out, model="demo", options=SegmentOptions(skip_existing=True), progress=False)
    assert again.names("skipped") == [p.name for p in videos] and again.actors == 0
    assert results(out) == tree(sequential)
    # one that does not answer the run (another frame selection) is not skipped: it fails, untouched
    other = SegmentOptions(skip_existing=True, selection=FrameSelection(max_frames=1))
    mismatched = segment_many(videos[:1], out, model="demo", device="cpu", options=other, progress=False)
    assert mismatched.names("failed") == [videos[0].name]
    assert "made from other frames" in mismatched.outcomes[0].error
    assert results(out) == tree(sequential)


def _kill_when_started(out: Path, name: str, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the process that stages `name` (``.<name>.partial-<pid>-<hex>``): mid-video."""
    prefix = f".{name}.partial-"
    while not stop.is_set():
        for entry in (out.iterdir() if out.is_dir() else ()):
            if entry.name.startswith(prefix):
                pid = int(entry.name[len(prefix):].split("-")[0])
                assert pid != os.getpid()  # an actor, never this driver
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.02)


def test_a_killed_actor_s_video_is_retried_and_reported(ray_session, videos, sequential, tmp_path):
    from entitysam.distributed import segment_many

    out = tmp_path / "out"
    target = videos[2].name  # 4 frames: among the first started (longest first)
    killed: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_kill_when_started, args=(out, target, killed, stop), daemon=True)
    watcher.start()
    errors: list[str] = []
    try:
        summary = segment_many(videos[:3], out, num_actors=2, model="demo", device="cpu", max_retries=2,
                               progress=False, say_error=errors.append)
    finally:
        stop.set()
        watcher.join()
    assert len(killed) == 1
    assert summary.ok and summary.names("done") == [p.name for p in videos[:3]]
    assert [(w.name, w.attempt) for w in summary.lost] == [(target, 1)]
    assert summary.to_json()["lost"][0]["name"] == target
    assert any(line.startswith(f"{target}: its worker was lost") and "retry 1 of 2" in line for line in errors)
    expected = {k: v for k, v in tree(sequential).items() if k.split("/")[0] in {p.name for p in videos[:3]}}
    assert results(out) == expected  # the retry's result is complete, the killed run left nothing behind


def test_a_rerun_recovers_what_a_killed_commit_left_beside_a_complete_result(videos, sequential, tmp_path):
    """An actor killed (or the driver Ctrl-C'd) between the two last steps of an --overwrite
    commit: the new result in place, the old one half deleted in a hidden .old- folder, the lock
    file left. The driver skips complete results without their lock, so every later run kept
    those beside the result for good (a resumed shard recovers them first; now so does Ray)."""
    import shutil

    from entitysam.distributed import segment_many

    pytest.importorskip("ray", reason="Ray is not installed (pip install 'entitysam[ray]')")
    out = tmp_path / "out"
    shutil.copytree(sequential / "video0", out / "video0")
    shutil.copytree(sequential / "video0", out / ".video0.old-999999999-0123abcd")
    (out / ".video0.lock").write_text("999999999 node17\n")
    summary = segment_many(videos[:1], out, model="demo", options=SegmentOptions(skip_existing=True),
                           progress=False)
    assert summary.names("skipped") == ["video0"] and summary.actors == 0  # nothing started
    assert sorted(os.listdir(out)) == ["video0"]
    assert results(out) == {k: v for k, v in tree(sequential).items() if k.startswith("video0/")}


def test_cli_ray_runs_the_batch_on_the_session(ray_session, videos, sequential, tmp_path, capsys):
    from entitysam.cli import main

    out = tmp_path / "out"
    code = main(["segment", str(videos[0]), str(videos[1]), "-o", str(out), "--ray", "--actors", "2",
                 "--model", "demo", "--device", "cpu", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "videos: 100%" in err and "2/2" in err  # the driver's progress bar of videos
    assert "ray, 2 actors: 2 videos: 2 done, 0 skipped, 0 busy, 0 failed" in err  # the summary line
    expected = {k: v for k, v in tree(sequential).items() if k.split("/")[0] in {videos[0].name, videos[1].name}}
    assert results(out) == expected
    summaries = list((out / ".entitysam-batch").glob("*.json"))
    assert len(summaries) == 1 and json.loads(summaries[0].read_text())["runner"] == "ray"


def test_cli_ray_redoes_an_unfinished_result_as_a_shard_does(ray_session, videos, sequential, tmp_path, capsys):
    """--ray is resumable "like --shard": a complete result is skipped, but an unfinished one (an
    online video stopped by SIGTERM) failed every re-run, which only --overwrite (redoing the whole
    batch) got past."""
    import shutil

    from entitysam.cli import main

    out = tmp_path / "out"
    for video in videos[:2]:
        shutil.copytree(sequential / video.name, out / video.name)
    manifest = json.loads((out / videos[0].name / "manifest.json").read_text())
    manifest.update(complete=False, status="interrupted")
    (out / videos[0].name / "manifest.json").write_text(json.dumps(manifest))
    code = main(["segment", str(videos[0]), str(videos[1]), "-o", str(out), "--ray", "--actors", "1",
                 "--model", "demo", "--device", "cpu", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "ray, 1 actors: 2 videos: 1 done, 1 skipped, 0 busy, 0 failed" in err, err
    assert json.loads((out / videos[0].name / "manifest.json").read_text())["complete"] is True


def test_cli_ray_words_a_failed_video_with_the_flags(ray_session, videos, sequential, tmp_path, capsys):
    """A video that fails on an actor is reported as the local batch reports it: the remedy is
    the flag (--overwrite), not the Python argument (overwrite=True)."""
    import shutil

    from entitysam.cli import main

    out = tmp_path / "out"
    # a complete result of other settings (every frame, not every other one): only --overwrite replaces it
    shutil.copytree(sequential / videos[0].name, out / videos[0].name)
    code = main(["segment", str(videos[0]), "-o", str(out), "--ray", "--actors", "1", "--model", "demo",
                 "--device", "cpu", "--threads", "1", "--stride", "2", "-q"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"{videos[0].name}: " in err and "holds a complete result that does not answer this run" in err, err
    assert "use --overwrite to replace it" in err and "overwrite=True" not in err
    summary = json.loads((out / ".entitysam-batch" / "ray.json").read_text())
    assert "use --overwrite" in summary["failed"][0]["error"]


def test_cli_ray_without_ray_installed_says_how_to_install(monkeypatch, videos, tmp_path, capsys):
    from entitysam.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(["segment", str(videos[0]), "-o", str(tmp_path / "out"), "--ray", "--model", "demo"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "pip install 'entitysam[ray]'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--actors", "2"], "--actors needs --ray"),
    (["--gpus-per-actor", "1"], "--gpus-per-actor needs --ray"),
    (["--ray", "--online"], "--online is not available with --ray"),
])
def test_cli_ray_options_are_checked(flags, message, videos, tmp_path, capsys):
    from entitysam.cli import main

    code = main(["segment", str(videos[0]), "-o", str(tmp_path / "out"), "--model", "demo", *flags])
    assert code == 2
    assert message in capsys.readouterr().err


def test_segment_many_refuses_bad_numbers(videos, tmp_path):
    from entitysam.distributed import segment_many
    from entitysam.errors import InvalidArgumentError

    for kwargs in ({"num_actors": 0}, {"gpus_per_actor": -1.0}, {"cpus_per_actor": 0}, {"max_retries": -1}):
        with pytest.raises(InvalidArgumentError):
            segment_many(videos[:1], tmp_path / "out", model="demo", **kwargs)


def test_segment_many_refuses_actors_the_cluster_cannot_hold(ray_session, videos, tmp_path):
    from entitysam.distributed import segment_many
    from entitysam.errors import EntitySAMError

    with pytest.raises(EntitySAMError, match="has 2 CPUs and 0 GPUs: one actor needs 1 CPUs and 1 GPUs"):
        segment_many(videos[:1], tmp_path / "out", model="demo", gpus_per_actor=1.0, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_model_that_cannot_load_is_one_error(ray_session, videos, tmp_path):
    from entitysam.distributed import segment_many
    from entitysam.errors import EntitySAMError

    with pytest.raises(EntitySAMError, match="missing.pth"):
        segment_many(videos[:2], tmp_path / "out", model=str(tmp_path / "missing.pth"), num_actors=1,
                     progress=False)


def test_an_input_inside_an_earlier_result_is_never_replaced(ray_session, videos, sequential, tmp_path):
    import shutil

    from entitysam.distributed import segment_many

    out = tmp_path / "out"
    shutil.copytree(sequential / "video0", out / "video0")  # an earlier result (entitysam wrote it) ...
    video = out / "video0" / "kept" / "video0"  # ... holding the input: --overwrite must not delete it
    shutil.copytree(videos[0], video)
    before = {p.name: p.read_bytes() for p in video.iterdir()}
    errors: list[str] = []
    summary = segment_many([video], out, model="demo", num_actors=1, progress=False,
                           options=SegmentOptions(overwrite=True), say_error=errors.append)
    assert summary.names("failed") == ["video0"] and errors and errors[0].startswith("video0: ")
    assert {p.name: p.read_bytes() for p in video.iterdir()} == before


# ----------------------------------------------------------------------------- the pool's retries, without Ray


class _Ref:
    """A finished task: its value, or the exception ray.get raises (never: a task that never ends,
    an actor's ready() that the cluster never places)."""

    def __init__(self, value=None, error=None, never=False):
        self.value, self.error, self.never = value, error, never


def _ready(error=None, never=False):
    """An actor's ready(), as a remote method."""
    info = {"pid": 1, "host": "node", "device": "cpu", "error": error}
    return type("Ready", (), {"remote": staticmethod(lambda: _Ref(info, never=never))})


class _FakeRay:
    """The few Ray calls of run_pool: every task finishes at once, in submission order."""

    class exceptions:
        class RayActorError(Exception):
            pass

        class RayTaskError(Exception):
            def __init__(self, cause):
                super().__init__(f"task failed: {cause}")
                self.cause = cause

    put = staticmethod(lambda value: value)
    kill = staticmethod(lambda actor, no_restart=True: None)

    @staticmethod
    def wait(refs, num_returns=1):
        ends = [r for r in refs if not r.never]
        assert ends, "waits for ever: on tasks that never end"
        return ends[:num_returns], [r for r in refs if r not in ends[:num_returns]]

    @staticmethod
    def get(ref):
        if ref.error is not None:
            raise ref.error
        return ref.value


def _fake_task(job) -> _Ref:
    from entitysam.distributed.jobs import VideoOutcome

    if job.name == "die":
        return _Ref(error=_FakeRay.exceptions.RayActorError("The actor died unexpectedly\ndetails"))
    if job.name == "bug":
        return _Ref(error=_FakeRay.exceptions.RayTaskError(KeyError("boom")))
    return _Ref(VideoOutcome(job.name, "done", frames=3))


def test_a_video_whose_worker_is_always_lost_fails_after_max_retries(tmp_path):
    from entitysam.distributed.ray_pool import ModelSpec, Pool, run_pool

    class Run:
        remote = staticmethod(lambda job, options, out_root, cwd: _fake_task(job))

    class Worker:
        started = 0

        def __init__(self, spec, protect, describe_error=str):
            Worker.started += 1
            self.run = Run
            self.ready = _ready()

        @classmethod
        def remote(cls, spec, protect, describe_error=str):
            return cls(spec, protect, describe_error)

    pool = Pool(_FakeRay, Worker, ModelSpec("demo"), 2)
    jobs = [VideoJob(Path(n), n) for n in ("die", "ok", "bug")]
    errors: list[str] = []
    outcomes, lost = run_pool(_FakeRay, pool, jobs, SegmentOptions(), tmp_path, 2, lambda o: None, errors.append)
    assert outcomes["ok"].status == "done"
    assert outcomes["die"].status == "failed" and "lost 3 times (max_retries=2)" in outcomes["die"].error
    assert [(w.name, w.attempt) for w in lost] == [("die", 1), ("die", 2), ("die", 3)]
    assert lost[0].reason == "RayActorError: The actor died unexpectedly"
    assert [e for e in errors if "retry" in e] == [
        "die: its worker was lost (RayActorError: The actor died unexpectedly); retry 1 of 2 on a new worker",
        "die: its worker was lost (RayActorError: The actor died unexpectedly); retry 2 of 2 on a new worker"]
    assert pool.restarts == 3 and Worker.started == 2 + 3  # each loss: a new actor in its slot
    # an error of the video's own is not retried: failed at once, with its cause
    assert outcomes["bug"].status == "failed" and outcomes["bug"].error == "KeyError: 'boom'"


@pytest.mark.parametrize("other", ["never placed", "without its model"])
def test_videos_go_only_to_actors_that_are_ready(tmp_path, other):
    """Videos were given to every actor at once: one the cluster could not place (more actors than
    fit) never ran its video, and the run waited for it for good once the others were done; one
    whose model did not load (a node without the checkpoint) failed each video it was given, at
    once, and so most of the batch. The ready actors do every video now."""
    from entitysam.distributed.ray_pool import ModelSpec, Pool, run_pool

    ran = []

    def worker_class():
        class Worker:
            started = 0

            def __init__(self):
                Worker.started += 1
                first = Worker.started == 1
                self.ready = _ready() if first else _ready(error="missing.pth: no such file",
                                                           never=other == "never placed")
                self.run = type("Run", (), {"remote": staticmethod(
                    lambda job, options, out_root, cwd: ran.append((first, job.name)) or _fake_task(job))})

            @classmethod
            def remote(cls, spec, protect, describe_error=str):
                return cls()
        return Worker

    killed = []

    class Ray(_FakeRay):
        kill = staticmethod(lambda actor, no_restart=True: killed.append(actor))

    pool = Pool(Ray, worker_class(), ModelSpec("demo"), 2)
    jobs = [VideoJob(Path(n), n) for n in ("a", "b", "c")]
    errors: list[str] = []
    outcomes, _ = run_pool(Ray, pool, jobs, SegmentOptions(), tmp_path, 2, lambda o: None, errors.append)
    assert {n: o.status for n, o in outcomes.items()} == {"a": "done", "b": "done", "c": "done"}
    assert ran == [(True, "a"), (True, "b"), (True, "c")]
    if other == "without its model":  # retired, its resources back to the cluster
        assert errors == ["an actor on node could not load the model (missing.pth: no such file): the others go on"]
        assert killed == [pool.actors[1]]


def test_when_no_actor_has_its_model_every_video_fails_with_the_reason(tmp_path):
    from entitysam.distributed.ray_pool import ModelSpec, Pool, run_pool

    class Worker:
        def __init__(self):
            self.ready = _ready(error="missing.pth: no such file")

        @classmethod
        def remote(cls, spec, protect, describe_error=str):
            return cls()

    pool = Pool(_FakeRay, Worker, ModelSpec("demo"), 2)
    outcomes, _ = run_pool(_FakeRay, pool, [VideoJob(Path("a"), "a")], SegmentOptions(), tmp_path, 2,
                           lambda o: None, lambda m: None)
    assert outcomes["a"].status == "failed" and outcomes["a"].error == "missing.pth: no such file"


def test_an_actor_lost_while_loading_the_model_is_replaced():
    """The first actor to answer had died while loading the model (killed by the OOM killer, its
    node gone): its RayActorError ended the whole run with a traceback, the other actors ready.
    It is replaced like an actor lost on a video; an actor lost every time ends in one error."""
    from entitysam.distributed.ray_pool import ModelSpec, Pool
    from entitysam.errors import EntitySAMError

    def worker_class(dies: int):
        class Worker:
            started = 0

            def __init__(self):
                Worker.started += 1
                lost = Worker.started <= dies
                info = {"pid": Worker.started, "host": "node", "device": "cpu", "error": None}
                self.ready = type("Ready", (), {"remote": staticmethod(lambda: _Ref(
                    info, _FakeRay.exceptions.RayActorError("The actor died unexpectedly") if lost else None))})

            @classmethod
            def remote(cls, spec, protect, describe_error=str):
                return cls()

        return Worker

    pool = Pool(_FakeRay, worker_class(1), ModelSpec("demo"), 2)
    assert pool.first_ready()["pid"] in (2, 3) and pool.restarts == 1  # was: RayActorError raised
    errors: list[str] = []
    pool = Pool(_FakeRay, worker_class(1), ModelSpec("demo"), 2)
    pool.first_ready(2, errors.append)
    assert errors == [
        "an actor was lost while loading the model (RayActorError: The actor died unexpectedly); "
        "starting a new one (1 of 2)"]
    pool = Pool(_FakeRay, worker_class(99), ModelSpec("demo"), 2)
    with pytest.raises(EntitySAMError, match="lost 3 times while loading the model"):
        pool.first_ready(2)
    assert pool.restarts == 2


@pytest.mark.parametrize("gpus, share", [(0.25, 0.25), (0.5, 0.5), (1.0, None), (0, None)])
def test_actors_sharing_a_gpu_size_their_query_batches_from_their_share(monkeypatch, videos, tmp_path, gpus, share):
    """`--gpus-per-actor 0.25`: every actor's model spec carries its share of the GPU, from which
    it sizes its query chunks (tests/test_device_rules.py) instead of from what its neighbours
    leave free; an actor with a GPU of its own, or none, keeps the free memory."""
    from entitysam.distributed import ray_runner
    from entitysam.distributed.jobs import VideoOutcome

    specs = []

    def run_jobs(ray, spec, size, cpus, gpus, jobs, options, out_root, *rest):
        specs.append(spec)
        return {j.name: VideoOutcome(j.name, "done", output=str(out_root / j.name)) for j in jobs}, []

    class Session:
        @staticmethod
        def is_initialized():
            return True

    monkeypatch.setattr(ray_runner, "import_ray", lambda: Session)
    monkeypatch.setattr(ray_runner, "_actors_that_fit", lambda ray, cpus, gpus: 4)
    monkeypatch.setattr(ray_runner, "_run_jobs", run_jobs)
    ray_runner.segment_many(videos[:2], tmp_path / "out", model="demo", gpus_per_actor=gpus, progress=False)
    assert [s.gpu_share for s in specs] == [share]
