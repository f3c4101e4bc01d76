"""The video-level panoptic merge of the official EntitySAM pipeline, exactly.

:func:`merge_video_panoptic` / :func:`iter_video_panoptic` are the official
``inference_video_vps_save_results``: per-query video masks and scores are merged into one
entity id map per frame. The official code materialises the full ``[K, n, H, W]`` probability
volume; here frames are processed in chunks so that peak memory does not grow with the number
of frames, with bit-identical results (every step is per pixel except integer counts, which are
accumulated). Hole filling is in :mod:`entitysam.inference.holes`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .merge_rules import (QUALITY_FRAME_STRIDE, MergeConfig, area_counts, assign_pixels, final_scores, id_lut,
                          kept_queries, paint, quality_counts, survives)

__all__ = [
    "PanopticPlan",
    "PanopticResult",
    "plan_video_panoptic",
    "iter_video_panoptic",
    "merge_video_panoptic",
]

# ---------------------------------------------------------------------------
# Video panoptic merge
# ---------------------------------------------------------------------------

# Default memory budget for one chunk of the [K, c, H, W] float32 probability volume.
# Small chunks are also faster (cache-friendlier): ~1 frame for 50 queries at 360p.
_DEFAULT_CHUNK_BYTES = 64 << 20


@dataclass
class PanopticResult:
    """Output of :func:`merge_video_panoptic`.

    Attributes:
        id_maps: [n, H, W] int32 entity id per pixel (0 = no entity), or None when
            frames were streamed to a ``frames_out`` callback instead.
        segment_ids: ids in creation order (1, 2, ...).
        query_index: for each segment, the query that produced it, in the numbering
            of the input ``scores`` (the official ``result["pred_ids"]``).
        scores: final score (eIoU score + 0.5 * mask quality) of each segment.
    """

    id_maps: np.ndarray | None
    segment_ids: list[int]
    query_index: list[int]
    scores: list[float]


@dataclass
class PanopticPlan:
    """Result of the counting passes: which queries survive and with which id.

    Attributes:
        num_frames: n.
        out_size: (H, W).
        kept: [K] original query index of each query passing the score threshold.
        kept_scores: [K] their final scores (score + 0.5 * quality), same dtype as
            the input scores (float32 normally).
        segment_of_kept: [K] int32, segment id assigned to each kept query, 0 if dropped.
        segment_ids, query_index, scores: per segment, as in :class:`PanopticResult`.
    """

    num_frames: int
    out_size: tuple[int, int]
    kept: torch.Tensor
    kept_scores: torch.Tensor
    segment_of_kept: np.ndarray
    segment_ids: list[int] = field(default_factory=list)
    query_index: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    config: MergeConfig = field(default_factory=MergeConfig)  # the thresholds used
    device: torch.device | str | None = None  # where the per-pixel assignment runs


def _code_dtype(k: int) -> torch.dtype:
    """The dtype of the per-pixel codes (kept slot + 1, 0 = none) of K kept queries."""
    return torch.uint8 if k < 256 else torch.int32


def _num_frames(logits: Any) -> int:
    shape = getattr(logits, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError("logits must have a 4-D .shape [Q, n, h, w]")
    return int(shape[1])


def _load_chunk(logits: Any, t0: int, t1: int, kept: torch.Tensor,
                device: torch.device | str | None = None) -> torch.Tensor:
    """logits[:, t0:t1] of the kept queries as contiguous float32: [K, t1-t0, h, w], on
    `device` (None: where the logits are)."""
    chunk = logits[:, t0:t1]
    if isinstance(chunk, torch.Tensor):
        chunk = chunk[kept.to(chunk.device)]
    else:
        # Fancy indexing copies out of a (possibly read-only) memmap.
        chunk = torch.from_numpy(np.asarray(chunk)[kept.numpy()])
    return chunk.to(device=device, dtype=torch.float32).contiguous()


def _chunk_bounds(n: int, step: int) -> Iterator[tuple[int, int]]:
    for t0 in range(0, n, step):
        yield t0, min(n, t0 + step)


def _resolve_chunk(frame_chunk: int | None, n: int, k: int, out_size: tuple[int, int]) -> int:
    if frame_chunk is None:
        per_frame = max(1, k) * out_size[0] * out_size[1] * 4
        frame_chunk = _DEFAULT_CHUNK_BYTES // per_frame
    return int(max(1, min(max(n, 1), frame_chunk)))


def plan_video_panoptic(
    scores: torch.Tensor | np.ndarray | Sequence[float],
    logits: Any,
    out_size: Sequence[int],
    *,
    config: MergeConfig = MergeConfig(),
    frame_chunk: int | None = None,
    device: torch.device | str | None = None,
    winners_out: Callable[[int, torch.Tensor], None] | None = None,
) -> PanopticPlan:
    """Run the counting passes of the official merge and decide the segments.

    Args:
        scores: [Q] per-query video scores (mean eIoU), float32.
        logits: [Q, n, h, w] low-res mask logits; a tensor, ndarray or anything with a
            4-D ``.shape`` whose ``logits[:, t0:t1]`` gives a tensor/ndarray (e.g. a
            float16 ``np.memmap``). Chunks are converted to float32.
        out_size: (H, W) output resolution.
        config: the merge thresholds (default: the official ones).
        frame_chunk: frames per chunk (None: as many as fit in ~64 MiB of
            [K, c, H, W] float32 probabilities).
        device: where the per-pixel assignment runs (None: where the logits are; a
            GPU for the device path). Same result on every device.
        winners_out: optional ``winners_out(t0, codes)`` with the [c, H, W] codes of every chunk
            starting at frame t0, on the CPU: kept slot + 1 of each segment pixel, 0 elsewhere
            (uint8 while K < 256, else int32; made compact where the assignment ran).

    Returns:
        A :class:`PanopticPlan`; feed it to :func:`iter_video_panoptic` for the maps.
    """
    out_hw = (int(out_size[0]), int(out_size[1]))
    scores_t = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores)
    if not scores_t.is_floating_point():
        scores_t = scores_t.to(torch.float32)
    scores_t = scores_t.detach().cpu().reshape(-1)
    q = scores_t.numel()
    n = _num_frames(logits)
    if int(logits.shape[0]) != q:
        raise ValueError(f"{q} scores but logits has {logits.shape[0]} queries")

    kept = kept_queries(scores_t, config)
    k = kept.numel()
    if k == 0:
        return PanopticPlan(n, out_hw, kept, scores_t[:0], np.zeros(0, np.int32),
                            config=config)

    chunk = _resolve_chunk(frame_chunk, n, k, out_hw)

    # Pass 0: mask quality over every 5th FRAME of the low-res logits.
    above = torch.zeros(k, dtype=torch.int64)
    nonneg = torch.zeros(k, dtype=torch.int64)
    for t in range(0, n, QUALITY_FRAME_STRIDE):
        frame_above, frame_nonneg = quality_counts(_load_chunk(logits, t, t + 1, kept).cpu())
        above += frame_above
        nonneg += frame_nonneg
    kept_scores = final_scores(scores_t[kept], above, nonneg)

    # Pass 1: per query, A = #(argmax == k), O = #(prob_k >= thr), S = #(both).
    totals = [torch.zeros(k, dtype=torch.int64) for _ in range(3)]
    for t0, t1 in _chunk_bounds(n, chunk):
        lo = _load_chunk(logits, t0, t1, kept, device)
        ids, win_fg, fg_count = assign_pixels(lo, kept_scores, out_hw, config.mask_binary_threshold)
        # summed where the pixels were assigned, read back once after the last chunk
        totals = [total.to(ids.device) + count for total, count in zip(totals, area_counts(ids, win_fg, fg_count, k))]
        if winners_out is not None:
            winners_out(t0, (torch.where(win_fg, ids, -1) + 1).to(_code_dtype(k)).cpu())
    totals = [total.cpu() for total in totals]

    segment_of_kept = np.zeros(k, dtype=np.int32)
    plan = PanopticPlan(n, out_hw, kept, kept_scores, segment_of_kept,
                        config=config, device=device)
    next_id = 0
    for j in range(k):
        if survives(int(totals[0][j]), int(totals[1][j]), int(totals[2][j]), config):
            next_id += 1
            segment_of_kept[j] = next_id
            plan.segment_ids.append(next_id)
            plan.query_index.append(int(kept[j]))
            plan.scores.append(float(kept_scores[j]))
    return plan


def iter_video_panoptic(
    plan: PanopticPlan, logits: Any, *, frame_chunk: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream the id maps of a :class:`PanopticPlan`, one frame at a time.

    Recomputes the per-pixel winners chunk by chunk (the same arithmetic as the
    counting pass), so memory stays independent of the number of frames.

    Args:
        plan: from :func:`plan_video_panoptic` on the same ``logits``.
        logits: [Q, n, h, w] as for :func:`plan_video_panoptic`.
        frame_chunk: frames per chunk (None: memory-budgeted default).

    Yields:
        (t, id_map) with id_map [H, W] int32 (0 = no entity), t = 0..n-1 in order.
    """
    n, (h, w) = plan.num_frames, plan.out_size
    k = plan.kept.numel()
    if k == 0 or not plan.segment_ids:
        for t in range(n):
            yield t, np.zeros((h, w), dtype=np.int32)
        return
    chunk = _resolve_chunk(frame_chunk, n, k, plan.out_size)
    for t0, t1 in _chunk_bounds(n, chunk):
        lo = _load_chunk(logits, t0, t1, plan.kept, plan.device)
        ids, win_fg, _ = assign_pixels(lo, plan.kept_scores, plan.out_size, plan.config.mask_binary_threshold)
        maps = paint(torch.where(win_fg, ids, -1), plan.segment_of_kept)
        for i in range(t1 - t0):
            yield t0 + i, maps[i]


def merge_video_panoptic(
    scores: torch.Tensor | np.ndarray | Sequence[float],
    logits: Any,
    out_size: Sequence[int],
    *,
    config: MergeConfig = MergeConfig(),
    frame_chunk: int | None = None,
    frames_out: Callable[[int, np.ndarray], None] | None = None,
    device: torch.device | str | None = None,
    work_dir: str | os.PathLike | None = None,
) -> PanopticResult:
    """Merge per-query video masks into entity id maps, exactly as the official
    ``inference_video_vps_save_results`` (class labels aside, they do not affect ids).

    Args:
        scores: [Q] float32 per-query scores (mean eIoU over the processed steps).
        logits: [Q, n, h, w] low-res mask logits (tensor, ndarray, or any object with
            a 4-D ``.shape`` supporting ``logits[:, t0:t1]``, e.g. a float16 memmap).
        out_size: (H, W).
        config: the merge thresholds (default: the official ones).
        frame_chunk: frames processed together (None: memory-budgeted default).
        frames_out: optional callback ``frames_out(t, id_map[H, W] int32)``. When
            given, frames are streamed to it and ``id_maps`` is None (each pixel's winner
            waits in a temporary file: H * W bytes a frame while fewer than 256 queries are
            kept); otherwise the [n, H, W] maps are returned.
        device: where the per-pixel assignment runs (see :func:`plan_video_panoptic`).
        work_dir: folder of the streamed winners' temporary file (None: the system's).

    Returns:
        :class:`PanopticResult`.
    """
    # The counting pass keeps each pixel's winner (a byte while fewer than 256 queries are kept):
    # the maps are then painted from those, not from a second pass over the logits.
    n = _num_frames(logits)
    out_hw = (int(out_size[0]), int(out_size[1]))
    if frames_out is None:
        codes: list[np.ndarray] = []  # [n, H, W] in all, as compact as the codes come
        plan = plan_video_panoptic(scores, logits, out_hw, config=config, frame_chunk=frame_chunk, device=device,
                                   winners_out=lambda t0, c: codes.append(c.numpy()))
        if not plan.segment_ids:
            return PanopticResult(np.zeros((n, *out_hw), np.int32), [], [], [])
        lut = id_lut(plan.segment_of_kept)
        id_maps = np.empty((n, *out_hw), dtype=np.int32)
        t = 0
        for chunk in codes:
            id_maps[t:t + len(chunk)] = lut[chunk]
            t += len(chunk)
        return PanopticResult(id_maps, plan.segment_ids, plan.query_index, plan.scores)

    # streamed: the codes go through a temporary file, so memory stays flat
    with tempfile.TemporaryFile(dir=work_dir, prefix="entitysam-winners-") as file:
        plan = plan_video_panoptic(scores, logits, out_hw, config=config, frame_chunk=frame_chunk, device=device,
                                   winners_out=lambda t0, c: file.write(c.numpy().tobytes()))
        lut = id_lut(plan.segment_of_kept)
        dtype = torch.empty(0, dtype=_code_dtype(len(plan.kept))).numpy().dtype
        file.seek(0)
        for t in range(n):
            if plan.segment_ids:
                codes = np.frombuffer(file.read(out_hw[0] * out_hw[1] * dtype.itemsize), dtype=dtype)
                frames_out(t, lut[codes.reshape(out_hw)])
            else:
                frames_out(t, np.zeros(out_hw, dtype=np.int32))
    return PanopticResult(None, plan.segment_ids, plan.query_index, plan.scores)
