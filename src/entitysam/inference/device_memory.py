"""How many queries the device path runs at once (its query chunk), sized from the device's memory.

The chunk changes the arithmetic (chunked runs give up the kept keys and round differently), so
what it is sized from decides whether two runs of a video agree:

* alone on a GPU (the default), from the GPU's free memory, counting what this process's caching
  allocator holds unused as free;
* with a share of the GPU (:func:`set_gpu_share`; a Ray actor with a fractional ``num_gpus``),
  from that share of the GPU's total memory less this model's weights. The free memory would count
  what the neighbouring actors happen to hold at that moment, so the chunk, and the results,
  varied from run to run. Ray does not enforce the shares: neighbours that hold more than theirs
  can make a step run out of memory instead.
"""

from __future__ import annotations

import os

import torch

__all__ = ["set_gpu_share", "gpu_share", "cuda_budget", "default_query_chunk", "weight_bytes"]

# this process's share of its GPU (None: the free memory decides); one process, one model device
_share: list[float | None] = [None]


def set_gpu_share(share: float | None) -> None:
    """Size this process's query chunks from `share` (0 < share <= 1) of its GPU's total memory
    instead of the free memory; None: from the free memory again."""
    if share is not None and not 0 < float(share) <= 1:
        raise ValueError(f"a GPU share is in (0, 1], not {share}")
    _share[0] = None if share is None else float(share)


def gpu_share() -> float | None:
    """The share set by :func:`set_gpu_share` (None when unset)."""
    return _share[0]


def cuda_budget(device: torch.device, held: int) -> int:
    """Bytes the queries of a step may use on CUDA `device`; `held`: bytes of the model's weights."""
    free, total = torch.cuda.mem_get_info(device)
    if _share[0] is not None:
        # only this process's own weights: the same budget whatever the neighbours hold
        return int(_share[0] * total) - held
    # the driver counts what this process's allocator caches as taken, but it is free to us
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def default_query_chunk(cfg, device: torch.device, held: int = 0) -> int | None:
    """Queries per batch of the device path: all (None) unless the device's memory holds fewer,
    counted twice over. Per query at the published sizes with 7 memories: about 160 MiB (keys,
    feed-forward activations, the memory encoder's full-resolution maps, the keys kept across
    steps), plus the [N, M] attention scores (470 MiB) where attention materialises them (anything
    but CUDA's flash and memory-efficient kernels). On CUDA see :func:`cuda_budget` (the free
    memory there includes what the caching allocator holds unused: a batch's later videos, which
    find the cache of the first, were chunked where the first one was not). held: bytes of the
    model's weights (counted against a GPU share)."""
    if device.type == "cuda":
        free = cuda_budget(device, held)
    elif device.type == "cpu" and hasattr(os, "sysconf"):
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    else:
        return None
    tokens = cfg.grid_size ** 2
    keys = tokens * cfg.num_maskmem
    kept_keys = cfg.memory_attention_layers * keys * cfg.hidden_dim // 2  # `MemoryKeys`, 2 bytes each
    per_query = 4 * (keys * (cfg.hidden_dim + 2 * cfg.mem_dim) + tokens * cfg.memory_attention_ffn_dim
                     + 8 * cfg.image_size ** 2 + kept_keys + (0 if device.type == "cuda" else tokens * keys))
    fits = int(free // (2 * per_query))
    return None if fits >= cfg.num_queries else max(1, fits)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
