"""The slices every shard of a batch takes, recorded once in the output folder.

The split balances the slices by frame count, read from each video's header by each shard on
its own machine. Two shards that read a count differently (a header unreadable for a moment on a
network file system, a file still being copied, another PyAV, other --start/--end/--max-frames)
would split differently: a video could go to two shards and another to none, every shard
exiting 0. So the first shard of a list of videos and a shard count records the split it made
(``<folder>/split-of-N-<digest>.json``: each video's slice and the frame counts it read; never
replaced); every later shard of the same videos and count takes its slice from there.

Shards that list other videos (one added to or removed from the batch folder between their
starts) have no record of their list. Split afresh, the slices of the videos both lists share
moved: a video could go to a shard that had already started with the other list and to none
of the others, every shard exiting 0. So a video keeps the slice that a record of an earlier
list gave it; only the videos of no record are split, over the least loaded slices. Records are
made under a lock (``.split-of-N.lock``), so whichever list is recorded first, the other one
follows it. A shard says which videos were not in the earlier record (a shard that started with
that record never processes them) and which of its own slice it does not list.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import sharding
from ..io.atomic import write_json_atomic
from .summary_file import file_lock

__all__ = ["SPLIT_FORMAT", "split_record_path", "split_slices", "agreed_slices"]

SPLIT_FORMAT = "entitysam-batch-split"
Say = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


def split_record_path(folder: Path, names: Sequence[str], count: int) -> Path:
    """The record of `names` (in any order) split in `count` slices, in `folder`."""
    listing = "\n".join(sorted(names)).encode("utf-8", "surrogateescape")
    return Path(folder) / f"split-of-{count}-{hashlib.sha256(listing).hexdigest()[:16]}.json"


def split_slices(frames: Mapping[str, int | None], count: int,
                 loads: Mapping[int, int] | None = None) -> dict[str, int]:
    """The slice of each video (by name) of a fresh split balanced by frame count, made over the
    names sorted (not in the order given: machines that list them otherwise split alike).
    loads: slices already loaded by other videos."""
    names = sorted(frames)
    if count == 1:
        return dict.fromkeys(names, 0)
    owners = sharding.balanced_owners([frames[n] for n in names], count, loads)
    return dict(zip(names, owners))


def _read(path: Path, count: int) -> tuple[dict[str, int | None], dict[str, int]] | None:
    """(frame counts, slices) of a record of `count` slices, or None (not one)."""
    if path.is_symlink() or not path.is_file():  # (a named pipe there would block the read for ever)
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):  # (a list or null there was an AttributeError in every shard)
        return None
    frames = data.get("frames")
    if data.get("format") != SPLIT_FORMAT or data.get("count") != count or not isinstance(frames, dict):
        return None
    if not all(v is None or (type(v) is int and v >= 0) for v in frames.values()):
        return None
    slices = data.get("slices")
    if slices is None:  # recorded by an entitysam of before the slices were: its split of these counts
        return frames, split_slices(frames, count)
    if not isinstance(slices, dict) or set(slices) != set(frames) or \
            not all(type(s) is int and 0 <= s < count for s in slices.values()):
        return None
    return frames, slices


def _earlier(folder: Path, count: int, names: set[str], own: Path
             ) -> tuple[dict[str, int], list[Path], dict[str, int]]:
    """The slices that records of other lists of `count` slices gave the videos of `names` (the
    oldest record first), the records that hold any of them, and the slices of their videos
    not in `names`."""
    inherited: dict[str, int] = {}
    used: list[Path] = []
    gone: dict[str, int] = {}
    try:
        paths = [p for p in folder.glob(f"split-of-{count}-*.json") if p != own]
        paths.sort(key=lambda p: (p.stat().st_mtime, p.name))
    except OSError:
        return inherited, used, gone
    for path in paths:
        read = _read(path, count)
        if read is None or names.isdisjoint(read[1]):
            continue
        used.append(path)
        for name, index in read[1].items():
            if name in names:
                inherited.setdefault(name, index)
            else:
                gone.setdefault(name, index)
    return inherited, used, gone


def _videos(n: int) -> str:
    return f"{n} video{'' if n == 1 else 's'}"


def _were(names, singular: str = "was") -> str:
    return singular if len(names) == 1 else {"was": "were", "is": "are"}[singular]


def _some(names, limit: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _follow(folder: Path, frames: Mapping[str, int | None], count: int, index: int | None, own: Path,
            say: Say, warn: Say) -> dict[str, int]:
    """The split of a list of no record yet: the slices earlier records gave its videos, the
    others split afresh over the least loaded slices; what differs is said."""
    inherited, used, gone = _earlier(folder, count, set(frames), own)
    if not used:
        return split_slices(frames, count)
    new = {n: f for n, f in frames.items() if n not in inherited}
    loads: dict[int, int] = {}
    for name, s in inherited.items():
        loads[s] = loads.get(s, 0) + max(frames[name] or 0, 1)
    slices = {**inherited, **split_slices(new, count, loads)}
    record = used[-1]
    if new:
        warn(f"{_videos(len(new))} of this batch {_were(new)} not listed by the shards that recorded the split "
             f"in {record} ({_some(new)}): added since? The videos of that record keep their slices; these "
             f"are split among the {count} shards, and a shard that started with that record does not "
             "process them: when every shard has ended, run them all again (complete videos are skipped)")
    mine = [n for n, s in gone.items() if s == index]
    if mine:
        warn(f"{_videos(len(mine))} of this shard's slice in the split recorded in {record} {_were(mine, 'is')} "
             f"not listed here ({_some(mine)}): removed since? Not processed by this run")
    elif gone:
        say(f"{_videos(len(gone))} of the split recorded in {record} {_were(gone, 'is')} not listed here: "
            "the others keep their slices")
    return slices


def agreed_slices(folder: Path, frames: Mapping[str, int | None], count: int, say: Say = _quiet,
                  warn: Say | None = None, index: int | None = None) -> dict[str, int]:
    """The slice of each video named in `frames` (this shard's frame counts) split in `count`
    slices: the recorded ones if a shard of these videos and count recorded them, else a split
    that keeps the slices records of other lists gave (see the module doc), recorded now. A record
    that cannot be written or read back (a read-only output, a damaged file) leaves this shard
    with its own split. index: this shard's slice (what it misses is said); warn: what may leave
    a video undone (default `say`)."""
    warn = warn or say
    names = list(frames)
    path = split_record_path(folder, names, count)
    with contextlib.ExitStack() as held:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            held.enter_context(file_lock(folder / f"split-of-{count}"))
        except OSError:
            pass  # (a read-only output: each shard its own split, as below)
        if os.path.lexists(path):
            read = _read(path, count)
            if read is not None and set(read[1]) == set(names):
                if read[0] != dict(frames):
                    say(f"splitting by the slices recorded by the first shard in {path}")
                return read[1]
            say(f"{path} is not a split record of these videos: splitting by the frame counts read here")
            return split_slices(frames, count)
        slices = _follow(folder, frames, count, index, path, say, warn)
        record: dict[str, Any] = {"format": SPLIT_FORMAT, "format_version": 2, "count": count,
                                  "frames": dict(frames), "slices": slices}
        try:
            write_json_atomic(path, record, indent=1, replace=False)  # never replaced
        except FileExistsError:  # recorded meanwhile by a shard that could not take the lock
            read = _read(path, count)
            return read[1] if read is not None and set(read[1]) == set(names) else slices
        except OSError:
            pass
        return slices
