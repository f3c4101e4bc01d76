"""The online video merge: per-frame id maps with bounded latency.

The official video-level merge (:func:`entitysam.inference.offline_merge.plan_video_panoptic`) needs
the whole video: an entity's score is its mean eIoU over every step, its mask quality is counted
over every 5th frame, and a query survives only if it wins at least 70% of its own foreground over
the whole video. Online, each of these is replaced by its value over what has been seen so far:

* score: the **cumulative** mean of eIoU over the steps seen (warm-up steps included, as
  offline). A cumulative mean over all steps is exactly the offline quantity once every step has
  been seen; an exponential mean would weight recent steps more and could never reproduce it.
* quality: ``#(logit > 1) / #(logit > -1)`` over the every-5th output frames seen so far
  (frames 0, 5, 10, ... as offline), from running counts.
* overlap ratio ``A / O`` (argmax area over ``prob >= 0.5`` area): counts of the frames already
  emitted (computed with the scores of the moment each was emitted, they cannot change any more)
  plus the counts of the frames in the look-ahead window, computed with the current scores. A
  query only contributes counts to frames where it was among the kept queries (score threshold),
  so the ratio is over the frames where it competed.

Frame ``t`` is emitted once frame ``t + delay`` has been processed (or at the end of the stream),
with the decisions taken at that moment. Ids belong to queries: a query gets the next id (1, 2,
...) the first time it survives, in query order among the queries surviving for the first time,
and keeps it for the whole stream; an id is never given to another query. A query that stops
surviving leaves no pixels until it survives again, with its old id.

With ``delay >= n - 1`` no frame is emitted before the last one has been processed (with
``delay = n - 1`` frame 0 comes out as frame n - 1 arrives, the others at the end of the stream,
with the same information): every decision is taken with the whole video seen, and the id maps,
ids and scores are exactly those of the offline merge (the eIoU of the steps are then averaged
with the same reduction as offline, see :class:`RunningScore`).

State per stream: the running sums above ([Q] each), the id table ([Q]) and the look-ahead window
of at most ``delay + 1`` frames of low-res logits ([Q, h, w] float32 each). Nothing else grows with
the stream.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..argtypes import check_int
from ..config import EntitySAMConfig
from .merge_rules import (MergeConfig, area_counts, assign_pixels, final_scores, is_quality_frame, kept_queries,
                          mean_step_scores, paint, quality_counts, rounded_to, survives)

__all__ = ["RunningScore", "Emitted", "OnlineMerger", "check_delay"]


def check_delay(delay: Any) -> int:
    """The look-ahead of the online merge: an int >= 0 (frames), else InvalidArgumentError."""
    return check_int(delay, "delay (frames of look-ahead)", 0)


# ----------------------------------------------------------------------------- scores


class RunningScore:
    """Mean of the per-step eIoU ([Q] float32 each) seen so far.

    The first ``exact_steps`` step vectors are kept and averaged exactly as the offline path does
    (:func:`~entitysam.inference.merge_rules.mean_step_scores`: float32, rounded to the dtype the
    steps computed the eIoU in, bfloat16 under autocast); the merger sets ``exact_steps = delay + 1 +
    warm-up steps``, so a stream of at most ``delay + 1`` frames, all of whose frames are emitted
    with every step seen, gets the offline scores bit for bit. (A running sum would differ from
    torch's blocked float32 reduction in the last bits, which can flip an argmax tie.) When a
    further step arrives they are folded into a float64 running sum, whose rounding error stays
    far below float32 precision for any realistic stream length, where a float32 sum would drift.
    Memory: at most ``exact_steps`` vectors of Q floats, then one.
    """

    def __init__(self, exact_steps: int = 0) -> None:
        self.exact_steps = exact_steps
        self._steps: list[torch.Tensor] | None = []
        self._sum: torch.Tensor | None = None
        self.count = 0
        self.dtype = torch.float32  # the dtype the steps computed the eIoU in

    def add(self, scores: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
        """One step's eIoU [Q], computed in `dtype` (given in any float dtype)."""
        self.dtype = dtype
        s = scores.detach().to("cpu", torch.float32).reshape(-1)
        if self._steps is not None and len(self._steps) >= self.exact_steps:
            self._sum = (torch.stack(self._steps).double().sum(0) if self._steps
                         else torch.zeros_like(s, dtype=torch.float64))
            self._steps = None
        if self._steps is not None:
            self._steps.append(s)
        else:
            self._sum += s.double()
        self.count += 1

    def mean(self) -> torch.Tensor:
        """[Q] float32, rounded to the steps' dtype."""
        if self.count == 0:
            raise ValueError("no step scores yet")
        if self._steps is not None:
            return mean_step_scores(self._steps, self.dtype)
        return rounded_to((self._sum / self.count).to(torch.float32), self.dtype)


# ----------------------------------------------------------------------------- merger


@dataclass
class Emitted:
    """One output frame of :class:`OnlineMerger`.

    t: position of the frame in the stream (0, 1, ...). id_map: [H, W] int32, 0 = no entity.
    segments: id -> (query index, score) of every surviving entity at emission time (present in
    the frame or not); score = running mean eIoU + 0.5 running quality. winners: [H, W] int16,
    only with ``keep_winners``: the query whose segment each pixel would belong to if every kept
    query survived the overlap test (argmax winner whose own prob >= 0.5), -1 elsewhere; the id
    map is these pixels restricted to surviving queries. frames_seen: output frames processed when
    this one was emitted (t + 1 + look-ahead). payload: what was passed with the frame.
    """

    t: int
    id_map: np.ndarray
    segments: dict[int, tuple[int, float]]
    frames_seen: int
    payload: Any = None
    winners: np.ndarray | None = None


@dataclass
class _Pending:
    t: int
    logits: torch.Tensor  # [Q, h, w] float32
    payload: Any


class OnlineMerger:
    """The official video merge, computed online with a look-ahead of ``delay`` frames.

    Feed every model step's eIoU with :meth:`add_scores` (warm-up steps included) and every
    output frame's low-res logits with :meth:`add_frame`, in stream order; each call returns the
    frames that became ready (frame t once frame t + delay has been added). :meth:`finish`
    returns the rest. See the module docstring for the rules.

    Args:
        num_queries: Q.
        out_size: (H, W) of the id maps.
        delay: look-ahead in frames (>= 0).
        warmup_steps: model steps before the first output frame (the tracker's warm-up copies of
            frame 0: the model config's num_warmup_copies, which is the default); only sizes how
            many step scores are averaged exactly (:class:`RunningScore`).
        keep_winners: also return the per-pixel winning query (for diagnostics).
        config: the merge thresholds (default: the official ones, as offline).
    """

    def __init__(self, num_queries: int, out_size: Sequence[int], delay: int = 0, *,
                 config: MergeConfig = MergeConfig(), warmup_steps: int = EntitySAMConfig.num_warmup_copies, keep_winners: bool = False):
        delay = check_delay(delay)
        q = int(num_queries)
        self.num_queries = q
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.delay = delay
        self.config = config
        self.keep_winners = keep_winners
        self.scores = RunningScore(exact_steps=delay + 1 + warmup_steps)
        # Quality counts over the every-5th frames seen, for every query ([Q] int64).
        self._above = torch.zeros(q, dtype=torch.int64)
        self._nonneg = torch.zeros(q, dtype=torch.int64)
        # A, O, S of the emitted frames, per query ([Q] int64).
        self._win_area = torch.zeros(q, dtype=torch.int64)
        self._fg_area = torch.zeros(q, dtype=torch.int64)
        self._seg_area = torch.zeros(q, dtype=torch.int64)
        self._window: deque[_Pending] = deque()
        self.ids = np.zeros(q, dtype=np.int32)  # id of each query, 0 = never survived
        self.next_id = 1
        self.frames_seen = 0
        self.frames_emitted = 0
        self.finished = False

    # -- input
    def add_scores(self, scores: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
        """eIoU [Q] of one model step (warm-up steps included), computed in `dtype`."""
        if scores.numel() != self.num_queries:
            raise ValueError(f"expected {self.num_queries} scores, got {scores.numel()}")
        self.scores.add(scores, dtype)

    def add_frame(self, logits: torch.Tensor, payload: Any = None) -> list[Emitted]:
        """Low-res logits [Q, h, w] (or [Q, 1, h, w]) of the next output frame."""
        if self.finished:
            raise RuntimeError("the stream is finished")
        if self.scores.count == 0:
            raise ValueError("add the step's scores (add_scores) before its frame")
        lo = logits.detach().to("cpu", torch.float32)
        if lo.dim() == 4 and lo.shape[1] == 1:
            lo = lo[:, 0]
        if lo.dim() != 3 or lo.shape[0] != self.num_queries:
            raise ValueError(f"expected logits [Q={self.num_queries}, h, w], got {tuple(logits.shape)}")
        t = self.frames_seen
        if is_quality_frame(t):
            above, nonneg = quality_counts(lo)
            self._above += above
            self._nonneg += nonneg
        self._window.append(_Pending(t, lo.contiguous(), payload))
        self.frames_seen = t + 1
        if len(self._window) > self.delay:
            return self._emit(len(self._window) - self.delay)
        return []

    def push_step(self, step: Any, payload: Any = None) -> list[Emitted]:
        """A tracker :class:`~entitysam.inference.tracker.StepResult`: its scores, and its logits
        unless it is a warm-up step."""
        self.add_scores(step.scores, getattr(step, "score_dtype", torch.float32))
        if step.is_warmup:
            return []
        return self.add_frame(step.mask_logits, payload)

    def finish(self) -> list[Emitted]:
        """End of stream: emit every frame still in the look-ahead window, with all the
        information there is. Further frames are refused."""
        if self.finished:
            return []
        out = self._emit(len(self._window)) if self._window else []
        self.finished = True
        return out

    @property
    def pending(self) -> int:
        """Frames processed but not emitted yet (at most delay + 1)."""
        return len(self._window)

    # -- the merge
    def current_scores(self) -> torch.Tensor:
        """[Q] float32 running scores (mean eIoU so far), without the quality term."""
        return self.scores.mean()

    def _emit(self, count: int) -> list[Emitted]:
        """Emit the `count` oldest window frames with one set of decisions. All the work is done
        before the state is updated (a few assignments at the end), so an exception inside
        (e.g. KeyboardInterrupt) leaves the merger as it was, its frames still in the window."""
        h, w = self.out_size
        scores = self.scores.mean()
        kept = kept_queries(scores, self.config)
        k = kept.numel()
        frames = [self._window[i] for i in range(count)]
        seg_of_kept = np.zeros(k, dtype=np.int32)
        new_ids: list[tuple[int, int]] = []
        kept_scores = scores[:0]
        winners: list[torch.Tensor] = []  # [H, W] kept slot of each segment pixel, -1 elsewhere
        committed = (self._win_area.clone(), self._fg_area.clone(), self._seg_area.clone())
        if k:
            # The rules of plan_video_panoptic, so full look-ahead gives the same values.
            kept_scores = final_scores(scores[kept], self._above[kept], self._nonneg[kept])
            totals = [c[kept] for c in committed]  # A, O, S: emitted frames + window frames
            for i, pend in enumerate(self._window):
                ids, win_fg, fg_count = assign_pixels(pend.logits[kept].unsqueeze(1), kept_scores, self.out_size,
                                                      self.config.mask_binary_threshold)
                ids, win_fg = ids[0], win_fg[0]  # [H, W]: one frame
                counts = area_counts(ids, win_fg, fg_count, k)
                for total, c in zip(totals, counts):
                    total += c
                if i < count:  # its counts become final once it is emitted
                    winners.append(torch.where(win_fg, ids, -1))
                    for kept_counts, c in zip(committed, counts):
                        kept_counts[kept] += c
            next_id = self.next_id
            for j in range(k):
                if survives(int(totals[0][j]), int(totals[1][j]), int(totals[2][j]), self.config):
                    qi = int(kept[j])
                    if self.ids[qi] == 0:
                        new_ids.append((qi, next_id))
                        next_id += 1
                    seg_of_kept[j] = self.ids[qi] or new_ids[-1][1]
        segments = {int(seg_of_kept[j]): (int(kept[j]), float(kept_scores[j]))
                    for j in range(k) if seg_of_kept[j]}
        out = []
        lut = np.concatenate([[-1], kept.numpy()]).astype(np.int16)
        for i, pend in enumerate(frames):
            if segments:
                id_map = paint(winners[i], seg_of_kept)
            else:
                id_map = np.zeros((h, w), np.int32)
            win_q = None
            if self.keep_winners:
                win_q = lut[winners[i].numpy() + 1] if k else np.full((h, w), -1, np.int16)
            out.append(Emitted(pend.t, id_map, segments, self.frames_seen, pend.payload, win_q))

        # -- commit
        self._win_area, self._fg_area, self._seg_area = committed
        for qi, sid in new_ids:
            self.ids[qi] = sid
        self.next_id += len(new_ids)
        for _ in frames:
            self._window.popleft()
        self.frames_emitted += count
        return out
