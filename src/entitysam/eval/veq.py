"""Class-agnostic VEQ (video entity quality) of the official ``eval/metric/eval_veq.py``.

The official script re-reads every PNG of every sliding window (step 1) for each
window length ``nframes`` in (1, 2, 4, 6, 8) and matches the segments (tubes) of
each window.  Everything a window needs is a sum over its frames of per-frame
quantities, so here each frame is reduced once to

* the pixel counts of its (gt id, pred id) pairs,
* the GT JSON ``area`` of each GT segment (duplicate ids in a frame are summed),
  its ``iscrowd`` flag and whether it is listed in that frame,
* the pixel count of each predicted segment listed in ``pred.json``,

and the window sums come from prefix sums over the frame axis, for all windows of
a length at once.  The per-window matching rules are those of the official script:

* a (gt, pred) pair of the window is considered only if the gt id is listed in the
  GT JSON of some frame of the window and is not ``iscrowd == 1`` (the flag of its
  first listing in the window), and the pred id is listed in ``pred.json``;
* ``union = pred_area + gt_json_area - intersection - |pred ∩ VOID|`` with VOID = id 0,
  ``iou = intersection / union``; every pair with ``iou > 0.5`` is a TP (the official
  code does not enforce one-to-one matching, neither does this);
* FN: GT segments of the window, not matched and not crowd;
* FP: predicted segments of the window, not matched, unless more than half of their
  pixels lie on VOID or on crowd GT segments of the window.

The IoU sum is accumulated in the official order (per video: windows in order,
pairs by ascending (gt id, pred id); then videos in order), so results are
bit-identical to the official script.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .panoptic_io import MetricsInputError, segment_id

__all__ = [
    "NFRAMES",
    "check_gt_segment",
    "window_key",
    "FrameVEQInput",
    "veq_video_stats",
    "veq_aggregate",
    "pq_from_stats",
]

NFRAMES = (1, 2, 4, 6, 8)
_VOID = 0
_SHIFT = 24  # ids are < 2**24 (RGB encoding)
_BLOCK = 32  # window starts per pass of veq_video_stats (memory: (_BLOCK + 7) frames of pairs)


def window_key(nframes: int) -> int:
    """The official window label k = (nframes - 1) * 5 (VIPSeg's 5-frame annotation stride)."""
    return (nframes - 1) * 5


@dataclass
class FrameVEQInput:
    """What VEQ needs from one frame."""

    name: str
    gt_ids: np.ndarray  # pair table, int64, sorted by (gt, pred)
    pred_ids: np.ndarray
    counts: np.ndarray
    gt_segments: Sequence[Mapping[str, Any]]
    pred_segments: Sequence[Mapping[str, Any]]


def check_gt_segment(s: Mapping[str, Any], where: str, pixels: int | None = None) -> tuple[int, Any, bool]:
    """(id, area, crowd) of a GT JSON segment, or MetricsInputError: the id a 24-bit integer, the
    area a pixel count (of at most `pixels` when given), iscrowd 0 or 1. Also run by
    `eval vipseg` on the whole GT JSON before any inference."""
    sid = segment_id(s["id"], where=where)
    area = s["area"]
    if isinstance(area, bool) or not isinstance(area, (int, float, np.integer, np.floating)):
        raise MetricsInputError(f"{where}: GT segment {sid} has a non-numeric area {area!r}")
    # NaN, infinite, negative or larger-than-the-frame areas are no pixel counts: they gave
    # tracebacks (10**400), errors blaming the wrong frame (float prefix sums of 1e30) or
    # quietly wrong IoUs, depending on where they landed
    if not 0 <= area <= (pixels if pixels is not None else float("inf")):
        shown = (f"{area:.6g}" if isinstance(area, (float, np.floating))
                 else str(area) if abs(area) < 10**12 else "over 10**12")
        of = f" of this {pixels}-pixel frame" if pixels is not None else ""
        raise MetricsInputError(f"{where}: GT segment {sid} has area {shown} in the GT JSON, not a pixel count{of}")
    crowd = s["iscrowd"]
    # the official test is `iscrowd == 1`: "1", [1] or 2 would quietly make a crowd segment a
    # counted one; only the values that test reads as intended are accepted
    if isinstance(crowd, str) or not isinstance(crowd, (int, float, np.number)) or crowd not in (0, 1):
        raise MetricsInputError(f"{where}: GT segment {sid} has iscrowd {crowd!r}, not 0 or 1")
    return sid, area, crowd == 1


def _frame_gt_table(fr: FrameVEQInput, where: str) -> dict[int, list]:
    """GT JSON of a frame: id -> [area (summed over duplicates), iscrowd flag of the first entry]."""
    out: dict[int, list] = {}
    pixels = int(fr.counts.sum())
    for s in fr.gt_segments:
        sid, area, crowd = check_gt_segment(s, where, pixels)
        if sid in out:
            out[sid][0] += area
        else:
            out[sid] = [area, crowd]
    return out


def _frame_pred_table(fr: FrameVEQInput, where: str) -> dict[int, int]:
    """Predicted segments of a frame: id -> pixel count, validated against pred.json like the official script."""
    json_area: dict[int, Any] = {}
    has_area: dict[int, bool] = {}
    for s in fr.pred_segments:
        sid = segment_id(s["id"], where=where)
        a = s.get("area")
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float, np.integer, np.floating))):
            raise MetricsInputError(f"{where}: predicted segment {sid} has a non-numeric area {a!r} in pred.json")
        if sid in json_area:
            has_area[sid] = has_area[sid] and a is not None
            if has_area[sid]:
                json_area[sid] += a
        else:
            json_area[sid] = a
            has_area[sid] = a is not None
    if fr.pred_ids.size:
        png_ids, inv = np.unique(fr.pred_ids, return_inverse=True)
        png_cnt = np.bincount(inv.reshape(-1), weights=fr.counts).astype(np.int64)
    else:
        png_ids = png_cnt = np.zeros(0, np.int64)
    out: dict[int, int] = {}
    for pid, cnt in zip(png_ids.tolist(), png_cnt.tolist()):
        if pid not in json_area:
            if pid == _VOID:
                continue
            raise MetricsInputError(
                f"{where}: segment id {pid} is present in the predicted PNG but not in pred.json"
            )
        if has_area[pid] and json_area[pid] != cnt:
            raise MetricsInputError(
                f"{where}: predicted segment {pid} has area {json_area[pid]} in pred.json "
                f"but {cnt} pixels in the PNG"
            )
        out[pid] = cnt
    missing = [sid for sid in json_area if sid not in out]
    if missing:
        raise MetricsInputError(
            f"{where}: segment id(s) {missing} are listed in pred.json but not present in the predicted PNG"
        )
    return out


def _prefix(a: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0] + 1,) + a.shape[1:], dtype=a.dtype)
    np.cumsum(a, axis=0, out=out[1:])
    return out


def _lookup(universe: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each value in the sorted universe, -1 where absent."""
    if universe.size == 0:
        return np.full(values.shape, -1, np.intp)
    pos = np.searchsorted(universe, values)
    pos = np.minimum(pos, universe.size - 1)
    return np.where(universe[pos] == values, pos, -1)


def veq_video_stats(
    frames: Sequence[FrameVEQInput],
    *,
    video_id: str = "",
    nframes_list: Iterable[int] = NFRAMES,
) -> dict[int, tuple[float, int, int, int]]:
    """Per window length: (IoU sum, TP, FP, FN) of one video, summed over its windows."""
    nframes_list = tuple(nframes_list)
    out = {n: (0.0, 0, 0, 0) for n in nframes_list}
    gt_tabs, pred_tabs = [], []
    for fr in frames:
        where = f"video {video_id!r} frame {fr.name}"
        gt_tabs.append(_frame_gt_table(fr, where))
        pred_tabs.append(_frame_pred_table(fr, where))
    # The windows starting in one block of _BLOCK frames at a time, over the frames they cover:
    # the tables below are [frames, pairs of those frames], so over a whole video they grew with
    # (video length)^2 when ids change from frame to frame (a prediction without tracking: 40
    # frames of 64x48 with new ids per pixel took 1 GB). Blocks in order and the running IoU sum
    # keep the official summation order, hence bit-identical results.
    longest = max(nframes_list, default=1)
    for a in range(0, len(frames), _BLOCK):
        b = min(len(frames), a + _BLOCK + longest - 1)
        _add_windows(out, frames[a:b], gt_tabs[a:b], pred_tabs[a:b], nframes_list, video_id)
    return out


def _add_windows(out: dict[int, tuple[float, int, int, int]], frames: Sequence[FrameVEQInput],
                 gt_tabs: list[dict[int, list]], pred_tabs: list[dict[int, int]], nframes_list: tuple[int, ...],
                 video_id: str) -> None:
    """Add the statistics of the windows starting at frames[0 : _BLOCK] (and inside `frames`) to `out`."""
    T = len(frames)
    # Universes: pairs, GT JSON ids, predicted ids.
    keys_t = [(fr.gt_ids << _SHIFT) | fr.pred_ids for fr in frames]
    pair_keys = np.unique(np.concatenate(keys_t))
    P = pair_keys.size
    gt_u = np.array(sorted({g for tab in gt_tabs for g in tab}), dtype=np.int64)
    pr_u = np.array(sorted({p for tab in pred_tabs for p in tab}), dtype=np.int64)
    G, Q = gt_u.size, pr_u.size

    cnt = np.zeros((T, P), np.int64)
    g_area = np.zeros((T, G), np.float64)
    g_pres = np.zeros((T, G), np.int64)
    g_crowd = np.zeros((T + 1, G), bool)  # extra all-False row for "not present"
    p_area = np.zeros((T, Q), np.int64)
    p_pres = np.zeros((T, Q), np.int64)
    for t in range(T):
        cnt[t, np.searchsorted(pair_keys, keys_t[t])] = frames[t].counts
        if gt_tabs[t]:
            ids = np.fromiter(gt_tabs[t].keys(), np.int64, len(gt_tabs[t]))
            cols = np.searchsorted(gt_u, ids)
            g_area[t, cols] = [v[0] for v in gt_tabs[t].values()]
            g_pres[t, cols] = 1
            g_crowd[t, cols] = [v[1] for v in gt_tabs[t].values()]
        if pred_tabs[t]:
            ids = np.fromiter(pred_tabs[t].keys(), np.int64, len(pred_tabs[t]))
            cols = np.searchsorted(pr_u, ids)
            p_area[t, cols] = list(pred_tabs[t].values())
            p_pres[t, cols] = 1

    pair_g = pair_keys >> _SHIFT
    pair_p = pair_keys & ((1 << _SHIFT) - 1)
    pg = _lookup(gt_u, pair_g)
    pq = _lookup(pr_u, pair_p)
    void_col = _lookup(pair_keys, (np.int64(_VOID) << _SHIFT) | pr_u)  # pair (VOID, p) per pred
    match_cols = np.flatnonzero((pg >= 0) & (pq >= 0))
    mg, mq = pg[match_cols], pq[match_cols]
    crowd_cols = np.flatnonzero(pg >= 0)  # pairs whose gt may be a crowd segment

    # first frame >= i where each GT id is listed (T if none): crowd flag of the window
    nxt = np.full((T + 1, G), T, np.intp)
    for t in range(T - 1, -1, -1):
        nxt[t] = np.where(g_pres[t] > 0, t, nxt[t + 1])

    cnt_s, g_pres_s = _prefix(cnt), _prefix(g_pres)
    p_area_s, p_pres_s = _prefix(p_area), _prefix(p_pres)
    g_cols = np.arange(G)

    for n in nframes_list:
        nw = min(T - n + 1, _BLOCK)
        if nw <= 0:
            continue
        w_cnt = cnt_s[n : n + nw] - cnt_s[:nw]  # [nw, P]
        # the GT areas frame after frame, as the official script sums them: a difference of float
        # prefix sums is off in the last bits for a fractional area (VPQ 47.360870625904354 for the
        # official 47.36087062590437)
        w_garea = g_area[:nw].copy()  # [nw, G]
        for i in range(1, n):
            w_garea += g_area[i : i + nw]
        w_gpres = (g_pres_s[n : n + nw] - g_pres_s[:nw]) > 0
        w_gcrowd = g_crowd[nxt[:nw], g_cols[None, :]] & w_gpres
        w_parea = p_area_s[n : n + nw] - p_area_s[:nw]  # [nw, Q]
        w_ppres = (p_pres_s[n : n + nw] - p_pres_s[:nw]) > 0
        if Q and P:
            w_void = np.where(void_col >= 0, w_cnt[:, np.maximum(void_col, 0)], 0)
        else:
            w_void = np.zeros((nw, Q), np.int64)

        # --- TP: every considered pair with IoU > 0.5
        inter = w_cnt[:, match_cols]
        valid = (inter > 0) & w_gpres[:, mg] & w_ppres[:, mq] & ~w_gcrowd[:, mg]
        union = (w_parea[:, mq] + w_garea[:, mg]) - inter - w_void[:, mq]
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / union
        bad = valid & ~(iou <= 1.0)
        if bad.any():
            w, c = (int(v[0]) for v in np.nonzero(bad))
            col = match_cols[c]
            gid = int(pair_g[col])
            unlisted = [frames[t].name for t in range(w, w + n)
                        if gid not in gt_tabs[t] and np.any((frames[t].gt_ids == gid) & (frames[t].counts > 0))]
            if unlisted:  # the usual cause: pixels of the id in a frame whose segments_info omits it
                raise MetricsInputError(
                    f"video {video_id!r} frame {unlisted[0]}: the GT PNG holds segment id {gid}, which that "
                    f"frame's GT JSON segments_info does not list, while other frames of the {n}-frame window "
                    f"starting at frame {frames[w].name} list it (its pixels in this frame have no GT area: "
                    f"invalid IoU {iou[w, c]})"
                )
            raise MetricsInputError(
                f"video {video_id!r}, window of {n} frame(s) starting at frame {frames[w].name}: "
                f"invalid IoU {iou[w, c]} for GT segment {int(pair_g[col])} and predicted segment "
                f"{int(pair_p[col])} (intersection {int(inter[w, c])}, GT JSON area {w_garea[w, mg[c]]}, "
                f"predicted area {int(w_parea[w, mq[c]])}, predicted on VOID {int(w_void[w, mq[c]])}); "
                f"the GT JSON 'area' is smaller than the segment's pixel count"
            )
        tp_mask = valid & (iou > 0.5)
        tp_w, tp_c = np.nonzero(tp_mask)  # row-major: windows in order, pairs by (gt, pred)
        iou_sum, tp0, fp0, fn0 = out[n]  # running sums: the official order of additions
        for v in iou[tp_w, tp_c].tolist():
            iou_sum += v
        g_matched = np.zeros((nw, G), bool)
        p_matched = np.zeros((nw, Q), bool)
        g_matched[tp_w, mg[tp_c]] = True
        p_matched[tp_w, mq[tp_c]] = True

        # --- FN: unmatched, non-crowd GT segments of the window
        fn = int(np.count_nonzero(w_gpres & ~g_matched & ~w_gcrowd))

        # --- FP: unmatched predictions with at most half of their pixels on VOID + crowd
        on_ignored = w_void.astype(np.int64)
        if crowd_cols.size and Q:
            cq = pq[crowd_cols]
            keep = cq >= 0
            cc = crowd_cols[keep]
            contrib = w_cnt[:, cc] * w_gcrowd[:, pg[cc]]
            on_ignored = on_ignored.copy()
            np.add.at(on_ignored, (slice(None), cq[keep]), contrib)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = on_ignored / w_parea
        fp = int(np.count_nonzero(w_ppres & ~p_matched & ~(ratio > 0.5)))

        out[n] = (iou_sum, tp0 + int(tp_w.size), fp0 + fp, fn0 + fn)


def pq_from_stats(iou: float, tp: int, fp: int, fn: int) -> dict[str, float]:
    """The official ``PQStatAgnostic.pq_average`` (fractions, not percentages)."""
    if tp + fp + fn == 0:
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    pq = iou / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou / tp if tp != 0 else 0
    rq = tp / (tp + 0.5 * fp + 0.5 * fn)
    return {"pq": float(pq), "sq": float(sq), "rq": float(rq)}


def veq_aggregate(
    per_video: Sequence[Mapping[int, tuple[float, int, int, int]]],
    nframes_list: Iterable[int] = NFRAMES,
) -> dict[str, Any]:
    """Combine per-video statistics into the official per-window and final numbers (percentages)."""
    nframes_list = tuple(nframes_list)
    windows: dict[int, dict[str, Any]] = {}
    vpq, vsq, vrq = [], [], []
    for n in nframes_list:
        iou, tp, fp, fn = 0.0, 0, 0, 0
        for stats in per_video:  # official order: sum of per-video sums
            v_iou, v_tp, v_fp, v_fn = stats[n]
            iou += v_iou
            tp += v_tp
            fp += v_fp
            fn += v_fn
        r = pq_from_stats(iou, tp, fp, fn)
        windows[window_key(n)] = {
            "nframes": n,
            "vpq": 100 * r["pq"],
            "sq": 100 * r["sq"],
            "rq": 100 * r["rq"],
            "iou_sum": iou,
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }
        vpq.append(100 * r["pq"])
        vsq.append(100 * r["sq"])
        vrq.append(100 * r["rq"])

    def mean(xs: list[float]) -> float:
        acc = 0
        for x in xs:  # sequential, like Python <= 3.11 sum()
            acc += x
        return acc / len(xs) if xs else 0.0

    return {"windows": windows, "final": {"vpq": mean(vpq), "sq": mean(vsq), "rq": mean(vrq)}}
