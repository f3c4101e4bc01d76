"""Process-group helpers: env:// rendezvous (torchrun), rank/world queries, reductions."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch._dynamo  # noqa: F401 - see below
import torch.distributed as dist

# torch._dynamo before any process group: imported later (torch.optim imports it lazily when the
# optimizer is built), a group destroyed after one rank's failure (failstop.teardown) kept gloo's
# connections open, and the other ranks waited for the failed process to exit instead of stopping
# at once (tests/test_ddp_rank_failure.py). Training processes import it anyway.

from ..errors import InvalidArgumentError
from ..sharding import ShardError, env_int


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def rank_prefix() -> str:
    """"rank R: " in a run of several processes (torchrun's or Slurm's environment), else "":
    which rank met an error, in the one line the command prints for it."""
    try:
        world, rank = env_int(os.environ, "WORLD_SIZE", 1), env_int(os.environ, "RANK", 0)
    except ShardError:  # the error being printed may be this very value's: no second one while printing it
        return ""
    return f"rank {rank}: " if world > 1 else ""


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group announced by torchrun's environment (RANK, WORLD_SIZE, ...).

    Without those variables (or with WORLD_SIZE=1) the run is single-process. CUDA processes use
    NCCL and the GPU `LOCAL_RANK`; CPU processes use gloo.
    """
    world = env_int(os.environ, "WORLD_SIZE", 1)  # a value that is no integer: one error line, exit 2
    rank = env_int(os.environ, "RANK", 0)
    local_rank = env_int(os.environ, "LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local_rank < 0:  # RANK=5 of 2 waited for ever to join
        raise ShardError(f"RANK={rank}, WORLD_SIZE={world} and LOCAL_RANK={local_rank} in the environment: need "
                         "WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0 (start the ranks with torchrun)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda":
        named = dev.index is not None  # cuda:N
        if not named:
            dev = torch.device("cuda", local_rank)
        check_gpu(dev, world, local_rank, named)
        torch.cuda.set_device(dev)  # before the process group and the model: NCCL and allocations on it
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world, **kwargs)
    return DistInfo(rank, world, local_rank, dev)


def check_gpu(dev: torch.device, world: int, local_rank: int, named: bool = False) -> None:
    """The GPU of this process exists and is not every process's of the node: a LOCAL_RANK past
    the node's GPUs was a CUDA "invalid device ordinal" traceback, and `device=cuda:N` (`named`)
    under torchrun put every process of the node on GPU N (NCCL then refuses them)."""
    local_world = env_int(os.environ, "LOCAL_WORLD_SIZE", 1)
    if named and world > 1 and local_world > 1:
        raise InvalidArgumentError(f"device=cuda:{dev.index} with {local_world} processes on this node would put "
                                   "them all on that GPU: use device=auto or cuda (each process the GPU LOCAL_RANK)")
    count = torch.cuda.device_count()
    if dev.index >= count:
        if world > 1:
            raise InvalidArgumentError(f"LOCAL_RANK={local_rank}, but this process sees {count} GPU(s): start at most "
                                       f"{count} processes per node (torchrun's nproc_per_node {count}), or, where each "
                                       "process sees only its own GPU (Slurm's gpus-per-task), set device=cuda:0")
        raise InvalidArgumentError(f"device {dev}: this machine has {count} GPU(s) (cuda:0 .. cuda:{count - 1})")


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of floats over all processes (float64)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
