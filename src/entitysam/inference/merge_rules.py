"""The rules of the official video-level merge, written once for the offline and the online merge.

The official ``inference_video_vps_save_results`` (``eval/eval_vipseg_entity_seg.py`` of
ymq2017/entitysam) turns per-query video masks and scores into one entity id map per frame:

0. a query's score is the mean of its eIoU over every step, warm-up copies included, rounded to the
   dtype the steps computed it in (:func:`mean_step_scores`);
1. keep the queries whose score passes the threshold (:func:`kept_queries`);
2. add half the mask quality, counted over every 5th frame of the low-res logits, to their
   scores (:func:`quality_counts`, :func:`final_scores`);
3. give each pixel to the kept query with the largest score * probability, if any probability
   reaches the binary threshold (:func:`assign_pixels`);
4. a query survives if it wins at least 70% of its own foreground (:func:`area_counts`,
   :func:`survives`); the pixels it wins on its foreground carry its id (:func:`paint`).

:mod:`entitysam.inference.offline_merge` applies them to the whole video,
:mod:`entitysam.inference.online_merge` to what has been seen so far.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "MergeConfig",
    "mean_step_scores",
    "rounded_to",
    "QUALITY_FRAME_STRIDE",
    "kept_queries",
    "is_quality_frame",
    "quality_counts",
    "final_scores",
    "first_max_index",
    "assign_pixels",
    "area_counts",
    "survives",
    "id_lut",
    "paint",
]

# The official quality uses frames 0, 5, 10, ... (`cur_masks[:, ::5]`).
QUALITY_FRAME_STRIDE = 5
# Weight of the mask quality in a segment's final score (official: score + 0.5 * quality).
QUALITY_WEIGHT = 0.5



def mean_step_scores(step_scores: list[torch.Tensor] | torch.Tensor,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[Q] float32 video scores: the mean of the per-step eIoU ([S, Q] or S tensors of [Q],
    float32) over the steps, rounded to `dtype`, the dtype the steps computed the eIoU in.

    Under the official bfloat16 (or float16) autocast the mean is itself a value of that dtype,
    so it is rounded to it; the float32 result stands for it exactly. The reduction is torch's
    float32 mean over the stacked steps, the same wherever the scores are averaged, so that the
    offline and online merges give the same scores bit for bit.
    """
    stacked = step_scores if isinstance(step_scores, torch.Tensor) else torch.stack(step_scores)
    return rounded_to(stacked.mean(0), dtype)


def rounded_to(scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 `scores` rounded to `dtype` and given back as float32 (unchanged for float32)."""
    return scores if dtype == torch.float32 else scores.to(dtype).float()

@dataclass(frozen=True)
class MergeConfig:
    """Thresholds of the video merge. The defaults are the official values: the keyword defaults
    of ``inference_video_vps_save_results`` in ymq2017/entitysam ``eval/eval_vipseg_entity_seg.py``
    (the evaluation calls it without overriding them).

    overlap_threshold: a query survives if the pixels it wins, over its own foreground, reach this.
    mask_binary_threshold: probability from which a pixel is a query's foreground.
    object_mask_threshold: lowest score of a kept query (unless the top-k bound is higher).
    test_topk_per_image: at most this many best-scoring queries are kept.
    """

    overlap_threshold: float = 0.7
    mask_binary_threshold: float = 0.5
    object_mask_threshold: float = 0.05
    test_topk_per_image: int = 100


def kept_queries(scores: torch.Tensor, config: MergeConfig) -> torch.Tensor:
    """scores [Q] -> [K] int64 indices of the kept queries, ascending.

    Official rule: scores >= max(threshold, k-th best score), k = min(Q, topk). Python's max()
    keeps the float threshold unless the tensor is strictly greater, so the comparison is made
    against the same value (and dtype) as there.
    """
    q = scores.numel()
    if q == 0:
        return torch.zeros(0, dtype=torch.long)
    kth = scores.topk(k=min(q, config.test_topk_per_image))[0][-1]
    thr = kth if bool(kth > config.object_mask_threshold) else config.object_mask_threshold
    return torch.nonzero(scores >= thr).flatten()


def is_quality_frame(t: int) -> bool:
    """Whether output frame t counts in the mask quality."""
    return t % QUALITY_FRAME_STRIDE == 0


def quality_counts(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [K, ..., h, w] of quality frames -> (#(logit > 1), #(logit > -1)), [K] int64 each."""
    return (logits > 1).flatten(1).sum(-1), (logits > -1).flatten(1).sum(-1)


def final_scores(scores: torch.Tensor, above: torch.Tensor, nonneg: torch.Tensor) -> torch.Tensor:
    """[K] kept-query scores + 0.5 * mask quality, quality = above / nonneg (0 where nonneg is 0).

    int64 / int64 true division gives the default float dtype, as in the reference.
    """
    quality = above / nonneg.clamp(min=1)
    return scores + QUALITY_WEIGHT * quality


def _rank_dtype(k: int) -> torch.dtype:
    """The smallest integer dtype that holds 0 .. k (the ranks of :func:`first_max_index`)."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if k <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def first_max_index(values: torch.Tensor) -> torch.Tensor:
    """values [K, ...] -> [...] int64: the lowest k among the maxima over dim 0; a NaN counts
    as the maximum (the first NaN wins), as the official ``argmax(0)`` on the CPU.

    Built from reductions whose result does not depend on their order (the float maximum, an
    integer maximum) and elementwise ops, so every backend, and any split of the reduction,
    gives the same index: which maximum ``max(dim)``/``argmax`` return on ties is up to each
    backend's kernel (PyTorch documents the first since its CUDA kernels were made to agree with
    the CPU, but older CUDA kernels and some compiled ones reduced in blocks and returned another),
    and ties are common here (saturated sigmoids times equal scores, duplicate queries). No host
    synchronisation; about 3 bytes per element of temporaries.
    """
    k = values.shape[0]
    top = values.amax(0)  # the value is exact whatever the order (-0.0 and 0.0 compare equal below)
    is_max = values.isnan()
    is_max |= values == top  # NaN == NaN is False: where top is NaN only the NaNs are maxima
    # rank k - i: the lowest index among the maxima has the highest rank
    rank = torch.arange(k, 0, -1, dtype=_rank_dtype(k), device=values.device).view(-1, *[1] * (values.dim() - 1))
    best = (is_max * rank).amax(0)
    return k - best.long()


def assign_pixels(lowres: torch.Tensor, kept_scores: torch.Tensor, out_size: tuple[int, int],
                  thr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel winner of a chunk of frames.

    Args:
        lowres: [K, c, h, w] float32 logits of the kept queries.
        kept_scores: [K] final scores.
        out_size: (H, W).
        thr: the binary mask threshold.
    Returns:
        ids: [c, H, W] int64, argmax_k score_k * prob_k (the lowest k on ties:
            :func:`first_max_index`), -1 where every prob < thr.
        win_fg: [c, H, W] bool, the winner's own prob >= thr (the segment pixels).
        fg_count: [K] int64, #(prob_k >= thr) in this chunk.
    """
    # Same call as the reference on the [K, n, h, w] volume; bilinear interpolation
    # is computed per (k, t) plane, so chunking over t does not change any value.
    prob = F.interpolate(lowres, size=out_size, mode="bilinear", align_corners=False)
    prob.sigmoid_()
    fg = prob >= thr
    # "all probs < thr" == "max prob < thr" (NaN propagates through both as not-bg).
    is_bg = prob.amax(0) < thr
    if fg.device.type == "cpu":
        fg_count = torch.from_numpy(np.count_nonzero(fg.view(fg.shape[0], -1).numpy(), axis=1))
    else:
        fg_count = fg.flatten(1).sum(1)
    s = kept_scores.to(prob.device).view(-1, 1, 1, 1)
    if s.dtype == prob.dtype:
        # In place (s * p == p * s bit for bit); prob is not needed any more.
        weighted = prob.mul_(s)
    else:
        weighted = s * prob  # e.g. float64 scores promote, as in the reference
    ids = first_max_index(weighted)
    del weighted, prob
    ids.masked_fill_(is_bg, -1)
    win_fg = fg.gather(0, ids.clamp(min=0).unsqueeze(0)).squeeze(0) & (ids >= 0)
    return ids, win_fg, fg_count


def area_counts(ids: torch.Tensor, win_fg: torch.Tensor, fg_count: torch.Tensor,
                k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The survival counts of a chunk, from :func:`assign_pixels`'s outputs, on their device and
    without a host synchronisation (so a GPU merge need not copy the [c, H, W] winners back).

    Returns [K] int64 each: A = #(winner is k), O = #(prob_k >= thr), S = #(both).
    """
    def count(slots: torch.Tensor) -> torch.Tensor:  # slots in -1 .. k-1; -1 is not counted
        flat = slots.reshape(-1) + 1
        return torch.zeros(k + 1, dtype=torch.int64, device=flat.device).scatter_add_(
            0, flat, torch.ones_like(flat))[1:]

    return count(ids), fg_count, count(torch.where(win_fg, ids, -1))


def survives(win_area: int, fg_area: int, seg_area: int, config: MergeConfig) -> bool:
    """The official survival test of one query from its A, O, S counts."""
    if win_area > 0 and fg_area > 0 and seg_area > 0:
        return not win_area / fg_area < config.overlap_threshold
    return False


def id_lut(segment_of_kept: np.ndarray) -> np.ndarray:
    """segment_of_kept: [K] int32 segment id of each kept query, 0 if it did not survive.
    Returns [K + 1] int32: entry slot + 1 is the id painted for kept slot `slot`, entry 0 is 0."""
    lut = np.zeros(segment_of_kept.size + 1, dtype=np.int32)
    lut[1:] = segment_of_kept
    return lut


def paint(winners: torch.Tensor, segment_of_kept: np.ndarray) -> np.ndarray:
    """winners: [..., H, W] kept-query slot of each segment pixel, -1 elsewhere (any device).
    Returns the int32 id map of the same shape as winners (0 = no entity), on the host."""
    lut = id_lut(segment_of_kept)
    if winners.device.type == "cpu":
        return lut[winners.numpy() + 1]
    # painted where the winners are: int32 maps come back instead of the int64 winners
    return torch.from_numpy(lut).to(winners.device)[winners + 1].cpu().numpy()
