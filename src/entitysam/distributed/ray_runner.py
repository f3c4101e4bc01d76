"""Many videos on a Ray cluster: ``entitysam segment --batch DIR -o OUT --ray [ADDRESS]`` and
:func:`segment_many`.

    from entitysam.distributed import SegmentOptions, segment_many
    summary = segment_many(["videos/a.mp4", "videos/b"], "out", address="auto", model="vit-s")

A pool of Ray actors (Ray core), each holding the model, loaded once in its constructor. One
task is one whole video (tracking is stateful: a video is never split between workers), run by
:func:`entitysam.distributed.jobs.segment_job` exactly as a sequential ``entitysam segment``:
the same files, same bytes (only the timings of ``manifest.json`` differ), under the same
per-result lock, in the output folder every actor sees at the same path (a shared file system
on a multi-node cluster). A task whose actor is lost (the process killed or crashed, its node
gone) is retried up to ``max_retries`` times on a new actor and the driver reports it; a video
that fails with an error of its own (an unreadable input, ...) is a "failed" outcome, not
retried (it would fail again).

Ray is an optional dependency (``pip install 'entitysam[ray]'``), imported only when used.

Layer: above ``pipeline`` (like :mod:`.jobs`); ``cli`` uses it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..argtypes import GPU_SHARE_RANGE, MAX_THREADS, check_gpu_share, check_int, check_range
from ..errors import EntitySAMError, InvalidArgumentError, SourceError, say_on_stderr
from ..io.paths import name_clash
from ..io.sources import result_name
from .jobs import SegmentOptions, VideoJob, VideoOutcome, frame_count
from .local import BatchSummary
from .resume import mismatches
from .summary_file import write_summary
from .ray_pool import ModelSpec, Pool, WorkerLost, actor_class, first_line, run_pool

__all__ = ["RAY_INSTALL_HINT", "RayNotInstalledError", "RaySummary", "import_ray", "make_jobs", "longest_first",
           "segment_many"]

RAY_INSTALL_HINT = "pip install 'entitysam[ray]'"
Say = Callable[[str], None]


class RayNotInstalledError(EntitySAMError):
    """Ray is not installed (it is the optional extra ``entitysam[ray]``)."""


def import_ray():
    """The ``ray`` module, or RayNotInstalledError saying how to install it."""
    try:
        import ray  # noqa: PLC0415 - optional dependency, imported only when a Ray run is asked for
    except ImportError:
        raise RayNotInstalledError(f"running on Ray needs Ray installed: {RAY_INSTALL_HINT}") from None
    return ray


# ----------------------------------------------------------------------------- the jobs


def make_jobs(inputs: Sequence[Any], options: SegmentOptions) -> list[VideoJob]:
    """The jobs of `inputs` (paths, or VideoJob as they are) in their order, each with its frame
    count after the selection (from headers and listings, None if unknown). Two inputs with one
    result name are refused (SourceError)."""
    jobs = [item if isinstance(item, VideoJob) else VideoJob(Path(item), result_name(Path(item)),
                                                              frame_count(Path(item), options))
            for item in inputs]
    if clash := name_clash([job.name for job in jobs]):
        i, j, words = clash
        raise SourceError(f"{jobs[i].input} and {jobs[j].input} would both write to the result {jobs[i].name}"
                          f"{words}: rename one or run them with different outputs")
    return jobs


def longest_first(jobs: Sequence[VideoJob]) -> list[VideoJob]:
    """`jobs` by decreasing frame count (unknown counts as 1), ties in their order: the pool
    does not end waiting for one long video started last."""
    return sorted(jobs, key=lambda j: -max(j.num_frames or 1, 1))


# ----------------------------------------------------------------------------- the summary


@dataclass
class RaySummary(BatchSummary):
    """The summary of a Ray run: a BatchSummary of the whole list (shard 0/1, the same JSON as
    a local run) plus the actors used and the tasks lost and retried."""

    actors: int = 0
    lost: list[WorkerLost] = field(default_factory=list)

    def line(self) -> str:
        retried = f"; {len(self.lost)} lost tasks retried or failed" if self.lost else ""
        return f"ray, {self.actors} actors: {super().line().split(': ', 1)[1]}{retried}"

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "runner": "ray", "actors": self.actors,
                "lost": [w.to_json() for w in self.lost]}


# ----------------------------------------------------------------------------- the session


def _start_ray(ray, address: str | None) -> bool:
    """Connect to `address` (``auto``, ``ray://host:10001``, ``host:6379``) or, when None, use
    the session already started in this process or start a local one. True if this call
    started (and so must end) the session."""
    if ray.is_initialized():
        return False
    try:
        if address is None:
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise EntitySAMError(f"cannot start or reach {where}: {first_line(err)}") from None
    return True


def _default_gpus(ray) -> float:
    """1 GPU per actor when the cluster has GPUs, else none."""
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _actors_that_fit(ray, cpus: float, gpus: float) -> int:
    """How many actors of `cpus` CPUs and `gpus` GPUs the cluster's resources hold at once; an
    EntitySAMError when not even one (Ray would wait for resources forever)."""
    resources = ray.cluster_resources()
    have_cpus, have_gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    fit = have_cpus // cpus if cpus > 0 else float("inf")
    if gpus > 0:
        fit = min(fit, have_gpus // gpus)
    if fit < 1:
        raise EntitySAMError(f"the Ray cluster has {have_cpus:g} CPUs and {have_gpus:g} GPUs: one actor needs "
                             f"{cpus:g} CPUs and {gpus:g} GPUs")
    return int(min(fit, 1 << 20))


def _check_numbers(num_actors, gpus_per_actor, cpus_per_actor, max_retries) -> None:
    """The command line's bounds (`entitysam.argtypes`), for the Python API."""
    if num_actors is not None:
        check_int(num_actors, "num_actors", 1, MAX_THREADS)
    if gpus_per_actor is not None:
        check_gpu_share(gpus_per_actor, "gpus_per_actor")
    check_range(cpus_per_actor, "cpus_per_actor", GPU_SHARE_RANGE[0], MAX_THREADS)  # Ray counts CPUs in 1e-4 steps too
    check_int(max_retries, "max_retries", 0)


def _progress(enabled: bool, total: int):
    """(on_outcome, close): a tqdm bar of videos on the driver (none without tqdm or when disabled)."""
    from ..pipeline.progress import progress_bar  # noqa: PLC0415

    bar = progress_bar(enabled, total, "videos", unit="video")
    if bar is None:
        return (lambda outcome: None), (lambda: None)
    frames = [0]
    t0 = time.perf_counter()

    def update(outcome: VideoOutcome) -> None:
        frames[0] += outcome.frames
        bar.set_postfix_str(f"{frames[0] / max(time.perf_counter() - t0, 1e-9):.2f} frames/s", refresh=False)
        bar.update(1)

    return update, bar.close


def segment_many(inputs: Sequence[Any], output: str | os.PathLike, *, address: str | None = None,
                 num_actors: int | None = None, gpus_per_actor: float | None = None, cpus_per_actor: float = 1,
                 model: str = "vit-s", config: str | None = None, device: str = "auto", threads: int | None = None,
                 allow_pickle: bool = False, options: SegmentOptions | None = None, max_retries: int = 2,
                 progress: bool = True, protect: Sequence[Any] | None = None, say: Say | None = None,
                 say_error: Say | None = say_on_stderr, summary_path: str | os.PathLike | None = None,
                 describe_error: Callable[[BaseException], str] = str) -> RaySummary:
    """Segment every video of `inputs` into ``output/<video-name>/`` on a Ray cluster.

    inputs: video files, frame folders, images (paths), or VideoJob. output: the output root;
    on a multi-node cluster a shared file system mounted at the same path on every node (as are
    the inputs). address: None (this process's Ray session, or a new local one), ``"auto"``
    (the cluster of this node) or ``"ray://head:10001"``. num_actors: actors (default: as many
    as the cluster's GPUs, or CPUs, fit; at most one per video). gpus_per_actor: default 1 when
    the cluster has GPUs, else 0 (fractions share a GPU). cpus_per_actor: Ray CPUs per actor.
    model: ``vit-s``, ``vit-l``, ``demo`` or a checkpoint file (config: its configuration,
    allow_pickle: see ``load_model``). device: of the actors' models (``auto``: the GPU Ray
    gave the actor, else CPU). threads: torch threads per actor (default: cpus_per_actor,
    rounded down, at least 1). options: per-video options (default SegmentOptions(); progress
    bars inside actors are always off). max_retries: times a video is retried when its actor
    is lost. progress: a bar of videos on the driver (stderr). protect: paths never replaced
    (default: the inputs). say / say_error: progress and error lines (errors: stderr).
    summary_path: also merge the summary JSON into that file (atomically, see `.summary_file`).
    describe_error: the words of a video's EntitySAMError (default ``str``, the Python wording;
    the command line passes its flag wording); it runs on the actors, so it must pickle (a module-level function).

    Returns a RaySummary (a BatchSummary of shard 0/1, the same JSON as a local run, plus the
    lost tasks). Raises RayNotInstalledError without Ray, EntitySAMError when the model cannot
    be loaded or the cluster reached, InvalidArgumentError for bad numbers.
    """
    _check_numbers(num_actors, gpus_per_actor, cpus_per_actor, max_retries)
    say = say or (lambda msg: None)
    say_error = say_error or (lambda msg: None)
    options = replace(options or SegmentOptions(), quiet=True)  # bars of many actors would interleave
    if options.online:
        raise InvalidArgumentError("online mode is not available on Ray (it is for one live source at a time)")
    jobs = make_jobs(inputs, options)
    out_root = Path(output)
    if protect is None:
        protect = [j.input for j in jobs if isinstance(j.input, Path)]
    ray = import_ray()
    t0 = time.perf_counter()
    outcomes = _skip_complete(jobs, options, out_root, say)
    todo = [j for j in jobs if j.name not in outcomes]
    summary = RaySummary(shard=(0, 1), videos=[j.name for j in jobs])
    if todo:
        spec = ModelSpec(model, config=config, device=device, allow_pickle=allow_pickle,
                         threads=threads or max(1, int(cpus_per_actor)))
        started = _start_ray(ray, address)
        try:
            gpus = _default_gpus(ray) if gpus_per_actor is None else float(gpus_per_actor)
            spec = replace(spec, gpu_share=ModelSpec.share_of(gpus))
            fit = _actors_that_fit(ray, cpus_per_actor, gpus)
            summary.actors = min(num_actors or fit, len(todo))
            if summary.actors > fit:
                say(f"{summary.actors} actors asked, {fit} fit the cluster now: the others start when "
                    "resources free up")
            done, summary.lost = _run_jobs(ray, spec, summary.actors, cpus_per_actor, gpus, longest_first(todo),
                                           options, out_root, protect, max_retries, progress, say, say_error,
                                           describe_error)
            outcomes.update(done)
        finally:
            if started:
                ray.shutdown()
    summary.outcomes = [outcomes[j.name] for j in jobs]
    summary.seconds = time.perf_counter() - t0
    if summary_path is not None:
        write_summary(summary_path, summary.to_json())
    return summary


def _skip_complete(jobs: Sequence[VideoJob], options: SegmentOptions, out_root: Path,
                   say: Say) -> dict[str, VideoOutcome]:
    """With ``options.skip_existing``: the "skipped" outcomes of complete results, found by the
    driver (no lock, no actor, no model: a re-run of a finished batch starts nothing). What a
    killed run left beside a result (lock file, journal, moved-aside old result) is recovered
    first, under each result's lock, as a resumed shard does: no later run would look there."""
    from ..io.manifest import read_manifest  # noqa: PLC0415
    from ..io.staging import recover_leftovers  # noqa: PLC0415

    if not options.skip_existing:
        return {}
    recover_leftovers(out_root, [job.name for job in jobs])
    skipped = {}
    for job in jobs:
        manifest = read_manifest(out_root / job.name)
        if manifest is not None and not mismatches(manifest, options):  # else an actor reports why
            say(f"{job.name}: skipped, complete results in {out_root / job.name}")
            skipped[job.name] = VideoOutcome(job.name, "skipped", output=str(out_root / job.name))
    return skipped


def _run_jobs(ray, spec: ModelSpec, size: int, cpus: float, gpus: float, jobs: list[VideoJob],
              options: SegmentOptions, out_root: Path, protect, max_retries: int, progress: bool, say: Say,
              say_error: Say, describe_error: Callable[[BaseException], str]
              ) -> tuple[dict[str, VideoOutcome], list[WorkerLost]]:
    """The pool's outcomes (by name) and lost tasks; the pool's actors are ended afterwards."""
    out_root.mkdir(parents=True, exist_ok=True)
    pool = Pool(ray, actor_class(ray, num_cpus=cpus, num_gpus=gpus), spec, size, protect, describe_error)
    try:
        info = pool.first_ready(max_retries, say_error)
        say(f"{size} actors starting; the first on {info['host']} (pid {info['pid']}, {info['device']})")
        update, close = _progress(progress, len(jobs))
        try:
            return run_pool(ray, pool, jobs, options, out_root, max_retries, update, say_error)
        finally:
            close()
    finally:
        pool.shutdown()
