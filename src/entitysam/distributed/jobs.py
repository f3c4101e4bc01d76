"""One video of a batch, as every runner does it: ``entitysam segment`` (one process), the
local shards (:mod:`entitysam.distributed.local`: ``--shard``, torchrun ranks, Slurm arrays)
and cluster runners build on :func:`segment_job`.

    job = VideoJob(Path("videos/cat.mp4"), "cat", num_frames=120)
    outcome = segment_job(model, job, SegmentOptions(formats=("panoptic",)), Path("out"))
    outcome.status   # "done", "skipped", "busy" or "failed"

The result of a video is ``out_root/<job.name>/``, exactly as ``entitysam segment`` writes it
(same files, same bytes; only the timings in ``manifest.json`` differ between runs). A video is
never processed by two processes at once: the result folder's lock (:class:`OutputLock`) is
held while it is processed; a process that finds it held reports the video "busy" and moves on.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import EntitySAMError, OutputError, Remedy, SourceError
from ..io.sources import DEFAULT_MAX_PIXELS, FrameSelection
from .resume import mismatches

__all__ = ["VideoJob", "SegmentOptions", "VideoOutcome", "StreamInterrupted", "STATUSES", "prepare_job",
           "run_prepared", "segment_job", "frame_count", "one_line"]

STATUSES = ("done", "skipped", "busy", "failed")
Say = Callable[[str], None]


def _silent(msg: str) -> None:
    pass


@dataclass(frozen=True)
class VideoJob:
    """One video to segment. input: a video file, a folder of frames or an image (Path), or a
    live source (str, online only). name: its result folder under the output root (one safe
    path component, see ``entitysam.io.sources.result_name``). num_frames: its frame count after
    the frame selection (for balancing shards; None if unknown)."""

    input: Path | str
    name: str
    num_frames: int | None = None


@dataclass(frozen=True)
class SegmentOptions:
    """Everything per video that ``entitysam segment`` takes from its command line.

    formats: among panoptic, entities, overlay (checked with ``pipeline.result.check_formats``).
    dtype, exact: the model precision (``--dtype``, ``--exact``). logits_dtype: offline temporary
    logits on disk. labels: ids drawn on overlay.mp4. overwrite: replace existing results (only
    folders entitysam wrote). skip_existing: a complete result is "skipped". online, delay, live,
    queue: online mode (``--online`` ...). save_logits: None, "" (``<name>/logits.npz``) or a
    FILE where ``{video}`` is replaced by the name. selection, fps, max_pixels: how the input is
    read. quiet: no progress bars. wait_lock: wait for another process holding the result
    instead of reporting the video "busy". redo_unfinished: replace an unfinished result of an
    earlier run (resumable shards) instead of failing the video.
    """

    formats: tuple[str, ...] = ("panoptic", "entities", "overlay")
    dtype: str = "auto"
    logits_dtype: str = "float32"
    exact: bool = False
    labels: bool = False
    overwrite: bool = False
    skip_existing: bool = False
    online: bool = False
    delay: int | None = None
    live: bool | None = None
    queue: int | None = None
    save_logits: str | None = None
    selection: FrameSelection = field(default_factory=FrameSelection)
    fps: float | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    quiet: bool = False
    wait_lock: bool = False
    redo_unfinished: bool = False


@dataclass
class VideoOutcome:
    """What became of one video. status: "done" (result written), "skipped" (complete result
    already there, with skip_existing), "busy" (another process holds its result: left to it),
    "failed" (error: the one-line message). frames: frames written (0 unless done). seconds:
    wall time spent on it here. output: the result folder."""

    name: str
    status: str
    frames: int = 0
    seconds: float = 0.0
    output: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


class StreamInterrupted(KeyboardInterrupt):
    """Ctrl-C during an online video: its outputs of the frames done were finished (and reported)."""


def frame_count(job_input: Path | str, options: SegmentOptions) -> int | None:
    """The frame count of an input after the selection, from its header or listing (no
    decoding); None if unknown or unreadable (the error is reported when it is processed)."""
    from ..io.sources import open_source  # noqa: PLC0415

    if isinstance(job_input, str):
        return None
    try:
        return open_source(job_input, options.selection, fps=options.fps, max_pixels=options.max_pixels).count_hint()
    except (EntitySAMError, OSError):
        return None


def _check_selects_frames(source) -> None:
    """Frame folders and images know their frame count: an empty selection is refused before
    the model is loaded (videos only know an estimate, they fail when read)."""
    if source.kind in ("folder", "image", "array") and source.count_hint() == 0:
        raise SourceError(source.empty_message())


def _logits_file(options: SegmentOptions, name: str) -> str | None:
    return None if not options.save_logits else options.save_logits.replace("{video}", name)


def _replaces_result(options: SegmentOptions, final: Path) -> bool:
    """Whether the result folder may be replaced: with ``overwrite``, or with ``redo_unfinished``
    (resumable shards) over an unfinished result of an earlier entitysam run (an online video
    interrupted by Ctrl-C, SIGTERM or a pre-emption, a failed one): redone, not a failure of
    every re-run. The rules of replacing (only folders entitysam wrote, nothing else in them,
    never an input) hold either way."""
    from ..io.manifest import read_manifest, written_by_entitysam  # noqa: PLC0415

    if options.overwrite:
        return True
    return options.redo_unfinished and read_manifest(final) is None and written_by_entitysam(final)


def prepare_job(job: VideoJob, options: SegmentOptions, out_root: Path, *, protect: Sequence[Any] = (),
                say: Say = _silent):
    """With the lock of the result held: recover a killed run's leftovers, then the source to
    segment, or None if the result is complete and ``skip_existing``. Raises
    UnsafeOverwriteError for a result or --save-logits FILE that must not be replaced,
    EntitySAMError / OSError for an unusable input or output."""
    from ..io.logits import check_logits_file  # noqa: PLC0415
    from ..io.manifest import read_manifest  # noqa: PLC0415
    from ..io.paths import UnsafeOverwriteError  # noqa: PLC0415
    from ..io.sources import open_source  # noqa: PLC0415
    from ..io.staging import StagedOutput, recover_output  # noqa: PLC0415

    final = out_root / job.name
    if recovered := recover_output(final):
        say(f"{job.name}: {recovered} (a killed run had left it half replaced)")
    if options.skip_existing and (manifest := read_manifest(final)) is not None:
        if reasons := mismatches(manifest, options):  # replacing it takes --overwrite
            raise OutputError(f"{final} holds a complete result that does not answer this run: it "
                              + "; it ".join(reasons), Remedy("overwrite", True, "to replace it"))
        say(f"{job.name}: skipped, complete results in {final}")
        return None
    StagedOutput.check_free(final, _replaces_result(options, final), inputs=protect)
    if logits := _logits_file(options, job.name):
        try:
            check_logits_file(logits, overwrite=options.overwrite, result_dir=final, inputs=protect)
        except OutputError as err:  # a FILE argument that cannot be used: a command-line error
            raise UnsafeOverwriteError(err.problem, *err.remedies) from None
    source = open_source(job.input, options.selection, fps=options.fps, name=job.name, max_pixels=options.max_pixels)
    _check_selects_frames(source)
    return source


def _segment_offline(model, source, name: str, out_root: Path, options: SegmentOptions, protect, say: Say) -> int:
    """The offline result of one prepared source, committed atomically; returns its frame count."""
    from ..io.logits import check_logits_file, remove_failed_logits  # noqa: PLC0415
    from ..io.staging import StagedOutput  # noqa: PLC0415
    from ..pipeline.segment import segment  # noqa: PLC0415

    t0 = time.perf_counter()
    progress = not options.quiet
    replace = _replaces_result(options, out_root / name)
    with StagedOutput(out_root / name, overwrite=replace, inputs=protect) as staged:
        if options.save_logits is None:
            logits_path = None
        elif options.save_logits == "":
            logits_path = staged.path / "logits.npz"
        else:  # checked again: the file may have appeared since the start
            logits_path = check_logits_file(_logits_file(options, name), overwrite=options.overwrite,
                                            result_dir=out_root / name, inputs=protect)
        replaced = bool(options.save_logits) and os.path.lexists(logits_path)
        result = segment(model, source, dtype=options.dtype, logits_dtype=options.logits_dtype,
                         work_dir=staged.path, save_logits=logits_path, progress=progress, exact=options.exact,
                         overwrite_logits=options.overwrite)
        # A FILE outside the result, new: removed if the result is not committed (left alone, it made
        # every re-run of the video fail on it: "already exists"). One that replaced an earlier run's
        # (--overwrite) stays: removing it lost the kept result's logits with the failed run's.
        written, staging = [], None
        with contextlib.suppress(OSError):
            staging = os.stat(staged.path)  # (the folder keeps its identity when it is moved into place)
            if options.save_logits and not replaced:
                written.append((logits_path, os.lstat(logits_path)))
        try:
            with result:
                files = result.write_into(staged.path, options.formats, labels=options.labels, progress=progress)
                manifest = {**result.manifest(),
                            "files": files + (["logits.npz"] if options.save_logits == "" else [])}
            final = staged.commit(manifest)
        except BaseException:
            # (a Ctrl-C during the commit is raised once the result is in place: its FILE stays)
            with contextlib.suppress(OSError):
                if staging is not None and os.path.samestat(os.stat(out_root / name), staging):
                    written = []
            remove_failed_logits(written)
            raise
    say(f"{name}: {len(result)} frames, {len(result.entities)} entities -> {final} "
        f"({time.perf_counter() - t0:.1f}s)")
    return len(result)


def _segment_online(model, source, name: str, out_root: Path, options: SegmentOptions, protect, say: Say,
                    say_error: Say) -> int:
    """Online mode for one prepared source; returns the frames emitted. Errors propagate after
    the outputs of the frames done are finished (their manifest says "failed"); Ctrl-C raises
    StreamInterrupted once they are finished and reported."""
    from ..pipeline.stream import stream  # noqa: PLC0415

    t0 = time.perf_counter()
    final = out_root / name
    s = stream(model, source, delay=options.delay or 0, dtype=options.dtype, live=options.live,
               queue_size=options.queue or 4, output=final, formats=options.formats, labels=options.labels,
               overwrite=_replaces_result(options, final), keep_images=False, progress=not options.quiet, exact=options.exact,
               protect=protect)
    try:
        for _ in s:
            pass
    except KeyboardInterrupt:
        s.mark_interrupted()  # close() below emits the frames already processed and finishes the files
    except BaseException:
        s.close()
        if s.emitted and s.manifest is not None:  # (None: not even the manifest could be written there)
            say_error(f"{name}: the results of the {s.emitted} frames done are in {final} "
                      f"(manifest status \"{s.manifest.get('status')}\")")
        raise
    s.close()
    if s.status == "failed":  # the frames were done but their files could not be finished (e.g. disk full)
        raise OutputError(s.error or f"the results in {final} could not be finished")
    dropped = f", {s.dropped} dropped" if s.live else ""
    where = f"-> {final}" if s.emitted else "(nothing written)"
    per_frame = s.seconds["model"] / s.processed if s.processed else 0.0
    summary = (f"{s.emitted} frames{dropped}, {len(s.entities)} entities, delay {s.delay} {where} "
               f"({time.perf_counter() - t0:.1f}s, model {per_frame:.2f}s/frame)")
    if s.status == "interrupted":
        say_error(f"{name}: interrupted after {summary}")
        raise StreamInterrupted(name)
    say(f"{name}: {summary}")
    return s.emitted


def run_prepared(model, source, job: VideoJob, options: SegmentOptions, out_root: Path, *,
                 protect: Sequence[Any] = (), say: Say = _silent, say_error: Say = _silent) -> int:
    """Segment a source returned by :func:`prepare_job` (offline, or online with
    ``options.online``) into ``out_root/<job.name>``; returns the frames written."""
    if options.online:
        return _segment_online(model, source, job.name, out_root, options, protect, say, say_error)
    return _segment_offline(model, source, job.name, out_root, options, protect, say)


def _failure(err: Exception, name: str, describe: Callable[[BaseException], str] = str) -> tuple[str, str]:
    """(message, line to print) of a video's failure; `describe` words an EntitySAMError. The
    line is one line: a newline in a file name (in the message) is printed as ``\\n``."""
    from ..io.paths import describe_os_error  # noqa: PLC0415

    if isinstance(err, EntitySAMError):
        msg, line = describe(err), f"{name}: {describe(err)}"
    elif isinstance(err, OSError):
        msg = describe_os_error(err, f"results of {name}")
        line = f"{name}: {msg}"
    else:
        msg = f"{type(err).__name__}: {err}"  # unexpected failures inside the model or writers
        line = f"{name}: failed: {msg}"
    return msg, one_line(line)


def one_line(text: str) -> str:
    """`text` on one line: a newline or carriage return (in a file name the message quotes) is
    written ``\\n`` / ``\\r``, so that each error stays one ``error:`` line."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def segment_job(model, job: VideoJob, options: SegmentOptions, out_root: Path, *, protect: Sequence[Any] = (),
                say: Say | None = None, say_error: Say | None = None, source=None,
                describe_error: Callable[[BaseException], str] = str) -> VideoOutcome:
    """Segment one video into ``out_root/<job.name>/`` and say what became of it.

    Takes the result's lock without waiting (unless ``options.wait_lock``): held by another
    process -> "busy", nothing touched. Then recovers a killed run's leftovers, skips a complete
    result with ``options.skip_existing``, segments (offline, or online with ``options.online``)
    and releases the lock. Every EntitySAMError, OSError, RuntimeError and ValueError becomes a
    "failed" outcome with its one-line message (also passed to ``say_error``); KeyboardInterrupt
    propagates (StreamInterrupted in online mode, once the frames done are finished).

    protect: paths that must never be replaced (the inputs). say / say_error: progress and error
    lines (default: none). source: an already prepared source (:func:`prepare_job`, lock held).
    describe_error: the words of an EntitySAMError (default ``str``, the Python wording; the
    command line passes its flag wording).
    """
    from ..io.output_lock import OutputLock, OutputLockedError  # noqa: PLC0415

    say = say or _silent
    say_error = say_error or _silent
    final = out_root / job.name
    t0 = time.perf_counter()
    try:
        lock = OutputLock.acquire(final, wait=options.wait_lock, on_wait=say)
    except OutputLockedError as err:
        say(f"{job.name}: being written by another run: left to it")
        return VideoOutcome(job.name, "busy", output=str(final), error=describe_error(err))
    except (EntitySAMError, OSError) as err:  # the lock file cannot be made: this video fails, not the batch
        msg, line = _failure(err, job.name, describe_error)
        say_error(line)
        return VideoOutcome(job.name, "failed", seconds=time.perf_counter() - t0, output=str(final), error=msg)
    try:
        if source is None:
            source = prepare_job(job, options, out_root, protect=protect, say=say)
            if source is None:
                return VideoOutcome(job.name, "skipped", seconds=time.perf_counter() - t0, output=str(final))
        frames = run_prepared(model, source, job, options, out_root, protect=protect, say=say, say_error=say_error)
    # Kept broad on purpose: torch (OOM, CUDA, shapes), PyAV and numpy fail one video with these.
    except (EntitySAMError, OSError, RuntimeError, ValueError) as err:
        msg, line = _failure(err, job.name, describe_error)
        say_error(line)
        return VideoOutcome(job.name, "failed", seconds=time.perf_counter() - t0, output=str(final), error=msg)
    finally:
        lock.release()
    return VideoOutcome(job.name, "done", frames=frames, seconds=time.perf_counter() - t0, output=str(final))
