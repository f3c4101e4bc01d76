"""Under torchrun, a rank that ends with an error first waits for the other ranks of its node.

torchrun (``torch.distributed.elastic``) stops every rank of a node (SIGTERM) as soon as one of
them exits non-zero. The ranks of ``entitysam segment --batch`` share no process group and a
failed video does not stop a rank's slice, but at its end that rank exits 1: every other rank
was then stopped mid-work. Worse, on each re-run the failed video failed again within seconds
(the rest of its slice complete), so the other ranks never got further than those seconds.

So a rank that is to exit non-zero under torchrun waits until each other rank of its node (the
other live children of the torchrun agent, its parent process) has ended or is waiting too, then
exits. Waiting ranks mark themselves with an empty file ``<temp>/entitysam-ranks-<uid>/<agent
pid>-<pid>``, removed when they exit, so that two failing ranks do not wait for each other.
Linux only (``/proc``); elsewhere, or when the marker cannot be written, the rank exits at once.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

__all__ = ["under_torchrun", "wait_for_other_ranks"]


def under_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is a rank started by torchrun's agent (its parent)."""
    env = os.environ if env is None else env
    return bool(env.get("TORCHELASTIC_RUN_ID"))


def _live_children(parent: int) -> list[int]:
    """The processes whose parent is `parent`, zombies (ended, not yet reaped) left out."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # (the command name may hold spaces)
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and int(fields[1]) == parent and fields[0] not in (b"Z", b"X"):
            children.append(int(entry))
    return children


def wait_for_other_ranks(say: Callable[[str], None] | None = None, poll: float = 0.5) -> None:
    """Return once every other rank of this node has ended or waits here too (see the module
    doc). KeyboardInterrupt (torchrun stopping the ranks, a Ctrl-C) ends the wait."""
    if not os.path.isdir("/proc"):
        return
    parent, me = os.getppid(), os.getpid()
    folder = Path(tempfile.gettempdir()) / f"entitysam-ranks-{os.getuid()}"
    marker = folder / f"{parent}-{me}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        marker.touch()
    except OSError:
        return
    try:
        said = False
        while True:
            waiting = {name for name in os.listdir(folder) if name.startswith(f"{parent}-")}
            if all(f"{parent}-{pid}" in waiting for pid in _live_children(parent) if pid != me):
                return
            if not said and say is not None:
                say("waiting for the other ranks to end before exiting with an error (torchrun stops "
                    "every rank once one exits with an error)")
                said = True
            time.sleep(poll)
    finally:
        with contextlib.suppress(OSError):
            marker.unlink()
