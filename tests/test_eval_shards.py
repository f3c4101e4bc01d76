"""Sharded `entitysam eval vipseg`: under a launcher environment that is wrong (a value that is not
a number, RANK missing or past WORLD_SIZE) one `error:` line and exit 2 before any work, as
`entitysam segment` does, not a traceback or a rank waiting for ever for ranks that do not exist;
and the shards of one output folder never merge the predictions of two different checkpoints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from _media import link_into, tiny_state_dict
from entitysam import cli
from entitysam.data.synthetic.vipseg import make_vipseg_dataset

LAUNCHER_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_checkpoint):
    d = tmp_path_factory.mktemp("eval-env")
    link_into(d, tiny_checkpoint)
    return d, make_vipseg_dataset(d / "VIPSeg_720P", num_videos=2, num_frames=(2, 2), seed=0).root


@pytest.mark.parametrize("env, words", [
    ({"WORLD_SIZE": "x"}, "WORLD_SIZE='x'"),  # was a ValueError traceback
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "q"}, "LOCAL_RANK='q'"),  # a traceback too
    ({"WORLD_SIZE": "2"}, "no RANK"),  # torch's "environment variable RANK expected" traceback
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5 of WORLD_SIZE=2"),  # waited in init_process_group
    ({"WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE='0'"),  # ran as one process, as if unset
])
def test_a_bad_launcher_environment_is_one_line_and_exit_2(dataset, tmp_path, env, words):
    d, root = dataset
    environ = {k: v for k, v in os.environ.items() if k not in LAUNCHER_KEYS}
    environ.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": "9", **env})  # (port 9: nothing listens, a rank would wait for ever)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "entitysam", "eval", "vipseg", "--data-root", str(root),
                          "--checkpoint", str(d / "tiny.pth"), "--output", str(out), "--device", "cpu",
                          "--threads", "1", "--workers", "1", "-q"],
                         env=environ, capture_output=True, text=True, timeout=120)  # a hang guard only
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    assert words in lines[0]
    assert not out.exists()


def test_the_gpu_of_a_rank_wraps_around_the_gpus_of_the_node(monkeypatch):
    import torch

    from entitysam.cli.batch import rank_device

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert [rank_device("auto", r) for r in (0, 1, 3)] == ["cuda:0", "cuda:1", "cuda:1"]
    assert chosen == [0, 1, 1]  # LOCAL_RANK 3 on 2 GPUs: not an "invalid device ordinal"
    assert rank_device("cpu", 3) == "cpu"


def test_ranks_sharing_the_gpus_meet_at_the_end_without_naming_a_gpu_they_are_not_on(dataset, tmp_path, monkeypatch):
    """torchrun with more ranks than GPUs: LOCAL_RANK 3 of 4 on 2 GPUs runs on cuda:1 (above).
    After their videos the ranks meet at a barrier; it was NCCL's, told device_ids=[LOCAL_RANK]:
    GPU 3 does not exist ("invalid device ordinal" once the whole evaluation was done), and NCCL
    refuses two ranks on one GPU anyway. The group only holds a barrier: gloo, on the host."""
    import torch
    import torch.distributed as dist

    from entitysam.cli import eval as eval_cli
    from entitysam.eval.runner.run import EvalSummary

    d, root = dataset
    for key in LAUNCHER_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(key, value)
    gpus = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", gpus.append)
    group = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend=None, **kw: group.append(("init", backend)))
    monkeypatch.setattr(dist, "barrier", lambda *a, **kw: group.append(("barrier", kw.get("device_ids"))))
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **kw: group.append(("destroy",)))

    def gather(outcomes, mine, group_=None, **kw):  # (the other ranks: done)
        group.append(("gather", kw.get("device_ids")))
        outcomes[:] = [(0, [])] * len(outcomes)

    monkeypatch.setattr(dist, "all_gather_object", gather)
    slices = []

    def evaluate(*args, shard, **kwargs):  # the videos of this rank, done
        slices.append(shard)
        return EvalSummary(output=tmp_path / "out", videos=[])

    monkeypatch.setattr(eval_cli, "evaluate_vipseg", evaluate)
    status = eval_cli.main(["vipseg", "--data-root", str(root), "--checkpoint", str(d / "tiny.pth"),
                            "--output", str(tmp_path / "out"), "-q"])
    assert status == 0 and slices == [(3, 4)] and gpus == [1]
    assert group == [("init", "gloo"), ("gather", None), ("destroy",)]


def _checkpoint(path, shift: float):
    """A tiny checkpoint: every one made here has the same name and size, only the weights differ."""
    import torch

    weights = {k: v.clone() + shift if v.is_floating_point() else v.clone() for k, v in tiny_state_dict().items()}
    path.parent.mkdir(parents=True)
    torch.save({"model": weights, "iteration": 9999}, path)
    return path


def test_shards_run_with_two_checkpoints_of_one_name_and_size_are_not_merged(dataset, tmp_path, capsys,
                                                                               one_torch_thread):
    _, root = dataset
    first, second = _checkpoint(tmp_path / "a" / "model.pth", 0.0), _checkpoint(tmp_path / "b" / "model.pth", 0.01)
    assert first.stat().st_size == second.stat().st_size
    out = tmp_path / "out"
    common = ["eval", "vipseg", "--data-root", str(root), "--output", str(out), "--threads", "1", "--workers", "1", "-q"]
    assert cli.main([*common, "--checkpoint", str(first), "--shard", "0/2"]) == 0
    capsys.readouterr()
    assert cli.main([*common, "--checkpoint", str(second), "--shard", "1/2"]) == 2  # was 0: merged and scored
    err = capsys.readouterr().err
    assert "predictions of another model" in err and "sha256" in err, err
    assert not (out / "pred.json").exists() and not (out / "metrics.json").exists()


@pytest.mark.parametrize("error, code", [("input", 2), ("incomplete", 1)])
def test_rank_0_under_torchrun_ends_with_the_documented_code_when_merging_fails(dataset, tmp_path, monkeypatch, capsys,
                                                                               error, code):
    """Rank 0 merges and scores once every rank is done: ground truth found unusable only then (or
    predictions of two models) is exit 2 as in a single process (it was 1 under torchrun alone);
    videos still missing stay 1."""
    import torch.distributed as dist

    from entitysam.cli import eval as eval_cli
    from entitysam.eval.runner.output import IncompleteError
    from entitysam.eval.runner.plan import EvalInputError
    from entitysam.eval.runner.run import EvalSummary

    d, root = dataset
    for key in LAUNCHER_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    for name in ("init_process_group", "barrier", "destroy_process_group"):
        monkeypatch.setattr(dist, name, lambda *a, **kw: None)
    monkeypatch.setattr(dist, "all_gather_object", lambda outcomes, mine, *a, **kw: outcomes.__setitem__(
        slice(None), [mine] * len(outcomes)))
    monkeypatch.setattr(eval_cli, "evaluate_vipseg", lambda *a, **kw: EvalSummary(output=tmp_path / "out", videos=[]))

    def finish(*args, **kwargs):
        raise (EvalInputError("the GT JSON is unusable") if error == "input" else IncompleteError("2 videos missing", ["a", "b"]))

    monkeypatch.setattr(eval_cli, "finish", finish)
    status = eval_cli.main(["vipseg", "--data-root", str(root), "--checkpoint", str(d / "tiny.pth"), "--device", "cpu",
                            "--output", str(tmp_path / "out"), "-q"])
    assert status == code, capsys.readouterr().err


@pytest.fixture(scope="module")
def evaluated(dataset, tmp_path_factory, one_torch_thread):
    """A complete evaluation of `dataset` (pred.json, metrics.json), made in one process."""
    d, root = dataset
    out = tmp_path_factory.mktemp("evaluated") / "out"
    assert cli.main(["eval", "vipseg", "--data-root", str(root), "--checkpoint", str(d / "tiny.pth"), "-o", str(out),
                     "--threads", "1", "--workers", "1", "-q"]) == 0
    return out


def _as_rank(monkeypatch, rank: int, world: int, received: dict[int, tuple[int, list[str]]], sent: dict) -> None:
    """Emulate torchrun for one rank: its launcher environment, and a process group whose exchange
    of outcomes records what this rank sends (`sent[rank]`) and hands it the other ranks' from
    `received` (those not listed: all done)."""
    import torch.distributed as dist

    for key in LAUNCHER_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in {"RANK": rank, "WORLD_SIZE": world, "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": world}.items():
        monkeypatch.setenv(key, str(value))
    for name in ("init_process_group", "barrier", "destroy_process_group"):
        monkeypatch.setattr(dist, name, lambda *a, **kw: None)

    def gather(outcomes, mine, *args, **kwargs):
        sent[rank] = mine
        outcomes[:] = [mine if r == rank else received.get(r, (0, [])) for r in range(world)]

    monkeypatch.setattr(dist, "all_gather_object", gather)


@pytest.mark.parametrize("where", ["rank 1", "rank 0", "rank 1 stopped"])
def test_rank_0_does_not_merge_a_video_another_rank_failed_to_redo(dataset, evaluated, tmp_path, monkeypatch, capsys,
                                                                   where):
    """torchrun --overwrite on a complete output, one video failing (a corrupt frame): its earlier
    part is still there, and rank 0, after a plain barrier, merged and scored it as if redone
    (exit 0 when the failure was another rank's). Now the ranks exchange their outcomes and rank
    0 merges only if no rank failed: exit 1, nothing merged, the failed video named."""
    from entitysam.cli import eval as eval_cli
    from entitysam.eval.runner.plan import load_plan
    from entitysam.eval.runner.run import shard_videos

    d, root = dataset
    data = tmp_path / "data"
    shutil.copytree(root, data)
    out = tmp_path / "out"
    shutil.copytree(evaluated, out)
    for name in ("pred.json", "metrics.json", "log.json"):
        (out / name).unlink()
    plan = load_plan(data, "val")
    failing = 0 if where == "rank 0" else 1
    (vid,) = [v.video_id for v in shard_videos(plan.videos, failing, 2)]
    frame = sorted((data / "images" / vid).iterdir())[-1]
    frame.write_bytes(b"not a jpeg")
    args = ["vipseg", "--data-root", str(data), "--checkpoint", str(d / "tiny.pth"), "--device", "cpu", "-o", str(out),
            "--threads", "1", "--workers", "1", "-q", "--overwrite"]
    sent: dict[int, tuple[int, list[str]]] = {}
    if where == "rank 1 stopped":  # e.g. its model did not load: none of its videos redone
        sent[1] = (1, [])
    else:
        _as_rank(monkeypatch, 1, 2, {}, sent)
        assert eval_cli.main(args) == (1 if failing == 1 else 0)
    capsys.readouterr()
    _as_rank(monkeypatch, 0, 2, {1: sent.get(1, (0, []))}, sent)  # (a plain barrier sent nothing)
    assert eval_cli.main(args) == 1
    err = capsys.readouterr().err
    assert not (out / "pred.json").exists() and not (out / "metrics.json").exists(), err
    if where == "rank 1":
        assert f"not merged or scored: rank 1: 1 video(s) failed ({vid})" in err, err
    elif where == "rank 0":
        assert f"1 of 1 videos failed: {vid}" in err, err
    else:
        assert "not merged or scored: rank 1 stopped before its videos were done" in err, err
    assert sent[1] == {"rank 1": (1, [vid]), "rank 0": (0, []), "rank 1 stopped": (1, [])}[where]


def test_rank_0_does_not_merge_when_the_ranks_cannot_compare_their_outcomes(dataset, evaluated, tmp_path, monkeypatch,
                                                                            capsys):
    """A rank gone away (gloo: its connection closed) breaks the exchange: one error line, exit 1,
    nothing merged (what the missing rank did is unknown), and the group is still destroyed."""
    import torch.distributed as dist

    from entitysam.cli import eval as eval_cli
    from entitysam.eval.runner.run import EvalSummary

    d, root = dataset
    out = tmp_path / "out"
    shutil.copytree(evaluated, out)
    (out / "pred.json").unlink()
    _as_rank(monkeypatch, 0, 2, {}, {})
    destroyed = []
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **kw: destroyed.append(1))

    def gather(*args, **kwargs):
        raise RuntimeError("[gloo/transport] Connection closed by peer")

    monkeypatch.setattr(dist, "all_gather_object", gather)
    monkeypatch.setattr(eval_cli, "evaluate_vipseg", lambda *a, **kw: EvalSummary(output=out, videos=[]))
    status = eval_cli.main(["vipseg", "--data-root", str(root), "--checkpoint", str(d / "tiny.pth"), "--device", "cpu",
                            "-o", str(out), "-q"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(lines) == 1 and "could not compare their outcomes" in lines[0], lines
    assert not (out / "pred.json").exists() and destroyed == [1]
