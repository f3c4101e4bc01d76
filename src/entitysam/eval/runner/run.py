"""Running a VIPSeg evaluation: the slice of a shard, inference video by video, merge and score.

Sharding: ``shard=(I, N)`` (``--shard I/N``, and each rank under ``torchrun``) takes a
deterministic slice of the video list, balanced by frame count; the run that completes the
last video merges (:func:`entitysam.eval.runner.output.merge_outputs`) and scores
(:func:`entitysam.eval.metrics.evaluate`) into ``DIR/metrics.json``. Under ``overwrite`` only a
run that redid every video of the list itself merges: another shard's videos may still hold
predictions from before, and no run can tell whether those will be redone (a shard not started
yet, or never): ``--merge-only`` is for the user to run once every shard is done.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ... import sharding
from ...argtypes import MAX_THREADS, check_int
from ...errors import EntitySAMError, Remedy
from ...io.output_lock import OutputLock, OutputLockedError
from ...io.staging import recover_leftovers
from ...regular_file import read_regular_bytes
from .memory import PeakMemory
from .output import (PART_FORMAT, EvalOutput, complete_parts, describe_model, merge_outputs, same_model,
                     write_output_json)
from .plan import (EvalInputError, VideoEntry, VIPSegPlan, abbreviate, check_frames, check_gt_annotations,
                   check_gt_pngs, folder_message, load_plan, official_stem)

__all__ = ["EvalSummary", "parse_shard", "shard_videos", "evaluate_vipseg", "score_outputs", "finish"]

PathLike = str | os.PathLike


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N (:func:`entitysam.sharding.parse_shard`, as an EvalInputError)."""
    try:
        return sharding.parse_shard(text)
    except sharding.ShardError as err:
        raise EvalInputError(str(err)) from None


def shard_videos(videos: Sequence[VideoEntry], index: int, count: int) -> list[VideoEntry]:
    """Slice `index` of `count` (:func:`entitysam.sharding.balanced_split` by frame count: longest
    video first to the least loaded slice, ties to the lower slice), in list order within a slice."""
    return [videos[k] for k in sharding.balanced_split([v.num_frames for v in videos], index, count)]


# ----------------------------------------------------------------------------- running


@dataclass
class EvalSummary:
    output: Path
    videos: list[str]  # this run's slice
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # being written by another run: left to it
    failed: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # videos of the whole list still incomplete
    merged: bool = False
    metrics: dict[str, Any] | None = None
    stats: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class _FrameRef:
    name: str
    index: int


def _model_descriptor(model: Any, dtype: Any) -> dict[str, Any]:
    from ...inference.precision import resolve_dtype  # noqa: PLC0415

    device = next(model.parameters()).device
    path = getattr(model, "checkpoint_path", None)
    size = digest = None
    if path:
        with contextlib.suppress(OSError):
            size = os.path.getsize(path)
            digest = _file_sha256(path)
    return {"config": model.cfg.name, "checkpoint": Path(path).name if path else None, "checkpoint_bytes": size,
            "checkpoint_sha256": digest, "dtype": str(resolve_dtype(dtype, device)).replace("torch.", "")}


def _file_sha256(path: PathLike) -> str:
    """The SHA-256 of a checkpoint file: two checkpoints of one configuration often have the same
    name and size (``model_final.pth`` of two trainings), so only their content tells them apart."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _lock_video(out: EvalOutput, vid: str) -> OutputLock | None:
    """The per-video lock (``pan_pred/.<video>.lock``), or None if another process holds it: two
    runs on one output folder (shards, ranks, or the same command twice) never stage and commit
    the same video at once, so their renames cannot interleave. A lock that cannot be taken (a
    file of the user's at its path, refused untouched) raises, as `segment --shard` fails that video."""
    try:
        return OutputLock.acquire(out.pan_pred / vid)
    except OutputLockedError:
        return None


def _failure_message(err: BaseException, vid: str, describe_error: Callable[[BaseException], str]) -> str:
    """The one-line message of a video's failure."""
    if isinstance(err, OSError):
        from ...io.paths import describe_os_error  # noqa: PLC0415

        return describe_os_error(err, f"predictions of {vid}")
    return describe_error(err) if isinstance(err, EntitySAMError) else f"{type(err).__name__}: {err}"


def _record_failure(summary: EvalSummary, out: EvalOutput, tag: str, step: str, vid: str, msg: str,
                    say_error: Callable[[str], None], set_aside_now: bool) -> None:
    """A failed video: in the summary, in the run's log (``logs/<tag>.jsonl``, what a later look
    at the folder finds) and said now. `set_aside_now`: a redo (overwrite) that failed before its
    earlier part was set aside (its lock not taken, set_aside itself failing): that part stops
    counting now."""
    if set_aside_now and (why := out.keep_unfinished(vid, msg)) is not None:
        msg += f"; its earlier predictions could not be set aside ({why}): they count as done until it is redone"
    summary.failed.append((vid, msg))
    out.log(tag, {"event": "video", "video": vid, "status": "failed", "error": msg})
    say_error(f"{step} {vid}: failed: {msg}")


def _segment_one(model: Any, plan: VIPSegPlan, entry: VideoEntry, frames: list[str], out: EvalOutput, *,
                 dtype: Any, logits_dtype: str, progress: bool, memory: PeakMemory,
                 descriptor: dict[str, Any], ordering: str) -> dict[str, Any]:
    from ...pipeline.segment import segment  # noqa: PLC0415
    from ...io.sources import FrameFolderSource  # noqa: PLC0415
    from ...io.panoptic import PanopticWriter, frame_segments  # noqa: PLC0415

    vid = entry.video_id
    folder = plan.images_dir / vid
    stage = out.stage(vid)
    try:
        memory.reset()
        t0 = time.perf_counter()
        source = FrameFolderSource(folder, files=[folder / n for n in frames], name=vid)
        result = segment(model, source, dtype=dtype, logits_dtype=logits_dtype, work_dir=stage, progress=progress)
        with result:
            writer = PanopticWriter(stage, None, vid, bbox="official")
            by_stem: dict[str, dict[str, Any]] = {}
            for info, id_map in result.items():
                ref = _FrameRef(official_stem(frames[info.index]), info.index)
                segments = frame_segments(id_map, "official")
                writer.add(info.t, ref, id_map, segments)
                record = PanopticWriter.frame_entry(info.t, ref, segments)
                record["file_name"] = frames[info.index]  # the official pred.json keeps the frame's own name
                by_stem[ref.name] = record
            writer.close()
            height, width = result.size
            num_entities = len(result.entities)
            seconds_segment = result.timings.get("segment")
        if ordering == "gt":  # the metrics pair pred.json frames with GT frames by position
            annotations = [by_stem[official_stem(n)] for n in entry.gt_names]
        else:
            annotations = [by_stem[official_stem(n)] for n in frames]
        seconds = time.perf_counter() - t0
        stats = {"video": vid, "frames": len(frames), "size": [height, width], "entities": num_entities,
                 "seconds": round(seconds, 3),
                 "seconds_model": round(seconds_segment, 3) if seconds_segment is not None else None,
                 "fps": round(len(frames) / seconds, 3) if seconds > 0 else None,
                 **memory.read(), "device": str(next(model.parameters()).device), "host": socket.gethostname(),
                 "pid": os.getpid(), "data_root": os.path.realpath(plan.data_root)}
        part = {"format": PART_FORMAT, "format_version": 1, "video_id": vid, "complete": True, "model": descriptor,
                "stats": stats, "annotations": annotations}
        out.commit(vid, stage, part)
        return stats
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def score_outputs(plan: VIPSegPlan, output: PathLike, *, workers: int | None = None,
                  log: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """VEQ + STQ of the merged predictions against the plan's GT; writes ``metrics.json``."""
    from ...jsonio import jsonable  # noqa: PLC0415
    from ..metrics import MetricsInputError, evaluate  # noqa: PLC0415

    out = Path(output)
    problem = folder_message(plan.gt_dir, "GT PNG folder", "panomasksRGB/ of the data root")
    if problem:
        raise EvalInputError(problem, Remedy("gt_dir", metavar="DIR"),
                             Remedy("metrics", False, "to only write the predictions"))
    # (--merge-only after a --no-metrics run: never checked; `"annotations": null` under a split
    # file was a TypeError traceback from gt_for_metrics)
    check_gt_annotations(plan)
    check_gt_pngs(plan)
    try:
        results = evaluate(out, plan.gt_dir, plan.gt_for_metrics(), workers=workers)
    except MetricsInputError as err:  # the predictions are ours: unusable ground truth (exit 2)
        raise EvalInputError(str(err), Remedy("metrics", False, "to only write the predictions")) from None
    doc = jsonable(results)
    doc["run"] = {"split": plan.split, "videos": len(plan.videos), "gt_json_videos": plan.gt_videos,
                  "gt_json": str(plan.gt_json), "split_file": str(plan.split_file) if plan.split_file else None,
                  "frames": (log or {}).get("total", {}).get("frames"),
                  "model": (log or {}).get("model")}
    write_output_json(out / "metrics.json", doc, "the metrics", indent=1)
    return doc


def evaluate_vipseg(data_root: PathLike, output: PathLike, *, split: str = "val",
                    model: Any = None, gt_json: PathLike | None = None, gt_dir: PathLike | None = None,
                    split_file: PathLike | None = None, shard: tuple[int, int] | str | None = None,
                    dtype: Any = "auto", logits_dtype: str = "float32", overwrite: bool = False,
                    merge: bool = True, metrics: bool = True, workers: int | None = None,
                    progress: bool = False, say: Callable[[str], None] | None = None,
                    say_error: Callable[[str], None] | None = None, log_tag: str | None = None,
                    plan: VIPSegPlan | None = None,
                    describe_error: Callable[[BaseException], str] = str) -> EvalSummary:
    """Run (or resume) the evaluation of one slice, then merge and score if every video is done.

    model: an EntitySAM model, or a function returning one (called only if a video needs
    inference). shard: ``(I, N)`` or ``"I/N"`` (default: everything). overwrite: redo the
    slice's complete videos. merge: assemble pred.json (+ metrics unless ``metrics=False``)
    when the whole list is complete (with `overwrite`: only if this run redid all of it).
    Raises :class:`EvalInputError` before any inference for unusable inputs; per-video failures
    (a file of the user's at a video's lock path included) are collected in ``summary.failed``
    (and reported with ``say_error``, default ``say``; an EntitySAMError worded by
    ``describe_error``, default ``str``, the Python wording) and leave the merge undone.
    ``say``: progress messages.
    """
    import torch  # noqa: PLC0415

    say = say or (lambda msg: None)
    say_error = say_error or say
    if workers is not None:  # used only when scoring, after all inference: check it now
        check_int(workers, "workers", 1, MAX_THREADS)
    plan = plan or load_plan(data_root, split, gt_json=gt_json, gt_dir=gt_dir, split_file=split_file)
    index, count = parse_shard(shard) if isinstance(shard, str) else (shard or (0, 1))
    if count < 1 or not 0 <= index < count:
        raise EvalInputError(f"shard {index}/{count}: need 0 <= I < N")
    # The ground truth is checked before any inference (also on torchrun ranks, which do not
    # merge: rank 0 scores later), not found missing after hours of it.
    problem = folder_message(plan.gt_dir, "GT PNG folder", "panomasksRGB/ of the data root, needed for the metrics")
    if metrics and problem:
        raise EvalInputError(problem, Remedy("gt_dir", metavar="DIR"),
                             Remedy("metrics", False, "to only write the predictions"))
    gt_sizes = None
    if metrics:
        check_gt_annotations(plan)
        gt_sizes = check_gt_pngs(plan, areas=True)
    out = EvalOutput(output)
    elsewhere = out.prepare(plan)
    if elsewhere is not None:
        say(f"{out.root} was started on the data in {elsewhere}; this run reads {os.path.realpath(plan.data_root)} "
            "(the same split and videos): each video records the data root it was read from")
    mine = shard_videos(plan.videos, index, count)
    tag = log_tag or ("run" if count == 1 else sharding.shard_tag(index, count))
    summary = EvalSummary(output=out.root, videos=[v.video_id for v in mine])
    if plan.subset:
        say(f"split file {plan.split_file} lists {len(plan.videos)} of the {plan.gt_videos} videos of "
            f"{plan.gt_json.name}: evaluating those")

    todo: list[VideoEntry] = []
    for v in mine:
        if not overwrite and out.read_part(v.video_id) is not None:
            summary.skipped.append(v.video_id)
            out.log(tag, {"event": "video", "video": v.video_id, "status": "skipped"})
        else:
            todo.append(v)
    if summary.skipped:
        say(f"{len(summary.skipped)} of {len(mine)} videos already complete in {out.root}: skipped")
        recover_leftovers(out.pan_pred, summary.skipped)  # (skipped without their lock: a killed run's lock file)

    if todo:
        frames = check_frames(plan, todo, need_gt=metrics, gt_sizes=gt_sizes)
        out.check_replaceable([v.video_id for v in todo])  # before loading the model
        if isinstance(model, torch.nn.Module):
            net = model
        elif callable(model):
            net = model()
        else:
            raise EntitySAMError("evaluate_vipseg needs a model (or a function returning one)")
        descriptor = _model_descriptor(net, dtype)
        _, parts = complete_parts(out, plan)
        others = sorted(v for v, p in parts.items() if not same_model(p.get("model"), descriptor)
                        and not (overwrite and v in {e.video_id for e in todo}))
        if others:
            raise EvalInputError(
                f"output {out.root} already holds predictions of another model ("
                f"{describe_model(parts[others[0]].get('model'))}) for {len(others)} video(s) ({abbreviate(others)}); "
                f"this run uses {describe_model(descriptor)}: choose another output folder")
        memory = PeakMemory(next(net.parameters()).device)
        ordering = "gt" if metrics else "frames"
        for k, v in enumerate(todo, 1):
            step = f"[{k}/{len(todo)}]"
            lock, aside = None, False  # (aside: this video's earlier part set aside, under its lock)
            try:
                lock = _lock_video(out, v.video_id)  # (one that cannot be taken fails this video, as in a batch)
                if lock is None:  # another run (same shard twice, or overlapping runs) is doing this video
                    summary.busy.append(v.video_id)
                    out.log(tag, {"event": "video", "video": v.video_id, "status": "busy"})
                    say(f"{step} {v.video_id}: being written by another run on {out.root}: left to it")
                    continue
                if not overwrite and out.read_part(v.video_id) is not None:  # finished by another run since the listing
                    summary.skipped.append(v.video_id)
                    out.log(tag, {"event": "video", "video": v.video_id, "status": "skipped"})
                    continue
                out.set_aside(v.video_id)  # (with overwrite: its earlier part no longer counts)
                aside = True
                stats = _segment_one(net, plan, v, frames[v.video_id], out, dtype=dtype, logits_dtype=logits_dtype,
                                     progress=progress, memory=memory, descriptor=descriptor, ordering=ordering)
            except KeyboardInterrupt:
                if overwrite and not aside:  # (after it, only the redo's own commit can be in place: kept)
                    out.keep_unfinished(v.video_id, "interrupted")
                out.log(tag, {"event": "video", "video": v.video_id, "status": "interrupted"})
                raise
            # Kept broad on purpose: torch (OOM, CUDA, shapes), PyAV and a video's odd data fail one video.
            except (EntitySAMError, OSError, RuntimeError, ValueError, KeyError) as err:
                _record_failure(summary, out, tag, step, v.video_id, _failure_message(err, v.video_id, describe_error),
                                say_error, overwrite and not aside)
                continue
            finally:
                if lock is not None:
                    lock.release()
            summary.done.append(v.video_id)
            summary.stats.append(stats)
            if overwrite and len(summary.done) == 1 and (removed := out.remove_merged()):
                say(f"{', '.join(removed)} removed from {out.root}: merged from the predictions before this run's")
            out.log(tag, {"event": "video", "status": "done", **stats})
            say(f"{step} {v.video_id}: {stats['frames']} frames, {stats['entities']} entities, "
                f"{stats['seconds']:.1f}s ({stats['fps'] or 0:.2f} frames/s), peak RSS {stats['peak_rss_mib']:.0f} MiB"
                + (f", CUDA {stats['cuda_max_allocated_mib']:.0f} MiB" if stats["cuda_max_allocated_mib"] else ""))

    summary.missing, _ = complete_parts(out, plan)
    # Not after a failure: a video whose earlier part could not be set aside (keep_unfinished) would
    # be counted as if redone. Under `overwrite`, only after redoing every video (see the module doc).
    redid_all = set(summary.done) >= set(plan.video_ids)
    if merge and not summary.missing and not summary.failed and (redid_all or not overwrite):
        finish(plan, out.root, summary, metrics=metrics, workers=workers, say=say)
    return summary


def finish(plan: VIPSegPlan, output: PathLike, summary: EvalSummary | None = None, *, metrics: bool = True,
           workers: int | None = None, say: Callable[[str], None] = lambda m: None) -> dict[str, Any] | None:
    """Merge (pred.json, log.json) and, with `metrics`, score (metrics.json). Returns the metrics."""
    before = _file_bytes(Path(output) / "pred.json")
    log = merge_outputs(plan, output)
    t = log["total"]
    say(f"pred.json: {t['videos']} videos, {t['frames']} frames; inference {t['seconds']:.1f}s"
        + (f" ({t['fps']:.2f} frames/s)" if t["fps"] else "") + f" -> {Path(output) / 'pred.json'}")
    scores = Path(output) / "metrics.json"
    # other predictions (`--overwrite --no-metrics`, or scoring that fails now): the scores of the
    # earlier ones were left beside them, as if theirs
    if _file_bytes(Path(output) / "pred.json") != before and os.path.lexists(scores):
        scores.unlink(missing_ok=True)
        if not metrics:
            say(f"{scores} removed: it scored the earlier predictions")
    result = None
    if metrics:
        t0 = time.perf_counter()
        result = score_outputs(plan, output, workers=workers, log=log)
        say(f"metrics in {time.perf_counter() - t0:.1f}s -> {Path(output) / 'metrics.json'}")
    if summary is not None:
        summary.merged = True
        summary.metrics = result
    return result


def _file_bytes(path: Path) -> bytes | None:
    """The content of the regular file `path`, or None (missing, unreadable, not a regular file)."""
    try:
        return read_regular_bytes(path)
    except OSError:
        return None
