"""The summary file of a batch run, shared by every task that writes to it.

Several tasks can name one summary file: shards given one ``--summary FILE`` on machines that
share a file system, or the K tasks of ``srun -n K ... --shard auto`` outside an array job, which
all take shard 0/1 and so its default file. When each task simply replaced the file, only the
last task's summary survived. So each task merges its summary into the file under a lock
(``fcntl.flock`` on ``.<name>.lock`` beside it, removed afterwards: io.file_lock):

* ``tasks`` keeps one entry per task (the keys of a one-task summary, with ``started`` and
  ``finished``). A task's entry replaces those of earlier tasks that finished before it started
  and whose videos are all in its own slice: a re-run of a shard still replaces its summary.
* The top level holds the keys of one summary for all the tasks: for one task, its own; for
  several, each video's most telling outcome (done, then failed, skipped, busy: a video done by
  one task and busy for another was done) and the wall time from the first start to the last end.
  ``shard``, ``host`` and ``pid`` are null where the tasks differ.

A file written before the merge existed (no ``tasks``) counts as one task that finished before
any other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..io.atomic import write_json_atomic
from ..io.file_lock import locked
from ..io.staging import remove_dead_temp_files
from ..regular_file import open_regular
from .jobs import STATUSES

__all__ = ["SUMMARY_FORMAT", "write_summary", "read_tasks", "merge_tasks", "summary_lock_path", "file_lock"]

SUMMARY_FORMAT = "entitysam-batch-summary"

# Which outcome of a video a merged summary keeps when several tasks report it.
_RANK = {"done": 3, "failed": 2, "skipped": 1, "busy": 0}


def summary_lock_path(path: str | os.PathLike) -> Path:
    """``.<name>.lock`` beside the summary; a fixed-length name where that would pass 255 bytes."""
    path = Path(path)
    name = f".{path.name}.lock"
    if len(os.fsencode(name)) > 255:
        name = f".entitysam-summary-{hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]}.lock"
    return path.with_name(name)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """`path` held under ``flock`` on ``.<name>.lock`` beside it (removed afterwards), against other
    processes and the threads of this one; unlocked where the file system has no flock."""
    with locked(summary_lock_path(path)):
        yield


def _stamp(text: Any) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return stamp if stamp.tzinfo is not None else None


def _valid(task: Any) -> bool:
    if not isinstance(task, dict) or not isinstance(task.get("outcomes"), list):
        return False
    return all(isinstance(o, dict) and isinstance(o.get("name"), str) and o.get("status") in STATUSES
               for o in task["outcomes"])


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _number(value: Any) -> float:
    """A count or a duration of a task read from the file; 0 for a text, a bool, a negative number
    or one too large for a float's integers (their sum and its rate would overflow)."""
    plain = isinstance(value, (int, float)) and not isinstance(value, bool)
    return value if plain and 0 <= value < 2 ** 53 else 0


def read_tasks(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The tasks recorded in the summary file at `path`: none for a missing, damaged or foreign file."""
    try:
        # Checked before the batch, the file may have been swapped or edited since: a pipe would
        # block the end of the batch, and NaN, an infinity or nesting past the recursion limit
        # would fail the write of the merge; such a file counts as damaged.
        f = open_regular(path)
        if f is None:
            return []
        with f:
            doc = json.loads(f.read().decode("utf-8"), parse_float=_finite, parse_constant=_no_constant)
    except (OSError, ValueError, RecursionError):
        return []
    if not isinstance(doc, dict) or doc.get("format") != SUMMARY_FORMAT:
        return []
    if "tasks" not in doc:  # one task's summary, as written before summaries were merged
        doc = {k: v for k, v in doc.items() if k not in ("format", "format_version", "started", "finished")}
        return [doc] if _valid(doc) else []
    tasks = doc["tasks"]
    return [t for t in tasks if _valid(t)] if isinstance(tasks, list) else []


def _replaces(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """Whether `new` makes `old` stale: it started after `old` ended and looked at each of its videos."""
    started, finished = _stamp(new.get("started")), _stamp(old.get("finished"))
    if started is None or (finished is not None and finished > started):
        return False
    return {o["name"] for o in old["outcomes"]} <= {o["name"] for o in new["outcomes"]}


def _common(tasks: Sequence[Mapping[str, Any]], key: str) -> Any:
    values = [t.get(key) for t in tasks]
    return values[0] if all(v == values[0] for v in values) else None


def merge_tasks(tasks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The summary document of `tasks` (see the module doc)."""
    head: dict[str, Any] = {"format": SUMMARY_FORMAT, "format_version": 1}
    if len(tasks) == 1:
        return {**head, **tasks[0], "tasks": list(tasks)}
    never = datetime.min.replace(tzinfo=timezone.utc)

    def order(t: Mapping[str, Any]) -> tuple:
        shard = t.get("shard") if isinstance(t.get("shard"), dict) else {}
        count, index = shard.get("count"), shard.get("index")
        return (count if type(count) is int else -1, index if type(index) is int else -1,
                _stamp(t.get("finished")) or never)

    tasks = sorted(tasks, key=order)
    best: dict[str, dict[str, Any]] = {}
    latest = sorted(tasks, key=lambda t: _stamp(t.get("finished")) or never)
    for task in latest:  # a later task's outcome wins a tie
        for o in task["outcomes"]:
            if o["name"] not in best or _RANK[o["status"]] >= _RANK[best[o["name"]]["status"]]:
                best[o["name"]] = o
    names = list(dict.fromkeys(o["name"] for t in tasks for o in t["outcomes"]))
    outcomes = [best[n] for n in names]
    frames = sum(int(_number(o.get("frames"))) for o in outcomes if o["status"] == "done")
    starts = [s for s in (_stamp(t.get("started")) for t in tasks) if s]
    ends = [e for e in (_stamp(t.get("finished")) for t in tasks) if e]
    if len(starts) < len(tasks) or len(ends) < len(tasks):  # a summary of before the merge: no times
        seconds = max(float(_number(t.get("seconds"))) for t in tasks)
    else:
        seconds = (max(ends) - min(starts)).total_seconds()
    return {**head, "shard": _common(tasks, "shard"), "host": _common(tasks, "host"), "pid": _common(tasks, "pid"),
            "started": min(starts).isoformat(timespec="milliseconds") if starts else None,
            "finished": max(ends).isoformat(timespec="milliseconds") if ends else None,
            "videos": len(names), **{s: [o["name"] for o in outcomes if o["status"] == s] for s in STATUSES},
            "failed": [{"name": o["name"], "error": o.get("error")} for o in outcomes if o["status"] == "failed"],
            "frames": frames, "seconds": round(seconds, 3),
            "frames_per_second": round(frames / seconds, 3) if seconds > 0 and frames else None,
            "outcomes": outcomes, "tasks": tasks}


def write_summary(path: str | os.PathLike, task: Mapping[str, Any]) -> dict[str, Any]:
    """Merge one task's summary (``BatchSummary.to_json()``) into the file at `path`, atomically
    and under its lock; the document written. OSError (a full disk) leaves the file as it was.
    The temporary files that killed writes left in its folder go first (a summary's, a split
    record's in ``OUT/.entitysam-batch``: no other run looks there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {k: v for k, v in task.items() if k not in ("format", "format_version")}
    with file_lock(path):
        remove_dead_temp_files(path.parent)
        kept = [t for t in read_tasks(path) if not _replaces(entry, t)]
        doc = merge_tasks([*kept, entry])
        write_json_atomic(path, doc, indent=1)
    return doc
