"""`entitysam eval vipseg` merging: --merge-only (and a shard that finds every video done) merges
only predictions of completed runs, never a video whose last run failed or was interrupted while
redoing it (wherever it stopped: its lock not taken included); a shard run with --overwrite does not
merge the other shards' predictions, which it did not redo; a failure of the merge or of the scoring is the same one line and exit status in one
process, at --merge-only and on rank 0 under torchrun; a part file that cannot be read (nested
too deeply, a named pipe in its place) is not a complete video, not a traceback or a hang."""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures.process import BrokenProcessPool

import pytest

from _media import link_into
from entitysam import cli
from entitysam.data.synthetic.vipseg import make_vipseg_dataset
from entitysam.eval.runner.plan import load_plan
from entitysam.eval.runner.run import shard_videos

LAUNCHER_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REDO_NOT_FINISHED = "did not finish: it failed, was interrupted or is still running"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_checkpoint):
    d = tmp_path_factory.mktemp("eval-merge")
    link_into(d, tiny_checkpoint)
    return d, make_vipseg_dataset(d / "VIPSeg_720P", num_videos=2, num_frames=(2, 2), seed=0).root


@pytest.fixture(scope="module")
def evaluated(dataset, tmp_path_factory, one_torch_thread):
    """A complete evaluation of `dataset` (pred.json, metrics.json), made in one process."""
    d, root = dataset
    out = tmp_path_factory.mktemp("evaluated") / "out"
    assert cli.main(["eval", "vipseg", "--data-root", str(root), "--checkpoint", str(d / "tiny.pth"), "-o", str(out),
                     "--threads", "1", "--workers", "1", "-q"]) == 0
    return out


def _unmerged_copy(evaluated, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(evaluated, out)
    for name in ("pred.json", "metrics.json", "log.json"):
        (out / name).unlink()
    return out


def _args(dataset, data, out, *extra):
    d, _ = dataset
    return ["eval", "vipseg", "--data-root", str(data), "--checkpoint", str(d / "tiny.pth"), "-o", str(out),
            "--threads", "1", "--workers", "1", "-q", *extra]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("how", ["failed", "interrupted"])
def test_merge_only_does_not_merge_a_video_whose_redo_did_not_complete(dataset, evaluated, tmp_path, monkeypatch,
                                                                       capsys, how):
    """--overwrite on a complete output, one video failing (a corrupt frame) or interrupted (Ctrl-C)
    while redone: its earlier part was still there, counted as complete, and --merge-only (or the
    other shard, finding every video done) merged and scored those earlier predictions as if redone
    (exit 0). The part of a video being redone no longer counts until the redo is committed."""
    _, root = dataset
    data = tmp_path / "data"
    shutil.copytree(root, data)
    out = _unmerged_copy(evaluated, tmp_path)
    plan = load_plan(data, "val")
    vid = plan.video_ids[1]
    frame = sorted((data / "images" / vid).iterdir())[-1]
    good = frame.read_bytes()
    if how == "failed":
        frame.write_bytes(b"not a jpeg")
        assert cli.main(_args(dataset, data, out, "--overwrite")) == 1
    else:
        from entitysam.io import panoptic

        real_add = panoptic.PanopticWriter.add

        def add(self, t, *args, **kwargs):
            if self.video_id == vid:
                raise KeyboardInterrupt
            return real_add(self, t, *args, **kwargs)

        monkeypatch.setattr(panoptic.PanopticWriter, "add", add)
        assert cli.main(_args(dataset, data, out, "--overwrite")) == 130
        monkeypatch.undo()
    capsys.readouterr()
    assert cli.main(_args(dataset, data, out, "--merge-only")) == 1  # was 0: merged and scored
    line = _one_error_line(capsys)
    assert vid in line and plan.video_ids[0] not in line and REDO_NOT_FINISHED in line, line
    assert not (out / "pred.json").exists() and not (out / "metrics.json").exists()
    # the shard of the other video finds its video done: it does not merge either (it did)
    other = 1 - [s for s in range(2) if vid in [v.video_id for v in shard_videos(plan.videos, s, 2)]][0]
    assert cli.main(_args(dataset, data, out, "--shard", f"{other}/2")) == 0
    assert not (out / "pred.json").exists() and not (out / "metrics.json").exists()
    # redone by a later run (without --overwrite: the video is not complete), it merges
    frame.write_bytes(good)
    assert cli.main(_args(dataset, data, out)) == 0
    assert (out / "metrics.json").exists()
    assert sorted(os.listdir(out / "parts")) == [f"{v}.json" for v in plan.video_ids]  # nothing left aside
    for name in ("pred.json", "metrics.json"):
        (out / name).unlink()
    capsys.readouterr()
    assert cli.main(_args(dataset, data, out, "--merge-only")) == 0
    assert "STQ" in capsys.readouterr().out


def _as_rank(monkeypatch, rank: int, world: int) -> None:
    """torchrun for one rank whose peers are all done (test_eval_shards' emulation)."""
    import torch.distributed as dist

    for key in LAUNCHER_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in {"RANK": rank, "WORLD_SIZE": world, "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": world}.items():
        monkeypatch.setenv(key, str(value))
    for name in ("init_process_group", "barrier", "destroy_process_group"):
        monkeypatch.setattr(dist, name, lambda *a, **kw: None)
    monkeypatch.setattr(dist, "all_gather_object", lambda outcomes, mine, *a, **kw: outcomes.__setitem__(
        slice(None), [mine if r == rank else (0, []) for r in range(world)]))


@pytest.mark.parametrize("error", [BrokenProcessPool("A process in the process pool was terminated abruptly"),
                                   RecursionError("maximum recursion depth exceeded"),
                                   PermissionError(13, "Permission denied")])
def test_a_failed_merge_is_one_line_and_the_same_in_one_process_at_merge_only_and_on_rank_0(
        dataset, evaluated, tmp_path, monkeypatch, capsys, error):
    """A RuntimeError (a scoring worker killed, out of memory) or an OSError raised while merging
    and scoring: one `error:` line and exit 1 in one process, but a traceback at --merge-only and
    on rank 0 under torchrun. Now the three say the same line."""
    from entitysam.cli import eval as eval_cli
    from entitysam.eval.runner import run

    def finish(*args, **kwargs):
        raise error

    _, root = dataset
    said = {}
    for how in ("one process", "rank 0", "merge-only"):
        out = _unmerged_copy(evaluated, tmp_path / how.replace(" ", "-"))
        with monkeypatch.context() as m:
            m.setattr(run, "finish", finish)
            m.setattr(eval_cli, "finish", finish)
            extra = ["--merge-only"] if how == "merge-only" else ["--device", "cpu"]
            if how == "rank 0":
                _as_rank(m, 0, 2)
            capsys.readouterr()
            assert eval_cli.main(_args(dataset, root, out, *extra)[1:]) == 1, how
            said[how] = _one_error_line(capsys).replace(str(out), "OUT")
        assert not (out / "pred.json").exists()
    assert said["merge-only"] == said["one process"] == said["rank 0"].replace("[rank 0/2] ", ""), said


@pytest.mark.parametrize("content", ["nested", "annotations", "entry"])
def test_a_part_that_cannot_be_read_is_not_a_complete_video(dataset, evaluated, tmp_path, capsys, content):
    """A part file nested deeper than Python's recursion limit, or whose annotations are not a list
    of frames (corrupt, or not ours), raised RecursionError, TypeError or AttributeError when read:
    a traceback at --merge-only, and ended every run on the folder. It is a video without complete
    predictions: named at --merge-only, redone by a run."""
    import json

    _, root = dataset
    out = _unmerged_copy(evaluated, tmp_path)
    vid = load_plan(root, "val").video_ids[0]
    part = out / "parts" / f"{vid}.json"
    doc = json.loads(part.read_text())
    doc["annotations"] = 5 if content == "annotations" else [1, *doc["annotations"]]
    part.write_text("[" * 100_000 + "]" * 100_000 if content == "nested" else json.dumps(doc))
    capsys.readouterr()
    assert cli.main(_args(dataset, root, out, "--merge-only")) == 1
    line = _one_error_line(capsys)
    assert "have no complete predictions" in line and vid in line, line
    assert cli.main(_args(dataset, root, out)) == 0  # redone, merged and scored
    assert (out / "metrics.json").exists()


def test_a_named_pipe_in_place_of_a_part_is_not_waited_on(dataset, evaluated, tmp_path, capsys):
    """parts/<video>.json was opened by name: a named pipe there made --merge-only (and every run on
    the folder) wait for a writer for ever. It is not a complete video; the pipe is left alone."""
    _, root = dataset
    out = _unmerged_copy(evaluated, tmp_path)
    vid = load_plan(root, "val").video_ids[0]
    part = out / "parts" / f"{vid}.json"
    part.unlink()
    os.mkfifo(part)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault(
        "code", cli.main(_args(dataset, root, out, "--merge-only"))), daemon=True)
    capsys.readouterr()
    worker.start()
    worker.join(60)
    if worker.is_alive():  # free the waiting open, then fail
        fd = os.open(part, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(10)
        pytest.fail("--merge-only waited on the named pipe in place of a part")
    assert result["code"] == 1
    line = _one_error_line(capsys)
    assert "have no complete predictions" in line and vid in line, line


def test_merge_only_checks_the_gt_annotations_of_a_split_files_subset(dataset, evaluated, tmp_path, capsys):
    """--merge-only (after a --no-metrics run, say) scored without checking the GT annotations: a GT
    JSON with `"annotations": null` and a split file naming some of its videos was a TypeError
    traceback. Now the one line of a run that scores (exit 2)."""
    import json

    from entitysam.eval.runner.output import EvalOutput

    _, root = dataset
    data = tmp_path / "data"
    shutil.copytree(root, data)
    vid = load_plan(root, "val").video_ids[0]
    (data / "val.txt").write_text(vid + "\n")
    gt = data / "panoptic_gt_VIPSeg_val.json"
    doc = json.loads(gt.read_text())
    doc["annotations"] = None
    gt.write_text(json.dumps(doc))
    out = tmp_path / "out"  # the subset's evaluation: the video's predictions, made earlier
    EvalOutput(out).prepare(load_plan(data, "val"))
    shutil.copytree(evaluated / "pan_pred" / vid, out / "pan_pred" / vid)
    shutil.copy(evaluated / "parts" / f"{vid}.json", out / "parts")
    capsys.readouterr()
    assert cli.main(_args(dataset, data, out, "--merge-only")) == 2
    line = _one_error_line(capsys)
    assert "has no 'annotations' list: it cannot be scored" in line and "--no-metrics" in line, line


def test_other_predictions_merged_without_scoring_leave_no_earlier_scores(dataset, evaluated, tmp_path, capsys):
    """`--overwrite --no-metrics` (here in bfloat16) merged the new predictions into pred.json and
    log.json, and left metrics.json, the scores of the earlier float32 predictions, beside them."""
    import json

    _, root = dataset
    out = tmp_path / "out"
    shutil.copytree(evaluated, out)
    assert cli.main(_args(dataset, root, out, "--overwrite", "--no-metrics", "--dtype", "bfloat16")) == 0
    assert (out / "pred.json").read_bytes() != (evaluated / "pred.json").read_bytes()
    assert json.loads((out / "log.json").read_text())["model"]["dtype"] == "bfloat16"
    assert not (out / "metrics.json").exists()
    assert cli.main(_args(dataset, root, out, "--merge-only")) == 0  # scored: the new predictions
    assert json.loads((out / "metrics.json").read_text())["run"]["model"]["dtype"] == "bfloat16"
    assert cli.main(_args(dataset, root, out, "--merge-only", "--no-metrics")) == 0  # the same ones: kept
    assert (out / "metrics.json").exists()


def test_a_shard_run_with_overwrite_does_not_merge_the_other_shards_earlier_predictions(dataset, evaluated, tmp_path,
                                                                                        capsys):
    """`--shard 0/2 --overwrite` on a complete output: the other shard's parts, not redone (its
    --overwrite run not started yet, or never), counted as done, and shard 0 merged and scored a mix
    of earlier and new predictions (exit 0). A run under --overwrite merges only what it redid."""
    _, root = dataset
    out = _unmerged_copy(evaluated, tmp_path)
    plan = load_plan(root, "val")
    mine = [v.video_id for v in shard_videos(plan.videos, 0, 2)]
    assert mine and len(mine) < len(plan.videos)
    capsys.readouterr()
    assert cli.main([a for a in _args(dataset, root, out, "--shard", "0/2", "--overwrite") if a != "-q"]) == 0
    assert not (out / "pred.json").exists() and not (out / "metrics.json").exists()
    said = capsys.readouterr().err
    assert "not merged" in said and "--merge-only once every shard is done" in said, said
    assert cli.main(_args(dataset, root, out, "--shard", "1/2", "--overwrite")) == 0  # nor the last one
    assert not (out / "pred.json").exists()
    assert cli.main(_args(dataset, root, out, "--merge-only")) == 0  # the user's, once all are done
    assert (out / "metrics.json").exists()
    for name in ("pred.json", "metrics.json", "log.json"):
        (out / name).unlink()
    assert cli.main(_args(dataset, root, out, "--overwrite")) == 0  # one run redoing every video merges
    assert (out / "metrics.json").exists()


def test_a_shard_redone_with_overwrite_removes_what_was_merged_before(dataset, evaluated, tmp_path, capsys):
    """`--shard 0/2 --overwrite` on a merged and scored output: its videos' PNGs were replaced, while
    pred.json, log.json and metrics.json stayed, holding and scoring the earlier predictions."""
    _, root = dataset
    out = tmp_path / "out"
    shutil.copytree(evaluated, out)
    capsys.readouterr()
    assert cli.main([a for a in _args(dataset, root, out, "--shard", "0/2", "--overwrite") if a != "-q"]) == 0
    said = capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.json")) == ["run.json"], said
    assert "pred.json, metrics.json, log.json removed" in said, said
    assert cli.main(_args(dataset, root, out, "--shard", "1/2", "--overwrite")) == 0
    assert cli.main(_args(dataset, root, out, "--merge-only")) == 0  # merged again, from the new parts
    assert (out / "pred.json").is_file() and (out / "metrics.json").is_file()
    (out / "pred.json").unlink()
    (out / "pred.json").mkdir()  # (not ours to remove: a folder)
    assert cli.main(_args(dataset, root, out, "--shard", "0/2", "--overwrite")) == 0
    assert (out / "pred.json").is_dir() and not (out / "metrics.json").exists()
    # a run that redoes every video removes them too, says so, and merges again (unscored: said)
    shutil.rmtree(out / "pred.json")
    assert cli.main(_args(dataset, root, out, "--merge-only")) == 0
    capsys.readouterr()
    assert cli.main([a for a in _args(dataset, root, out, "--overwrite", "--no-metrics") if a != "-q"]) == 0
    said = capsys.readouterr().err
    assert "pred.json, metrics.json, log.json removed" in said, said
    assert (out / "pred.json").is_file() and not (out / "metrics.json").exists()


@pytest.mark.parametrize("how", ["lock-folder", "lock-disk-full", "lock-interrupted", "set-aside-refused",
                                 "nothing-possible"])
def test_a_redo_that_failed_before_its_part_was_set_aside_is_not_merged(dataset, evaluated, tmp_path, monkeypatch,
                                                                        capsys, how):
    """--overwrite, one video failing before its part was set aside: its lock not taken (a folder at
    the lock path, a full disk, Ctrl-C), or the part not movable (held open on Windows, a folder
    at the .earlier path). The earlier part still counted as complete: --merge-only merged and
    scored it as if redone (exit 0). It is now set aside there too, or where that fails marked
    failed (parts/<video>.json.failed); where neither can be done, the failure says so."""
    import errno

    from entitysam.eval.runner import output
    from entitysam.io.output_lock import OutputLock

    _, root = dataset
    out = _unmerged_copy(evaluated, tmp_path)
    plan = load_plan(root, "val")
    vid = plan.video_ids[1]
    lock_path = out / "pan_pred" / f".{vid}.lock"
    real_acquire, real_set_aside = OutputLock.acquire.__func__, output.EvalOutput.set_aside

    def acquire(cls, final, *args, **kwargs):
        if os.path.basename(final) == vid:
            raise KeyboardInterrupt if how == "lock-interrupted" else OSError(errno.ENOSPC, "No space left", final)
        return real_acquire(cls, final, *args, **kwargs)

    def set_aside(self, v):
        if v == vid:
            raise PermissionError(errno.EACCES, "Permission denied", str(self.part_path(v)))
        real_set_aside(self, v)

    def write_json_atomic(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        if how == "lock-folder":
            lock_path.mkdir()
        elif how.startswith("lock-"):
            m.setattr(OutputLock, "acquire", classmethod(acquire))
        else:
            m.setattr(output.EvalOutput, "set_aside", set_aside)
            if how == "nothing-possible":
                m.setattr(output, "write_json_atomic", write_json_atomic)
        capsys.readouterr()
        assert cli.main(_args(dataset, root, out, "--overwrite")) == (130 if how == "lock-interrupted" else 1)
    err = capsys.readouterr().err
    if how == "lock-folder":
        lock_path.rmdir()
    if how == "nothing-possible":  # the one case left (README): said, and its earlier part still counts
        assert f"{vid}: failed: " in err and "its earlier predictions could not be set aside" in err, err
        assert cli.main(_args(dataset, root, out, "--merge-only")) == 0
        return
    aside = {"set-aside-refused": f"{vid}.json.failed"}.get(how, f"{vid}.json.earlier")
    assert (out / "parts" / aside).is_file()
    assert cli.main(_args(dataset, root, out, "--merge-only")) == 1  # was 0: merged and scored
    line = _one_error_line(capsys)
    assert vid in line and plan.video_ids[0] not in line and REDO_NOT_FINISHED in line, line
    assert not (out / "pred.json").exists()
    assert cli.main(_args(dataset, root, out)) == 0  # redone without --overwrite, then merged
    assert (out / "metrics.json").exists()
    assert sorted(os.listdir(out / "parts")) == [f"{v}.json" for v in plan.video_ids]  # no .earlier, no .failed
