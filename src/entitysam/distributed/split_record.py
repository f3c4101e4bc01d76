"""The frame counts every shard of a batch splits by, recorded once in the output folder.

The split balances the slices by frame count, read from each video's header by each shard on
its own machine. Two shards that read a count differently (a header unreadable for a moment on a
network file system, a file still being copied, another PyAV, other --start/--end/--max-frames)
would split differently: a video could go to two shards and another to none, every shard
exiting 0. So the first shard of a list of videos and a shard count records the counts it read
(``<folder>/split-of-N-<digest>.json``, never replaced); every later shard of the same videos and
count splits by those, whatever it reads itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..io.atomic import write_json_atomic

__all__ = ["SPLIT_FORMAT", "split_record_path", "agreed_frames"]

SPLIT_FORMAT = "entitysam-batch-split"


def split_record_path(folder: Path, names: Sequence[str], count: int) -> Path:
    """The record of `names` (in any order) split in `count` slices, in `folder`."""
    listing = "\n".join(sorted(names)).encode("utf-8", "surrogateescape")
    return Path(folder) / f"split-of-{count}-{hashlib.sha256(listing).hexdigest()[:16]}.json"


def _read(path: Path, names: Sequence[str], count: int) -> dict[str, int | None] | None:
    """The frame counts of a record of exactly these names and count, or None (not one)."""
    if path.is_symlink() or not path.is_file():  # (a named pipe there would block the read for ever)
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    frames = data.get("frames") if isinstance(data, dict) else None
    if (data.get("format") != SPLIT_FORMAT or data.get("count") != count or not isinstance(frames, dict)
            or set(frames) != set(names)):
        return None
    if not all(v is None or (type(v) is int and v >= 0) for v in frames.values()):
        return None
    return frames


def agreed_frames(folder: Path, frames: Mapping[str, int | None], count: int,
                  say: Callable[[str], None] = lambda msg: None) -> Mapping[str, int | None]:
    """The frame counts to split the videos named in `frames` (this shard's counts) in `count`
    slices by: the recorded ones if a shard of these videos and count recorded them, else
    `frames`, recorded now. A record that cannot be written or read back (a read-only output, a
    damaged file) leaves this shard with its own counts: the split of every shard before."""
    names = list(frames)
    path = split_record_path(folder, names, count)
    record = {"format": SPLIT_FORMAT, "format_version": 1, "count": count, "frames": dict(frames)}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, record, indent=1, replace=False)  # the first shard's counts, never replaced
        return frames
    except FileExistsError:
        pass
    except OSError:
        return frames
    recorded = _read(path, names, count)
    if recorded is None:
        say(f"{path} is not a split record of these videos: splitting by the frame counts read here")
        return frames
    if recorded != dict(frames):
        say(f"splitting by the frame counts recorded by the first shard in {path}")
    return recorded
