"""`entitysam train` under torchrun on GPUs, checked without one: which GPU each process takes
(`train.distributed.init_distributed`), with torch.cuda and the process group played out.

One process per GPU: process LOCAL_RANK takes GPU LOCAL_RANK, made the current device before
the process group and the model exist. The mistakes that put several processes on one GPU, or
a process on a GPU that does not exist, are one error line (exit 2), not a CUDA traceback or
NCCL's "Duplicate GPU detected".
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from entitysam.errors import InvalidArgumentError
from entitysam.train.distributed import init_distributed

LAUNCHER_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def node(monkeypatch):
    """A node with `gpus` GPUs and torchrun's environment; notes set_device and the group."""
    seen = {"set_device": [], "group": []}

    def launch(gpus: int, **env):
        for key in LAUNCHER_KEYS:
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen["set_device"].append(torch.device(d)))
        monkeypatch.setattr(dist, "is_initialized", lambda: bool(seen["group"]))
        monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen["group"].append(kw))
        return seen

    return launch


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_each_process_takes_the_gpu_of_its_local_rank_before_the_group(node, device):
    seen = node(4, RANK=6, WORLD_SIZE=8, LOCAL_RANK=2, LOCAL_WORLD_SIZE=4)
    info = init_distributed(device)
    gpu = torch.device("cuda", 2)
    assert info.device == gpu and seen["set_device"] == [gpu]
    [group] = seen["group"]
    assert group["backend"] == "nccl" and group["device_id"] == gpu and (group["rank"], group["world_size"]) == (6, 8)


def test_one_process_per_node_may_name_its_gpu(node):
    seen = node(2, RANK=1, WORLD_SIZE=2, LOCAL_RANK=0, LOCAL_WORLD_SIZE=1)
    assert init_distributed("cuda:1").device == torch.device("cuda", 1)
    assert seen["set_device"] == [torch.device("cuda", 1)]


def test_processes_that_each_see_only_their_gpu_may_name_it(node):
    """Slurm's srun with --gpus-per-task: LOCAL_RANK 2, one GPU visible (its own), no LOCAL_WORLD_SIZE."""
    seen = node(1, RANK=2, WORLD_SIZE=4, LOCAL_RANK=2)
    assert init_distributed("cuda:0").device == torch.device("cuda", 0)
    assert seen["set_device"] == [torch.device("cuda", 0)]


def test_a_named_gpu_for_every_process_of_a_node_is_refused(node):
    """device=cuda:0 under torchrun --nproc_per_node 4: every process on GPU 0."""
    seen = node(4, RANK=1, WORLD_SIZE=4, LOCAL_RANK=1, LOCAL_WORLD_SIZE=4)
    with pytest.raises(InvalidArgumentError, match="would put them all on that GPU: use device=auto or cuda"):
        init_distributed("cuda:0")
    assert seen["set_device"] == [] and seen["group"] == []


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_more_processes_than_gpus_is_refused(node, device):
    """torchrun --nproc_per_node 4 on a node with 2 GPUs: LOCAL_RANK 3 has none (set_device
    raised CUDA's "invalid device ordinal")."""
    seen = node(2, RANK=3, WORLD_SIZE=4, LOCAL_RANK=3, LOCAL_WORLD_SIZE=4)
    with pytest.raises(InvalidArgumentError, match=r"LOCAL_RANK=3, but this process sees 2 GPU\(s\): start at most "
                                                   r"2 processes per node \(torchrun's nproc_per_node 2\), or"):
        init_distributed(device)
    assert seen["set_device"] == [] and seen["group"] == []


def test_a_gpu_past_the_machines_is_refused(node):
    seen = node(1)
    with pytest.raises(InvalidArgumentError, match=r"device cuda:1: this machine has 1 GPU\(s\)"):
        init_distributed("cuda:1")
    assert seen["set_device"] == []


def test_cpu_processes_use_gloo(node):
    seen = node(0, RANK=0, WORLD_SIZE=2, LOCAL_RANK=0, LOCAL_WORLD_SIZE=2)
    assert init_distributed("auto").device == torch.device("cpu")
    assert seen["set_device"] == [] and seen["group"][0]["backend"] == "gloo" and "device_id" not in seen["group"][0]


def test_a_device_torch_cannot_read_is_one_error():
    with pytest.raises(InvalidArgumentError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu0'"):
        init_distributed("gpu0")


@pytest.mark.parametrize("key", ["WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"])
def test_a_launcher_variable_that_is_no_integer_is_one_error(node, key):
    """They were read with a bare int(): a ValueError traceback."""
    node(2, **{"RANK": 1, "WORLD_SIZE": 2, "LOCAL_RANK": 1, "LOCAL_WORLD_SIZE": 2, key: "abc"})
    with pytest.raises(InvalidArgumentError, match=f"{key}='abc' in the environment is not an integer"):
        init_distributed("auto")


@pytest.mark.parametrize("rank, world, local_rank", [(5, 2, 1), (-1, 2, 0), (0, 0, 0), (0, -2, 0), (1, 2, -1)])
def test_a_rank_outside_the_world_is_one_error(node, rank, world, local_rank):
    """RANK=5 of WORLD_SIZE=2 waited for good in the process group's rendezvous; WORLD_SIZE=0 or a
    negative rank was taken for a one-process run."""
    node(2, RANK=rank, WORLD_SIZE=world, LOCAL_RANK=local_rank, LOCAL_WORLD_SIZE=2)
    with pytest.raises(InvalidArgumentError, match=f"RANK={rank}, WORLD_SIZE={world} and LOCAL_RANK={local_rank} "
                                                   "in the environment: need WORLD_SIZE >= 1, 0 <= RANK"):
        init_distributed("cpu")


def test_entitysam_train_says_a_bad_world_size_in_one_line(tmp_path, monkeypatch, capsys):
    """`WORLD_SIZE=abc entitysam train ...`: one line `error: ...`, exit 2, no traceback (the
    rank prefix of the message, read from the same variable, raised a second time)."""
    from entitysam.data.synthetic.coco import make_synthetic_coco_panoptic
    from entitysam.train import cli as train_cli

    make_synthetic_coco_panoptic(tmp_path / "ds", num_images=1, seed=1)
    for key in LAUNCHER_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "abc")
    argv = ["--config", "tiny-stage1", f"data.root={tmp_path / 'ds'}", f"output_dir={tmp_path / 'run'}",
            "solver.max_iter=1", "device=cpu", "--quiet"]
    assert train_cli.command_main(argv) == 2
    err = capsys.readouterr().err
    assert err == "error: WORLD_SIZE='abc' in the environment is not an integer\n", err
