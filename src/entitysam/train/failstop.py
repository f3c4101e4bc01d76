"""Ending every process of a multi-process training run together when one of them fails.

A rank that failed alone (an unreadable image met by its data loader, a checkpoint rank 0 could
not write, an error in its forward pass) used to raise on its own while the others went on to
their next collective operation and waited there: until the failing process exited and its
sockets closed (gloo; then each printed a traceback of the broken connection), or for the
process group's timeout (30 minutes) when it did not exit or when its exit ends nothing (NCCL
does not notice a peer's exit inside a node; a Python caller that catches the exception). Two
mechanisms end the run within seconds, with the cause said once, by the rank that met it:

* Agreement, for errors met outside a step's collective operations (data, checkpoint and log
  writes, set-up). The failing rank does not raise at once: it joins the next collective
  operation the run makes anyway with its flag set, one number per rank added to that
  all-reduce (the first of each iteration, which sums the entity count; those replacing the
  set-up and final barriers). Then every rank knows which ranks failed: those raise their own
  error, the others `RankFailedError` naming them. It adds no collective operation and no
  host synchronisation (the count's all-reduce was already waited for on the host).
* Tear-down, for an error inside a step (one rank's forward or backward pass): the others are
  then in DDP's gradient all-reduce or the loss all-reduce, which no agreement reaches. The
  failing rank destroys its process group, which closes its connections (gloo: the others'
  operations fail at once) or aborts its NCCL communicators, and a rank whose operation broke
  that way says so in one line instead of a traceback.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import torch.distributed as dist

from ..errors import EntitySAMError
from .distributed import DistInfo, all_reduce_sum

__all__ = ["RankFailedError", "held", "failure_flags", "settle", "agree", "stop", "broken_connection", "teardown"]

# How a collective operation reports that a peer went away: gloo raises a plain RuntimeError
# whose message comes from its TCP transport; NCCL and the store raise torch's DistError.
_BROKEN = ("gloo/transport", "Connection closed by peer", "Connection reset by peer", "Broken pipe",
           "NCCL communicator was aborted")


class RankFailedError(EntitySAMError, RuntimeError):
    """This rank stopped because another rank of the run failed; that rank reports the cause."""


def _ranks(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def held(fn: Callable[..., object], *args) -> Exception | None:
    """Call fn(*args); the exception it raises is returned, held for the next agreement, not raised."""
    try:
        fn(*args)
    except Exception as err:  # noqa: BLE001 - raised by `settle` once the other ranks know
        return err
    return None


def failure_flags(error: BaseException | None, rank: int, world_size: int) -> list[float]:
    """One number per rank, 1 at this rank's place if it failed: summed over the ranks, the
    list says which ones did."""
    return [1.0 if error is not None and r == rank else 0.0 for r in range(world_size)]


def settle(flags: Sequence[float], rank: int, error: BaseException | None) -> None:
    """After the all-reduce of every rank's `failure_flags`: raise this rank's own error, or
    `RankFailedError` naming the ranks that failed; return when none did."""
    if error is not None:
        raise error
    failed = [r for r, flag in enumerate(flags) if flag > 0]
    if failed:
        raise RankFailedError(f"rank {rank} stopped: {_ranks(failed)} failed (see {'its' if len(failed) == 1 else 'their'} "
                              "message)")


def agree(error: BaseException | None, info: DistInfo) -> None:
    """A barrier that also tells every rank whether another one failed (see `settle`)."""
    if not info.distributed:
        if error is not None:
            raise error
        return
    settle(all_reduce_sum(failure_flags(error, info.rank, info.world_size), info.device), info.rank, error)


def broken_connection(err: BaseException) -> bool:
    """Whether `err` is a collective operation failing because another rank went away."""
    return isinstance(err, getattr(dist, "DistError", ())) or (
        isinstance(err, RuntimeError) and any(m in str(err) for m in _BROKEN))


def teardown() -> None:
    """Destroy the process group (its operations broken or not): the other ranks' operations
    with this one then fail at once instead of waiting for the timeout."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a group already broken may refuse; its connections are gone either way
            pass


def stop(err: Exception, own: BaseException | None, info: DistInfo,
         release: Callable[[BaseException], None] | None = None) -> BaseException:
    """The error this rank ends with, `err` having interrupted its training; `own` is the error
    of this rank that was waiting for the next agreement, if any. `release(err)` drops the
    caller's references to the process group; unless every rank knows, the group is destroyed."""
    if not info.distributed:
        return err
    if release is not None:  # a group freed only at exit, once the rank holding the store is gone, aborts it
        release(err)
    if err is own or isinstance(err, RankFailedError):
        return err  # every rank knows: the agreement said it
    teardown()
    if own is not None:  # its own cause, met before the connection broke
        return own
    if broken_connection(err):
        return RankFailedError(f"rank {info.rank} stopped: another rank failed or was stopped (see its message): "
                               f"the connection to it broke ({_first_sentence(err)})")
    return err


def _first_sentence(err: BaseException) -> str:
    """'Connection closed by peer [10.0.0.2]:4242' out of gloo's '[<source file>:553] Connection closed by
    peer [10.0.0.2]:4242. This is typically caused by ...'."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(err).strip()).split(". ")[0].splitlines()
    return (text[0] if text and text[0] else type(err).__name__)[:160]
