"""The split rule of sharded runs, in one place: ``segment --batch --shard`` and ``eval vipseg
--shard`` (and each torchrun rank, each Slurm array task) take the same deterministic slices.

No imports from the package but `errors` and `argtypes` (its bound INT64_MAX): every layer may use it.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Mapping, Sequence

from .argtypes import INT64_MAX  # (a shard is written in file names and JSON as int64)
from .errors import InvalidArgumentError


__all__ = ["ShardError", "env_int", "parse_shard", "check_shard", "balanced_owners", "balanced_split", "shard_tag"]


class ShardError(InvalidArgumentError):
    """A shard that does not exist: not I/N, or not 0 <= I < N."""


def env_int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    """The integer a launcher (torchrun, Slurm) set in `env`'s `key`: `default` when it is unset or
    blank (None: ShardError), ShardError naming it when it is not an integer (not a ValueError
    traceback from wherever the process first read it)."""
    text = env.get(key, "")
    if text.strip() == "" and default is not None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ShardError(f"{key}={text!r} in the environment is not an integer") from None


def check_shard(index: int, count: int, text: str | None = None) -> tuple[int, int]:
    """(index, count) if 0 <= index < count <= 2**63 - 1, else ShardError (naming `text`, the value as given)."""
    shown = text if text is not None else f"{index}/{count}"
    if count < 1 or not 0 <= index < count:
        raise ShardError(f"shard {shown}: need N >= 1 and 0 <= I < N (shards count from 0)")
    if count > INT64_MAX:
        raise ShardError(f"shard {shown}: N must be at most {INT64_MAX}")
    return index, count


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ShardError(f"shard expects I/N (e.g. 0/4), got {text!r}") from None
    return check_shard(i, n, text)


def balanced_owners(weights: Sequence[int | None], count: int,
                    loads: Mapping[int, int] | None = None) -> list[int]:
    """The slice (0 <= slice < count) of each position: the heaviest item (frame count; unknown
    or 0 counts as 1) first goes to the least loaded slice, ties to the lower slice and, among
    equal weights, the earlier item first. loads: slices already loaded (by videos assigned
    before these), {slice: load}."""
    if count < 1:
        raise ShardError(f"shard count {count}: need N >= 1")
    w = [max(x or 0, 1) for x in weights]
    loads = dict(loads or {})
    free = (s for s in range(count) if s not in loads)  # only as many empty slices as items are looked at
    heap = [(load, s) for s, load in loads.items()] + [(0, s) for s in itertools.islice(free, len(w))]
    heapq.heapify(heap)
    owner = [0] * len(w)
    for k in sorted(range(len(w)), key=lambda k: (-w[k], k)):
        load, s = heapq.heappop(heap)
        owner[k] = s
        heapq.heappush(heap, (load + w[k], s))
    return owner


def balanced_split(weights: Sequence[int | None], index: int, count: int) -> list[int]:
    """Positions (in list order) of slice `index` of `count`: a deterministic split balanced by
    weight (:func:`balanced_owners`)."""
    check_shard(index, count)
    if count == 1:
        return list(range(len(weights)))
    return [k for k, s in enumerate(balanced_owners(weights, count)) if s == index]


def shard_tag(index: int, count: int) -> str:
    """The name of a slice in file names: ``shard-0-of-4``."""
    return f"shard-{index}-of-{count}"
