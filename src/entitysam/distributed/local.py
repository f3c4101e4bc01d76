"""Sharded batch segmentation on this machine: one process per shard (``--shard I/N``), per
torchrun rank, or per Slurm array task (or per torchrun rank of each array task), all writing
into one output root.

Each process takes slice I of N of the same video list (:func:`entitysam.sharding.balanced_split`
by frame count, the rule ``eval vipseg`` uses), skips complete results, and locks a video only
while it processes it: overlapping or repeated shards never process a video twice at once (the
second finds it "busy"), and a killed shard's video is redone by the next run. Each process
merges its :class:`BatchSummary` into a JSON file (``OUT/.entitysam-batch/shard-I-of-N.json`` on the
command line) that other tasks may share: :mod:`.summary_file`.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import sharding
from ..errors import Remedy
from .jobs import STATUSES, SegmentOptions, VideoJob, VideoOutcome, segment_job
from .resume import mismatches
from .split_record import agreed_slices, split_slices
from .summary_file import SUMMARY_FORMAT, write_summary

__all__ = ["BatchSummary", "SUMMARY_FORMAT", "SUMMARY_DIR", "segment_many_local", "shard_from_env",
           "default_summary_path", "local_rank", "shard_jobs", "combined_shard", "ignored_array"]

SUMMARY_DIR = ".entitysam-batch"  # under the output root: hidden, so never taken for a video or a result


@dataclass
class BatchSummary:
    """What one shard did. shard: (I, N). videos: the names of its slice, in order. outcomes: one
    per video of the slice. seconds: wall time of the whole run (model loading included).
    started: when it started (seconds since the epoch, as time.time())."""

    shard: tuple[int, int]
    videos: list[str]
    outcomes: list[VideoOutcome] = field(default_factory=list)
    seconds: float = 0.0
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)

    def names(self, status: str) -> list[str]:
        return [o.name for o in self.outcomes if o.status == status]

    @property
    def failed(self) -> list[VideoOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def frames(self) -> int:
        """Frames segmented by this run (done videos)."""
        return sum(o.frames for o in self.outcomes if o.status == "done")

    @property
    def fps(self) -> float | None:
        """Frames segmented per wall-clock second of the whole run."""
        return self.frames / self.seconds if self.seconds > 0 and self.frames else None

    def line(self) -> str:
        """One line: counts per status, frames, frames/s."""
        i, n = self.shard
        counts = ", ".join(f"{len(self.names(s))} {s}" for s in STATUSES)
        rate = f" ({self.fps:.2f} frames/s)" if self.fps else ""
        return f"shard {i}/{n}: {len(self.videos)} videos: {counts}; {self.frames} frames in {self.seconds:.1f}s{rate}"

    def to_json(self) -> dict[str, Any]:
        i, n = self.shard
        # Wall-clock times in UTC: they tell a re-run from a task running beside this one in a
        # summary file that several tasks share (summary_file), on other machines too.
        when = [datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")
                for t in (self.started, self.started + self.seconds)]
        return {"format": SUMMARY_FORMAT, "format_version": 1, "shard": {"index": i, "count": n},
                "host": self.host, "pid": self.pid, "started": when[0], "finished": when[1],
                "videos": len(self.videos),
                **{s: self.names(s) for s in STATUSES},
                "failed": [{"name": o.name, "error": o.error} for o in self.failed],
                "frames": self.frames, "seconds": round(self.seconds, 3),
                "frames_per_second": round(self.fps, 3) if self.fps else None,
                "outcomes": [o.to_json() for o in self.outcomes]}


def default_summary_path(out_root: Path, shard: tuple[int, int]) -> Path:
    """``OUT/.entitysam-batch/shard-I-of-N.json``: one file per shard; its re-runs replace their
    entry, tasks that run the same shard at once (``srun -n K``) share it."""
    return Path(out_root) / SUMMARY_DIR / f"{sharding.shard_tag(*shard)}.json"


def _torchrun(env: Mapping[str, str]) -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) under torchrun with more than one process, else None."""
    if "WORLD_SIZE" not in env:
        return None
    world = sharding.env_int(env, "WORLD_SIZE", 1)
    if world < 1:
        raise sharding.ShardError(f"WORLD_SIZE={env['WORLD_SIZE']!r} in the environment: need at least 1 process")
    if world == 1:
        return None
    if env.get("RANK", "").strip() == "":  # every rank would take slice 0: the others never done
        raise sharding.ShardError(f"WORLD_SIZE={world} in the environment but no RANK: start the ranks with "
                                  "torchrun, or set RANK (0 .. WORLD_SIZE-1) in each")
    rank = sharding.env_int(env, "RANK")
    return sharding.check_shard(rank, world, f"(torchrun RANK={rank} of WORLD_SIZE={world})")


def _array_count(env: Mapping[str, str], task: int, first: int, step: int) -> int:
    """SLURM_ARRAY_TASK_COUNT, else the count of tasks SLURM_ARRAY_TASK_MIN..MAX by STEP span (older
    Slurm versions set no COUNT). Neither: ShardError. A missing count read as 1 made every
    array task take slice 0/1, i.e. every video, each exiting 0."""
    if env.get("SLURM_ARRAY_TASK_COUNT", "").strip() != "":
        return sharding.env_int(env, "SLURM_ARRAY_TASK_COUNT")
    missing = [k for k in ("SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX") if env.get(k, "").strip() == ""]
    if missing:
        raise sharding.ShardError(
            f"shard 'auto': SLURM_ARRAY_TASK_ID={task} in the environment but no SLURM_ARRAY_TASK_COUNT "
            f"(nor {' and '.join(missing)}), so the number of array tasks is unknown",
            Remedy("shard", metavar="I/N", purpose="instead (I: this task's index from 0, N: the array's task count)"))
    last = sharding.env_int(env, "SLURM_ARRAY_TASK_MAX")
    if last < first or (last - first) % step:
        raise sharding.ShardError(f"shard 'auto': SLURM_ARRAY_TASK_MIN={first}, _MAX={last} and _STEP={step} in the "
                                  "environment are not an array's range: submit a contiguous array")
    return (last - first) // step + 1


def _slurm_array(env: Mapping[str, str]) -> tuple[int, int] | None:
    """The task's slice under a Slurm array job: (ID - MIN) / STEP of COUNT, else None."""
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    task = sharding.env_int(env, "SLURM_ARRAY_TASK_ID")
    first = sharding.env_int(env, "SLURM_ARRAY_TASK_MIN", 0)
    step = sharding.env_int(env, "SLURM_ARRAY_TASK_STEP", 1)
    if step < 1:
        raise sharding.ShardError(f"shard 'auto': SLURM_ARRAY_TASK_STEP={step} in the environment: need 1 or more")
    count = _array_count(env, task, first, step)
    if (task - first) % step:
        raise sharding.ShardError(f"shard 'auto': SLURM_ARRAY_TASK_ID={task} is not on the array's range "
                                  f"(min {first}, step {step}): submit a contiguous array 0-{max(count, 1) - 1}")
    if "SLURM_ARRAY_TASK_MAX" in env:  # --array=0,2,4 has COUNT 3 but spans 0-4: tasks would miss slices
        last = sharding.env_int(env, "SLURM_ARRAY_TASK_MAX")
        if last < first or (last - first) % step or (last - first) // step + 1 != count:
            raise sharding.ShardError(f"shard 'auto': the array {first}-{last}:{step} does not hold "
                                      f"SLURM_ARRAY_TASK_COUNT={count} evenly spaced tasks: "
                                      f"submit a contiguous array 0-{max(count, 1) - 1}")
    index = (task - first) // step
    if count < 1 or not 0 <= index < count:
        raise sharding.ShardError(f"shard 'auto': SLURM_ARRAY_TASK_ID={task} with SLURM_ARRAY_TASK_MIN={first} "
                                  f"and SLURM_ARRAY_TASK_COUNT={count} is not a slice 0..{count - 1}: "
                                  f"submit a contiguous array 0-{max(count, 1) - 1}")
    return sharding.check_shard(index, count, f"'auto' (SLURM_ARRAY_TASK_COUNT={count})")


def shard_from_env(text: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """The slice of this process, or None (no sharding).

    text: the ``--shard`` value: None, ``"I/N"`` or ``"auto"``. Under torchrun (WORLD_SIZE > 1)
    each rank takes RANK/WORLD_SIZE with None or "auto" ("I/N" is refused: the ranks would all
    take the same slice). "auto" elsewhere: the Slurm array task's slice (SLURM_ARRAY_TASK_ID
    minus SLURM_ARRAY_TASK_MIN, over SLURM_ARRAY_TASK_STEP, of SLURM_ARRAY_TASK_COUNT, derived
    from MIN, MAX and STEP where COUNT is not set), else 0/1. "auto" under torchrun in a Slurm
    array job: rank R of W in array task I of N takes slice I*W + R of N*W (:func:`combined_shard`).
    Raises ShardError for bad values."""
    env = os.environ if env is None else env
    ranks = _torchrun(env)
    if text is None:  # (the array only with "auto": eval's process group takes these ranks as they are)
        return ranks
    if text.strip().lower() == "auto":
        array = _slurm_array(env)
        if ranks is not None and array is not None:
            return combined_shard(array, ranks)
        return ranks or array or (0, 1)
    shard = sharding.parse_shard(text)
    if ranks is not None:
        raise sharding.ShardError(f"shard {text} under torchrun: each rank takes its slice by itself "
                                  "(RANK/WORLD_SIZE): give no shard, or 'auto'")
    return shard


def ignored_array(text: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The Slurm array task ID that this torchrun rank ignores, for its warning; else None.

    That is torchrun (WORLD_SIZE set) in an array task (SLURM_ARRAY_TASK_ID set) with no shard
    (`text` None, see :func:`shard_from_env`): each rank takes RANK/WORLD_SIZE of the whole list
    whatever its task, so every task does the same videos and each exits 0. Rank 0 only: the
    environment, hence the mistake, is the same on every rank of a task, and all of a task's ranks
    write to one Slurm log, where W copies would be noise; each task has its own rank 0. An array
    of one task (SLURM_ARRAY_TASK_COUNT=1) repeats nothing: no warning."""
    env = os.environ if env is None else env
    task = env.get("SLURM_ARRAY_TASK_ID", "").strip()
    if text is not None or not task or "WORLD_SIZE" not in env or env.get("RANK", "").strip() not in ("", "0"):
        return None
    if env.get("SLURM_ARRAY_TASK_COUNT", "").strip() == "1":
        return None
    return task


def combined_shard(outer: tuple[int, int], inner: tuple[int, int]) -> tuple[int, int]:
    """Slice `inner` = (R, W) of slice `outer` = (I, N): slice I*W + R of N*W. The torchrun ranks of
    one Slurm array task take consecutive slices: each array task's ranks split only its share,
    where each rank taking R/W alone made every array task redo the same videos."""
    (i, n), (r, w) = outer, inner
    return sharding.check_shard(i * w + r, n * w, f"'auto' (Slurm array task {i} of {n}, torchrun rank {r} of {w}: "
                                                  f"{i * w + r}/{n * w})")


def local_rank(env: Mapping[str, str] | None = None) -> int | None:
    """LOCAL_RANK under torchrun with more than one process (the GPU of this rank), else None."""
    env = os.environ if env is None else env
    if not _torchrun(env):
        return None
    rank = sharding.env_int(env, "LOCAL_RANK", 0)
    if rank < 0:
        raise sharding.ShardError(f"LOCAL_RANK={rank} in the environment: need 0 or more (the GPU of this rank)")
    return rank


def shard_jobs(jobs: Sequence[VideoJob], shard: tuple[int, int],
               frames: Mapping[str, int | None] | None = None) -> list[VideoJob]:
    """The jobs of slice `shard` = (I, N), in their order, balanced by `frames` (frame count by
    name; default the jobs' own). The split is made over the jobs sorted by name (unique in a
    run), not in the order given: machines that list the same videos in another order (a shell's
    glob sorts by the locale, arguments written in another order) take the same slices; split in
    the given order, two shards could both take one video and neither another one, each exiting 0."""
    sharding.check_shard(*shard)
    frames = frames if frames is not None else {j.name: j.num_frames for j in jobs}
    slices = split_slices({j.name: frames[j.name] for j in jobs}, shard[1])
    return [job for job in jobs if slices[job.name] == shard[0]]


def _complete(out_root: Path, name: str, options: SegmentOptions) -> bool:
    """A complete result that answers this run is there (one that does not is left to
    `segment_job`, which reports why)."""
    from ..io.manifest import read_manifest  # noqa: PLC0415

    manifest = read_manifest(out_root / name)
    return manifest is not None and not mismatches(manifest, options)


def segment_many_local(model: Any, jobs: Sequence[VideoJob], options: SegmentOptions, out_root: Path,
                       shard: tuple[int, int] = (0, 1), *, protect: Sequence[Any] = (),
                       say: Callable[[str], None] | None = None, say_error: Callable[[str], None] | None = None,
                       summary_path: Path | None = None, warn: Callable[[str], None] | None = None,
                       describe_error: Callable[[BaseException], str] = str) -> BatchSummary:
    """Segment slice ``shard`` = (I, N) of `jobs` into ``out_root/<name>/``, one video after the
    other (:func:`segment_job`), and return the summary; with `summary_path`, also merge it into
    that file (atomically, under its lock: tasks sharing one file all keep their outcomes there,
    see :mod:`.summary_file`).

    model: an EntitySAM model, or a function returning one: called only if a video of the slice
    needs work (a re-run of a finished shard loads nothing). Complete results are skipped when
    ``options.skip_existing`` (the command line's default with --shard). With N > 1 the slices
    are those the first shard of these videos recorded in ``out_root/.entitysam-batch/``
    (:mod:`.split_record`); a video of no earlier record (added to the batch after a shard
    started), and one whose earlier run was killed while segmenting it (done last), are said
    with `warn` (default `say`). Per-video failures are in the summary;
    KeyboardInterrupt and the model loader's errors propagate.
    """
    say = say or (lambda msg: None)
    t0 = time.perf_counter()
    frames = {j.name: j.num_frames for j in jobs}
    sharding.check_shard(*shard)
    if shard[1] > 1:  # every shard of these videos takes the slices the first one recorded
        slices = agreed_slices(Path(out_root) / SUMMARY_DIR, frames, shard[1], say, warn, index=shard[0])
        mine = [job for job in jobs if slices[job.name] == shard[0]]
    else:
        mine = list(jobs)
    summary = BatchSummary(shard=tuple(shard), videos=[j.name for j in mine])
    net = None if callable(model) and not hasattr(model, "parameters") else model
    # Complete results are skipped without their lock: what a kill left beside one goes first. A
    # video whose run was killed while segmenting it goes last: one that kills the process every
    # time (out of memory, a crash in its decoder) no longer keeps the rest of the slice undone.
    from ..io.staging import recover_leftovers  # noqa: PLC0415

    killed = recover_leftovers(out_root, [job.name for job in mine])
    order = sorted(mine, key=lambda job: job.name in killed)
    outcomes: dict[str, VideoOutcome] = {}
    for k, job in enumerate(order, 1):
        if job.name in killed:  # (with warn: also in a quiet run's log, to find a video that kills it)
            (warn or say)(f"[{k}/{len(mine)}] {job.name}: an earlier run was killed while segmenting it (out of memory, "
                "a crash, a pre-emption): done last")
        if options.skip_existing and _complete(out_root, job.name, options):  # cheap: no lock, no model
            say(f"[{k}/{len(mine)}] {job.name}: skipped, complete results in {out_root / job.name}")
            outcomes[job.name] = VideoOutcome(job.name, "skipped", output=str(out_root / job.name))
            continue
        if net is None:
            net = model()
        outcomes[job.name] = segment_job(net, job, options, out_root, protect=protect,
                                         say=lambda m, k=k: say(f"[{k}/{len(mine)}] {m}"), say_error=say_error,
                                         describe_error=describe_error)
    summary.outcomes = [outcomes[job.name] for job in mine]  # in the slice's order
    summary.seconds = time.perf_counter() - t0
    if summary_path is not None:
        write_summary(summary_path, summary.to_json())
    return summary
