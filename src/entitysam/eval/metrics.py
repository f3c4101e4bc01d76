"""Class-agnostic video panoptic metrics of EntitySAM: VEQ and STQ.

Numerically identical to the official scripts ``eval/metric/eval_veq.py`` and
``eval/metric/eval_stq_vspw_clsag.py`` (see :mod:`entitysam.eval.veq` and
:mod:`entitysam.eval.stq` for the exact rules), but each PNG is read once,
every frame is reduced to the pixel counts of its (gt id, pred id) pairs, the
VEQ windows of all lengths are built from prefix sums of those counts, and the
videos are processed in parallel (one video per task).

    >>> from entitysam.eval.metrics import evaluate, format_table
    >>> res = evaluate("out/inference", "VIPSeg_720P/panomasksRGB",
    ...                "VIPSeg_720P/panoptic_gt_VIPSeg_val.json")     # doctest: +SKIP
    >>> print(format_table(res))                                       # doctest: +SKIP

``pred_dir`` holds ``pan_pred/<video>/<frame>.png`` and ``pred.json``.

Command line: ``entitysam metrics PRED_DIR GT_DIR GT_JSON [--workers N] [--json OUT]`` (also
``python -m entitysam.eval.metrics ...``), in :mod:`entitysam.cli.metrics`.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Mapping, Sequence

from ..argtypes import MAX_THREADS, check_int, check_path_arg
from ..errors import printable
from .panoptic_io import MetricsInputError, VideoSpec, load_videos, pair_counts, read_id_png
from .stq import FrameSTQInput, stq_aggregate, stq_video_stats
from .veq import NFRAMES, FrameVEQInput, veq_aggregate, veq_video_stats

__all__ = [
    "MetricsInputError",
    "compute_veq",
    "compute_stq",
    "evaluate",
    "format_table",
    "NFRAMES",
]

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------- per video


def _read_video(video: VideoSpec, *, same_size: bool):
    """Read each frame's two PNGs once and reduce them to (gt id, pred id) pair counts."""
    tables = []
    first_shape = None
    for fr in video.frames:
        gt = read_id_png(
            os.path.join(video.gt_dir, fr.file_name),
            what=f"GT PNG (video {video.video_id!r}, frame {fr.file_name})",
            packed=True,
        )
        pred = read_id_png(
            os.path.join(video.pred_dir, fr.file_name),
            what=f"predicted PNG (video {video.video_id!r}, frame {fr.file_name})",
            packed=True,
        )
        if gt.shape != pred.shape:
            raise MetricsInputError(
                f"video {video.video_id!r} frame {fr.file_name}: GT PNG is {gt.shape[1]}x{gt.shape[0]} "
                f"but the predicted PNG is {pred.shape[1]}x{pred.shape[0]} (WxH)"
            )
        if same_size:
            if first_shape is None:
                first_shape = gt.shape
            elif gt.shape != first_shape:
                raise MetricsInputError(
                    f"video {video.video_id!r} frame {fr.file_name}: size {gt.shape[1]}x{gt.shape[0]} differs "
                    f"from the video's first frame ({first_shape[1]}x{first_shape[0]}); VEQ windows need one size"
                )
        tables.append(pair_counts(gt, pred))
    return tables


def _video_task(args: tuple[VideoSpec, bool, bool]) -> dict[str, Any]:
    video, want_veq, want_stq = args
    tables = _read_video(video, same_size=want_veq)
    out: dict[str, Any] = {}
    if want_veq:
        frames = [
            FrameVEQInput(fr.file_name, g, p, c, fr.gt_segments, fr.pred_segments)
            for fr, (g, p, c) in zip(video.frames, tables)
        ]
        out["veq"] = veq_video_stats(frames, video_id=video.video_id)
    if want_stq:
        frames = [
            FrameSTQInput(fr.file_name, g, p, c, fr.gt_segments, fr.pred_segments)
            for fr, (g, p, c) in zip(video.frames, tables)
        ]
        out["stq"] = stq_video_stats(frames, video_id=video.video_id)
    return out


def _map(fn: Callable, items: Sequence, workers: int | None) -> list:
    if workers is None:
        workers = os.cpu_count() or 1
    check_int(workers, "workers", 1, MAX_THREADS)
    workers = min(workers, len(items))
    if workers <= 1:
        return [fn(x) for x in items]
    # longest videos first keeps the pool busy; results are put back in video order
    order = sorted(range(len(items)), key=lambda i: -len(items[i][0].frames))
    results: list = [None] * len(items)
    ex = ProcessPoolExecutor(max_workers=workers, initializer=_worker_ignores_sigint)
    try:
        for i, r in zip(order, ex.map(fn, [items[i] for i in order], chunksize=1)):
            results[i] = r
    except BaseException:
        # Ctrl-C (or a failed video): stop now, not after every queued video is scored.
        _stop_pool(ex)
        raise
    ex.shutdown()
    return results


def _worker_ignores_sigint() -> None:
    """Ctrl-C reaches the whole process group: the parent handles it (one line, exit 130), the
    workers must not each print a KeyboardInterrupt traceback."""
    import signal  # noqa: PLC0415

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_pool(ex: ProcessPoolExecutor) -> None:
    processes = list(getattr(ex, "_processes", {}).values())  # no public way to stop running tasks
    ex.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.terminate()
    for proc in processes:
        proc.join(timeout=5)


def _run(pred_dir, gt_dir, gt_json, workers, want_veq: bool, want_stq: bool) -> dict[str, Any]:
    # the caller's arguments before any file is read: a None path was a bare TypeError from pathlib,
    # "" the current folder, and a bad `workers` was found only once every video had been read
    if workers is not None:
        check_int(workers, "workers", 1, MAX_THREADS)
    pred_dir, gt_dir = check_path_arg(pred_dir, "pred_dir"), check_path_arg(gt_dir, "gt_dir")
    if not isinstance(gt_json, Mapping):
        gt_json = check_path_arg(gt_json, "gt_json")
    videos = load_videos(pred_dir, gt_dir, gt_json, gt_required=("iscrowd", "area") if want_veq else ())
    per_video = _map(_video_task, [(v, want_veq, want_stq) for v in videos], workers)
    out: dict[str, Any] = {}
    if want_veq:
        out["veq"] = veq_aggregate([r["veq"] for r in per_video])
    if want_stq:
        out["stq"] = stq_aggregate([(v.video_id, v.seq_id, r["stq"]) for v, r in zip(videos, per_video)])
    return out


# ----------------------------------------------------------------------------- API


def compute_veq(pred_dir: PathLike, gt_dir: PathLike, gt_json: PathLike | Mapping[str, Any], *, workers: int | None = None) -> dict[str, Any]:
    """Class-agnostic VEQ, as ``eval_veq.py``.

    Returns ``{"windows": {k: {"nframes", "vpq", "sq", "rq", "iou_sum", "tp", "fp", "fn"}},
    "final": {"vpq", "sq", "rq"}}`` for k = (nframes - 1) * 5, nframes in (1, 2, 4, 6, 8);
    vpq/sq/rq are percentages (full precision; the official txt files round them).
    ``gt_json`` is a path or an already loaded dict. Raises :class:`MetricsInputError`.
    """
    return _run(pred_dir, gt_dir, gt_json, workers, True, False)["veq"]


def compute_stq(pred_dir: PathLike, gt_dir: PathLike, gt_json: PathLike | Mapping[str, Any], *, workers: int | None = None) -> dict[str, Any]:
    """Class-agnostic STQ, as ``eval_stq_vspw_clsag.py``.

    Returns ``{"STQ", "AQ", "IoU"}`` (fractions) plus the official per-sequence lists
    (``STQ_per_seq``, ``AQ_per_seq``, ``IoU_per_seq``, ``ID_per_seq``, ``Length_per_seq``)
    and ``per_sequence`` (one dict per video with its ``video_id``).
    Like the official script, predicted ids missing from pred.json are not an error here
    (their pixels are ignored); :func:`evaluate` and :func:`compute_veq` do reject them.
    """
    return _run(pred_dir, gt_dir, gt_json, workers, False, True)["stq"]


def evaluate(pred_dir: PathLike, gt_dir: PathLike, gt_json: PathLike | Mapping[str, Any], *, workers: int | None = None) -> dict[str, Any]:
    """VEQ and STQ in one pass over the PNGs: ``{"veq": compute_veq(...), "stq": compute_stq(...)}``."""
    return _run(pred_dir, gt_dir, gt_json, workers, True, True)


def format_table(results: Mapping[str, Any]) -> str:
    """Human-readable table of :func:`evaluate` results (or of a dict holding "veq" and/or "stq")."""
    lines: list[str] = []
    veq = results.get("veq")
    if veq is not None:
        lines.append("VEQ (class-agnostic, sliding windows)")
        lines.append(f"{'k':>4} {'frames':>6} | {'VPQ':>8} {'SQ':>8} {'RQ':>8} | {'IoU sum':>10} {'TP':>7} {'FP':>7} {'FN':>7}")
        lines.append("-" * 78)
        for k, w in sorted(veq["windows"].items(), key=lambda kv: int(kv[0])):
            lines.append(
                f"{int(k):>4} {w['nframes']:>6} | {w['vpq']:8.4f} {w['sq']:8.4f} {w['rq']:8.4f} | "
                f"{w['iou_sum']:10.4f} {w['tp']:7d} {w['fp']:7d} {w['fn']:7d}"
            )
        f = veq["final"]
        lines.append("-" * 78)
        lines.append(f"{'mean':>11} | {f['vpq']:8.4f} {f['sq']:8.4f} {f['rq']:8.4f}")
    stq = results.get("stq")
    if stq is not None:
        if lines:
            lines.append("")
        lines.append(f"STQ {stq['STQ']:.6f}   AQ {stq['AQ']:.6f}   IoU {stq['IoU']:.6f}")
        if stq.get("per_sequence"):
            lines.append(f"{'seq':>4}  {'video':<24} {'STQ':>8} {'AQ':>8} {'IoU':>8} {'frames':>7}")
            for s in stq["per_sequence"]:
                # a video_id is a folder name: a line break or a terminal escape in it split the row
                name = printable(str(s["video_id"]), limit=None)[:24]
                lines.append(
                    f"{s['seq_id']:>4}  {name:<24} {s['STQ']:8.4f} {s['AQ']:8.4f} "
                    f"{s['IoU']:8.4f} {s['length']:7d}"
                )
    return "\n".join(lines)


if __name__ == "__main__":  # `python -m entitysam.eval.metrics` (README "Metrics"), kept working
    # the command is entitysam.cli.metrics; named by string, as entitysam.cli names the commands it
    # delegates to: the library imports nothing of the command layer above it. Through the
    # `entitysam` entry point (a Ctrl-C was a KeyboardInterrupt traceback, not exit 130).
    import sys
    from importlib import import_module

    sys.argv[1:1] = ["metrics"]
    raise SystemExit(import_module("entitysam.cli").command())
