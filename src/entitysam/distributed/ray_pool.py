"""The actor pool of :mod:`.ray_runner`: each actor (:class:`VideoWorker`) loads the model once
and segments whole videos with :func:`.jobs.segment_job`; :func:`run_pool` gives each idle actor
the next video and replaces a lost actor, retrying its video. Ray is passed in (imported by the
caller only when a Ray run is asked for).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import EntitySAMError
from .jobs import SegmentOptions, VideoJob, VideoOutcome, segment_job

__all__ = ["PUBLISHED_MODELS", "ModelSpec", "VideoWorker", "WorkerLost", "Pool", "actor_class", "first_line",
           "lost_errors", "run_pool"]

PUBLISHED_MODELS = ("vit-s", "vit-l", "demo")
Say = Callable[[str], None]


# ----------------------------------------------------------------------------- the model of an actor


@dataclass(frozen=True)
class ModelSpec:
    """How each actor loads its model: a published name (``vit-s``, ``vit-l``, ``demo``) or a
    checkpoint file (``config``: its configuration, inferred from its keys if None). device:
    ``auto`` (the GPU Ray gave the actor, else CPU), ``cpu``, ``cuda``. threads: torch CPU
    threads of the actor (None: torch's choice). allow_pickle: load a checkpoint holding
    pickled objects with the full unpickler (runs any code in it: trusted files only).
    gpu_share: the fraction of its GPU the actor was given (Ray's ``num_gpus`` below 1): its query
    chunks are sized from that share of the GPU's memory, not from what the actors beside it leave
    free (``inference.device_memory``); None: a GPU of its own, or none."""

    model: str = "vit-s"
    config: str | None = None
    device: str = "auto"
    threads: int | None = None
    allow_pickle: bool = False
    gpu_share: float | None = None

    @staticmethod
    def share_of(num_gpus: float) -> float | None:
        """The gpu_share of an actor with ``num_gpus`` GPUs: the fraction when it shares one."""
        return float(num_gpus) if 0 < num_gpus < 1 else None

    @property
    def is_checkpoint(self) -> bool:
        return self.model not in PUBLISHED_MODELS

    def load(self):
        """The model (an EntitySAMError when it cannot be loaded)."""
        from ..inference.device_memory import set_gpu_share  # noqa: PLC0415
        from ..pipeline.loading import load_model  # noqa: PLC0415

        set_gpu_share(self.gpu_share)  # an actor is a process of its own: the setting is its alone
        if self.threads:
            import torch  # noqa: PLC0415

            torch.set_num_threads(self.threads)
        if self.is_checkpoint:
            return load_model(self.model, config=self.config, device=self.device, allow_pickle=self.allow_pickle)
        return load_model(None, config=self.model, device=self.device)


class VideoWorker:
    """The body of one Ray actor (made remote by :func:`actor_class`): the model, loaded once,
    and whole videos segmented with it one at a time."""

    def __init__(self, spec: ModelSpec, protect: Sequence[Any] = (),
                 describe_error: Callable[[BaseException], str] = str):
        self.protect = list(protect)  # paths never replaced (the inputs): sent once, not with every video
        # The words of a video's EntitySAMError (see segment_job): the command line sends its
        # flag wording, a module-level function that Ray pickles by reference.
        self.describe_error = describe_error
        self.load_error: str | None = None
        self.model = None
        try:  # reported by ready(): an actor that raises here is indistinguishable from a lost one
            self.model = spec.load()
        except EntitySAMError as err:
            self.load_error = describe_error(err)

    def ready(self) -> dict[str, Any]:
        """pid, host and device of this actor, and the model's load error (None if loaded)."""
        import socket  # noqa: PLC0415

        device = str(next(self.model.parameters()).device) if self.model is not None else None
        return {"pid": os.getpid(), "host": socket.gethostname(), "device": device, "error": self.load_error}

    def run(self, job: VideoJob, options: SegmentOptions, out_root: str, cwd: str | None = None) -> VideoOutcome:
        """Segment one whole video into ``out_root/<job.name>/`` (see ``segment_job``). cwd: the
        driver's working directory, where relative paths start (when this node has it: a shared
        file system); a relative path stays as given, so the manifest records what a
        sequential run records."""
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)
        if self.model is None:
            return VideoOutcome(job.name, "failed", output=str(Path(out_root) / job.name), error=self.load_error)
        return segment_job(self.model, job, options, Path(out_root), protect=self.protect,
                           describe_error=self.describe_error)


def actor_class(ray, *, num_cpus: float, num_gpus: float):
    """VideoWorker as a Ray actor class with these resources. Ray's own restarts and task
    retries are off: the driver replaces a lost actor itself, so that it can report the retry."""
    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0, max_task_retries=0)(VideoWorker)


# ----------------------------------------------------------------------------- the pool


@dataclass
class WorkerLost:
    """One lost task: the video, the attempt that was lost (1 = the first), and why."""

    name: str
    attempt: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "attempt": self.attempt, "reason": self.reason}


def lost_errors(ray) -> tuple[type[BaseException], ...]:
    """The exceptions of a task whose actor or worker process is gone (not the video's fault)."""
    ex = ray.exceptions
    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
             "OwnerDiedError", "LocalRayletDiedError")
    return tuple(getattr(ex, n) for n in names if isinstance(getattr(ex, n, None), type))


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


class Pool:
    """Actors with at most one video each; a lost actor is replaced by a new one (which loads
    the model again) in the same slot."""

    def __init__(self, ray, worker_class, spec: ModelSpec, size: int, protect: Sequence[Any] = (),
                 describe_error: Callable[[BaseException], str] = str):
        self.ray = ray
        self.worker_class = worker_class  # VideoWorker made a Ray actor class (actor_class)
        self.spec = spec
        self.protect = ray.put(list(protect))  # in the object store once for all actors
        self.describe_error = describe_error  # the words of an EntitySAMError (VideoWorker)
        self.actors = [worker_class.remote(spec, self.protect, describe_error) for _ in range(size)]
        self.restarts = 0

    def first_ready(self, max_losses: int = 2, say_error: Say | None = None) -> dict[str, Any]:
        """Wait for the first actor with its model (the others need not fit the cluster yet);
        its load error as an EntitySAMError (a bad checkpoint fails on every actor alike; a
        later actor's own load error retires it, see run_pool). An actor lost while loading
        (its process killed: out of memory, its node gone) is replaced, up to `max_losses` times
        in all; then an EntitySAMError."""
        lost_types = lost_errors(self.ray)
        waiting = {actor.ready.remote(): slot for slot, actor in enumerate(self.actors)}
        losses = 0
        while True:
            done, _ = self.ray.wait(list(waiting), num_returns=1)
            slot = waiting.pop(done[0])
            try:
                info = self.ray.get(done[0])
            except lost_types as err:
                losses += 1
                if losses > max_losses:
                    raise EntitySAMError(f"the Ray actors were lost {losses} times while loading the model "
                                         f"(out of memory? a node gone?); last: {first_line(err)}") from None
                if say_error is not None:
                    say_error(f"an actor was lost while loading the model ({first_line(err)}); "
                              f"starting a new one ({losses} of {max_losses})")
                self.replace(slot)
                waiting[self.actors[slot].ready.remote()] = slot
                continue
            if info["error"]:
                raise EntitySAMError(info["error"])
            return info

    def retire(self, slot: int) -> None:
        """End the actor of `slot` for good (its model did not load): its resources go back to
        the cluster, where an actor still waiting to be placed, or a replacement, may need them."""
        try:
            self.ray.kill(self.actors[slot], no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def replace(self, slot: int) -> None:
        self.ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self.worker_class.remote(self.spec, self.protect, self.describe_error)
        self.restarts += 1

    def shutdown(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


def run_pool(ray, pool: Pool, jobs: list[VideoJob], options: SegmentOptions, out_root: Path,
             max_retries: int, on_outcome: Callable[[VideoOutcome], None], say_error: Say) -> tuple[dict[str, VideoOutcome], list[WorkerLost]]:
    """Every job once on the pool (each ready, idle actor takes the next job, in the order of
    `jobs`), a lost task retried up to `max_retries` times on a replacement actor. Outcomes by name.

    A job goes only to an actor that has loaded its model (its ready() answered): given to one
    that the cluster could not place, it waited for good, and the run with it (more actors than
    fit, which stay unplaced while the others hold the resources); given to one whose model did
    not load (a node without the checkpoint), it failed at once, and that actor failed most of
    the batch so. Such an actor is retired, its work left to the others; the run ends when every
    job has an outcome, whatever actors are still waiting to start."""
    lost_types = lost_errors(ray)
    options_ref = ray.put(options)  # one copy in the object store, not one per task
    pending = deque((job, 1) for job in jobs)
    idle: deque[int] = deque()
    starting = {actor.ready.remote(): slot for slot, actor in enumerate(pool.actors)}
    running: dict[Any, tuple[int, VideoJob, int]] = {}
    outcomes: dict[str, VideoOutcome] = {}
    lost: list[WorkerLost] = []
    load_error, load_losses = None, 0

    def restart(slot: int) -> None:
        pool.replace(slot)
        starting[pool.actors[slot].ready.remote()] = slot

    def finish(job: VideoJob, outcome: VideoOutcome) -> None:
        if outcome.status == "failed":
            say_error(f"{job.name}: {outcome.error}")
        outcomes[job.name] = outcome
        on_outcome(outcome)

    while pending or running:
        while pending and idle:
            job, attempt = pending.popleft()
            slot = idle.popleft()
            ref = pool.actors[slot].run.remote(job, options_ref, str(out_root), os.getcwd())
            running[ref] = (slot, job, attempt)
        if not running and not starting:  # every actor retired: its model did not load
            while pending:
                job, _ = pending.popleft()
                finish(job, VideoOutcome(job.name, "failed", output=str(out_root / job.name),
                                         error=load_error or "no Ray actor could load the model"))
            break
        done, _ = ray.wait([*starting, *running], num_returns=1)
        if done[0] in starting:
            slot = starting.pop(done[0])
            try:
                info = ray.get(done[0])
            except lost_types as err:  # lost while loading the model
                load_losses += 1
                if load_losses <= max_retries:
                    say_error(f"an actor was lost while loading the model ({first_line(err)}); starting a new one")
                    restart(slot)
                else:
                    load_error = f"the Ray actors were lost {load_losses} times while loading the model; " \
                                 f"last: {first_line(err)}"
                    say_error(f"an actor was lost while loading the model ({first_line(err)}); not replaced "
                              f"(lost {load_losses} times): the others go on")
                    pool.retire(slot)
                continue
            if info["error"]:
                load_error = info["error"]
                say_error(f"an actor on {info['host']} could not load the model ({load_error}): the others go on")
                pool.retire(slot)
                continue
            idle.append(slot)
            continue
        slot, job, attempt = running.pop(done[0])
        try:
            outcome = ray.get(done[0])
        except lost_types as err:
            reason = first_line(err)
            lost.append(WorkerLost(job.name, attempt, reason))
            restart(slot)
            if attempt <= max_retries:
                say_error(f"{job.name}: its worker was lost ({reason}); retry {attempt} of {max_retries} "
                          "on a new worker")
                pending.appendleft((job, attempt + 1))
                continue
            finish(job, VideoOutcome(job.name, "failed", output=str(out_root / job.name),
                                     error=f"its worker was lost {attempt} times (max_retries={max_retries}); "
                                           f"last: {reason}"))
            continue
        except ray.exceptions.RayTaskError as err:  # an exception segment_job does not turn into an outcome
            outcome = VideoOutcome(job.name, "failed", output=str(out_root / job.name), error=first_line(err.cause)
                                   if getattr(err, "cause", None) is not None else first_line(err))
        idle.append(slot)
        finish(job, outcome)
    return outcomes, lost
