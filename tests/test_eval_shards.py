"""Sharded `entitysam eval vipseg`: under a launcher environment that is wrong (a value that is not
a number, RANK missing or past WORLD_SIZE) one `error:` line and exit 2 before any work, as
`entitysam segment` does, not a traceback or a rank waiting for ever for ranks that do not exist;
and the shards of one output folder never merge the predictions of two different checkpoints."""

from __future__ import annotations

import os
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
    slices = []

    def evaluate(*args, shard, **kwargs):  # the videos of this rank, done
        slices.append(shard)
        return EvalSummary(output=tmp_path / "out", videos=[])

    monkeypatch.setattr(eval_cli, "evaluate_vipseg", evaluate)
    status = eval_cli.main(["vipseg", "--data-root", str(root), "--checkpoint", str(d / "tiny.pth"),
                            "--output", str(tmp_path / "out"), "-q"])
    assert status == 0 and slices == [(3, 4)] and gpus == [1]
    assert group == [("init", "gloo"), ("barrier", None), ("destroy",)]


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
    monkeypatch.setattr(eval_cli, "evaluate_vipseg", lambda *a, **kw: EvalSummary(output=tmp_path / "out", videos=[]))

    def finish(*args, **kwargs):
        raise (EvalInputError("the GT JSON is unusable") if error == "input" else IncompleteError("2 videos missing", ["a", "b"]))

    monkeypatch.setattr(eval_cli, "finish", finish)
    status = eval_cli.main(["vipseg", "--data-root", str(root), "--checkpoint", str(d / "tiny.pth"), "--device", "cpu",
                            "--output", str(tmp_path / "out"), "-q"])
    assert status == code, capsys.readouterr().err
