"""Class-agnostic STQ of the official ``eval/metric/eval_stq_vspw_clsag.py``.

The official script builds, per frame, the DeepLab2 panoptic encoding
``(semantic << 16) + instance`` with one entity class (semantic 1) and ignore
label 255, and feeds it to DeepLab2's numpy ``STQuality`` (2 classes, offset 2**24):

* instance numbers are the order of first appearance of each id in the video's
  JSON (GT and prediction separately), **starting at 0**;
* pixels whose id is not listed in *that frame's* JSON get semantic 255 / instance 255
  (ignored); ``iscrowd`` plays no role;
* STQuality treats instance 0 of a thing class as "crowd": so the GT segment listed
  first in a video is excluded from the association term and the predictions on it
  are not counted (a quirk of the official script, reproduced here);
* IoU uses a 3x3 confusion matrix (entity, class 0, ignore) whose ignore *row* is
  dropped; the ignore *column* (GT entity pixels predicted as ignore) is a class
  with IoU 0 when not empty, so the mean IoU is then halved.

Every pixel of a frame with the same (gt id, pred id) pair has the same encoded
labels, so a frame is fully described by its pair counts; this module works on
those.  Dictionary insertion and summation orders follow the official code, so
results are bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .panoptic_io import MetricsInputError, segment_id

__all__ = ["FrameSTQInput", "STQVideoStats", "instance_numbers", "stq_video_stats", "stq_aggregate"]

_NUM_CLASSES = 2
_IGNORE = 255
_BIT_SHIFT = 16
_BIT_MASK = (1 << _BIT_SHIFT) - 1
_OFFSET = 1 << 24
_ENTITY = 1
_EPSILON = 1e-15
_IGNORED_VALUE = (_IGNORE << _BIT_SHIFT) + _IGNORE


@dataclass
class FrameSTQInput:
    name: str
    gt_ids: np.ndarray  # pair table, int64
    pred_ids: np.ndarray
    counts: np.ndarray
    gt_segments: Sequence[Mapping[str, Any]]
    pred_segments: Sequence[Mapping[str, Any]]


@dataclass
class STQVideoStats:
    aq_outer_sum: float  # sum over GT tubes of (1 / |gt|) * sum_pred TPA * IoU
    num_tubes: int
    confusion: np.ndarray  # [3, 3] int64, rows GT semantic, cols predicted semantic
    length: int


def instance_numbers(frames_segments: Sequence[Sequence[Mapping[str, Any]]], where: str) -> dict[int, int]:
    """id -> instance number, in order of first appearance over the video's frames (from 0)."""
    out: dict[int, int] = {}
    for segs in frames_segments:
        for s in segs:
            sid = segment_id(s["id"], where=where)
            if sid not in out:
                out[sid] = len(out)
    return out


def _encode(ids: np.ndarray, listed: set[int], ins: Mapping[int, int]) -> np.ndarray:
    """(semantic << 16) + instance for each id of the pair table (entity if listed, else ignore)."""
    vals = [(_ENTITY << _BIT_SHIFT) + ins[i] if i in listed else _IGNORED_VALUE for i in ids.tolist()]
    return np.asarray(vals, dtype=np.int64).reshape(ids.shape)


def _semantic(y: np.ndarray, where: str) -> np.ndarray:
    sem = y >> _BIT_SHIFT
    sem = np.where(sem != _IGNORE, sem, _NUM_CLASSES)
    if sem.size and (sem.min() < 0 or sem.max() > _NUM_CLASSES):
        raise MetricsInputError(f"{where}: more than 65535 distinct segment ids in the video (STQ encoding overflow)")
    return sem


def _accumulate(stats: dict[int, int], keys: np.ndarray, counts: np.ndarray) -> None:
    """Official ``_update_dict_stats``: ascending unique keys, inserted in that order."""
    if keys.size == 0:
        return
    u, inv = np.unique(keys, return_inverse=True)
    sums = np.bincount(inv.reshape(-1), weights=counts, minlength=u.size).astype(np.int64)
    for k, c in zip(u.tolist(), sums.tolist()):
        stats[k] = stats.get(k, 0) + c


def stq_video_stats(frames: Sequence[FrameSTQInput], *, video_id: str = "") -> STQVideoStats:
    """One video's STQ terms from its frames' pair tables (each frame: gt_ids, pred_ids, counts,
    [K] int64 of its K (gt id, pred id) pairs, as `pair_counts`): association sum, tube count,
    [3, 3] semantic confusion, length. Pixels of ids their frame's JSON does not list are ignored;
    MetricsInputError for a JSON id that is no integer, or more than 65535 ids in the video."""
    where = f"video {video_id!r}"
    gt_ins = instance_numbers([f.gt_segments for f in frames], f"GT JSON {where}")
    pred_ins = instance_numbers([f.pred_segments for f in frames], f"pred.json {where}")

    confusion = np.zeros((_NUM_CLASSES + 1, _NUM_CLASSES + 1), np.int64)
    gts: dict[int, int] = {}
    preds: dict[int, int] = {}
    inters: dict[int, int] = {}
    for fr in frames:
        fwhere = f"{where} frame {fr.name}"
        gt_listed = {segment_id(s["id"], where=fwhere) for s in fr.gt_segments}
        pred_listed = {segment_id(s["id"], where=fwhere) for s in fr.pred_segments}
        y_true = _encode(fr.gt_ids, gt_listed, gt_ins)
        y_pred = _encode(fr.pred_ids, pred_listed, pred_ins)
        sem_t = _semantic(y_true, fwhere)
        sem_p = _semantic(y_pred, fwhere)
        np.add.at(confusion, (sem_t, sem_p), fr.counts)

        label_mask = sem_t == _ENTITY
        pred_mask = sem_p == _ENTITY
        is_crowd = label_mask & ((y_true & _BIT_MASK) == 0)
        label_mask &= ~is_crowd
        pred_mask &= ~is_crowd
        _accumulate(preds, y_pred[pred_mask], fr.counts[pred_mask])
        _accumulate(gts, y_true[label_mask], fr.counts[label_mask])
        both = label_mask & pred_mask
        _accumulate(inters, y_true[both] * _OFFSET + y_pred[both], fr.counts[both])

    # Association quality, in the official iteration order (GT tubes, then predictions).
    pred_rank = {p: r for r, p in enumerate(preds)}
    by_gt: dict[int, list[tuple[int, int, int]]] = {}
    for key, tpa in inters.items():
        g, p = divmod(key, _OFFSET)
        by_gt.setdefault(g, []).append((pred_rank[p], p, tpa))
    outer_sum = 0.0
    for gt_id, gt_size in gts.items():
        inner_sum = 0.0
        for _, pr_id, tpa in sorted(by_gt.get(gt_id, ())):
            fpa = preds[pr_id] - tpa
            fna = gt_size - tpa
            inner_sum += tpa * (tpa / (tpa + fpa + fna))
        outer_sum += 1.0 / gt_size * inner_sum
    return STQVideoStats(aq_outer_sum=outer_sum, num_tubes=len(gts), confusion=confusion, length=len(frames))


def _iou_from_confusion(confusion: np.ndarray) -> np.float64:
    intersections = confusion.diagonal()
    fps = confusion.sum(axis=0) - intersections
    fns = confusion.sum(axis=1) - intersections
    unions = intersections + fps + fns
    num_classes = np.count_nonzero(unions)
    ious = intersections.astype(np.double) / np.maximum(unions, _EPSILON).astype(np.double)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sum(ious) / num_classes


def stq_aggregate(per_video: Sequence[tuple[str, int, STQVideoStats]]) -> dict[str, Any]:
    """Official ``STQuality.result`` over the sequences (video_id, seq_id, stats); empty videos are skipped."""
    seqs = [(vid, sid, st) for vid, sid, st in per_video if st.length > 0]
    num_tubes = [st.num_tubes for _, _, st in seqs]
    aq_per_seq = [st.aq_outer_sum for _, _, st in seqs]
    aq_mean = np.sum(aq_per_seq) / np.maximum(np.sum(num_tubes), _EPSILON)
    aq_per_seq_arr = np.asarray(aq_per_seq, dtype=np.float64) / np.maximum(num_tubes, _EPSILON)

    total = np.zeros((_NUM_CLASSES + 1, _NUM_CLASSES + 1), np.int64)
    iou_per_seq = []
    for _, _, st in seqs:
        conf = st.confusion.copy()
        conf[_NUM_CLASSES, :] = 0  # drop the ignore row (GT ignore pixels)
        total += conf
        iou_per_seq.append(_iou_from_confusion(conf))
    iou_mean = _iou_from_confusion(total)
    stq = np.sqrt(aq_mean * iou_mean)
    stq_per_seq = np.sqrt(aq_per_seq_arr * np.asarray(iou_per_seq, dtype=np.float64))

    per_sequence = [
        {
            "video_id": vid,
            "seq_id": sid,
            "STQ": float(stq_per_seq[i]),
            "AQ": float(aq_per_seq_arr[i]),
            "IoU": float(iou_per_seq[i]),
            "length": st.length,
            "num_tubes": st.num_tubes,
        }
        for i, (vid, sid, st) in enumerate(seqs)
    ]
    return {
        "STQ": float(stq),
        "AQ": float(aq_mean),
        "IoU": float(iou_mean),
        "STQ_per_seq": [float(x) for x in stq_per_seq],
        "AQ_per_seq": [float(x) for x in aq_per_seq_arr],
        "IoU_per_seq": [float(x) for x in iou_per_seq],
        "ID_per_seq": [sid for _, sid, _ in seqs],
        "Length_per_seq": [st.length for _, _, st in seqs],
        "per_sequence": per_sequence,
    }
