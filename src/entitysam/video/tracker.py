"""Streaming per-video inference: the schedule, the bounded memory bank and per-step outputs.

The official evaluation processes frame 0 four times before the rest of the video
(`[0, 0, 0] + range(n)`): step 0 discovers the entities, steps 1-3 refine memory and points on
the same image, and only step 3 is an output frame. Memory of step p is read by steps p+1 ...
p+7 only, so the bank keeps 7 entries and drops older ones as it goes: memory use does not grow
with the video length.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from ..modeling.entitysam import EntitySAM, FrameFeatures
from .postprocess import fill_holes


class MemoryBank:
    """The memories of the last `capacity` steps, as stored by the official code (bfloat16).

    `recall(step)` returns (memory [Q, mem_dim, g, g], steps_back) pairs, oldest first, for the
    steps `step - capacity ... step - 1` that exist.
    """

    def __init__(self, capacity: int, dtype: torch.dtype = torch.bfloat16):
        self.capacity = capacity
        self.dtype = dtype
        self._entries: deque[tuple[int, torch.Tensor]] = deque(maxlen=capacity)

    def add(self, step: int, memory: torch.Tensor) -> None:
        self._entries.append((step, memory.to(self.dtype)))

    def recall(self, step: int) -> list[tuple[torch.Tensor, int]]:
        return [(mem, step - s) for s, mem in self._entries if 1 <= step - s <= self.capacity]

    def __len__(self) -> int:
        return len(self._entries)

    def nbytes(self) -> int:
        return sum(m.numel() * m.element_size() for _, m in self._entries)


@dataclass
class StepResult:
    """Output of one step. mask_logits [Q, 1, h, w] low-res logits after hole filling,
    scores [Q] eIoU, points [Q, 2] prompt coordinates (x, y as used; input-image pixels)."""

    step: int
    frame_index: int
    is_warmup: bool
    mask_logits: torch.Tensor
    scores: torch.Tensor
    points: torch.Tensor


def schedule(num_frames: int, warmup_copies: int = 3) -> list[int]:
    """The official processing order: frame 0 `warmup_copies` extra times, then every frame."""
    return [0] * warmup_copies + list(range(num_frames))


class EntityTracker:
    """Per-video state: memory bank, current points, step counter, last frame's features.

    Feed frames in order with `track(frame_index, image)`; the tracker repeats frame 0 for the
    warm-up itself when `warmup=True` (the default, as the official evaluation).
    """

    def __init__(self, model: EntitySAM, fill_hole_area: int | None = None,
                 attention_dtype: torch.dtype | None = None, exact: bool = False):
        self.model = model
        self.attention_dtype = attention_dtype  # see EntitySAM.condition_on_memory
        self.exact = exact  # see EntitySAM.step
        self.cfg = model.cfg
        self.fill_hole_area = self.cfg.fill_hole_area if fill_hole_area is None else fill_hole_area
        self.bank = MemoryBank(self.cfg.num_maskmem)
        self.points: torch.Tensor | None = None
        self.step_index = 0
        self._features: tuple[int, FrameFeatures] | None = None

    @torch.inference_mode()
    def _features_for(self, frame_index: int, image: torch.Tensor) -> FrameFeatures:
        # The warm-up repeats frame 0: its features are computed once.
        if self._features is None or self._features[0] != frame_index:
            device = next(self.model.parameters()).device
            self._features = (frame_index, self.model.encode_frame(image.to(device)))
        return self._features[1]

    @torch.inference_mode()
    def step(self, frame_index: int, image: torch.Tensor, is_warmup: bool = False) -> StepResult:
        """Run one step on `image` [1, 3, S, S] (preprocessed) of frame `frame_index`."""
        frame = self._features_for(frame_index, image)
        p = self.step_index
        out = self.model.step(frame, self.bank.recall(p), self.points, attention_dtype=self.attention_dtype,
                              exact=self.exact)
        self.points = out.points
        if out.memory is not None:
            self.bank.add(p, out.memory)
        logits = out.mask_logits
        if self.fill_hole_area > 0:
            logits = fill_holes(logits, self.fill_hole_area)
        self.step_index += 1
        return StepResult(p, frame_index, is_warmup, logits, out.entity_scores.float(), out.points.float())

    def track(self, frames: Iterable[tuple[int, torch.Tensor]], warmup: bool = True) -> Iterator[StepResult]:
        """Run the official schedule over (frame_index, image) pairs, yielding every step.

        Warm-up steps are yielded with `is_warmup=True` (their scores count in the video
        score, their masks are not output frames).
        """
        for frame_index, image in frames:
            if warmup and self.step_index == 0:
                for _ in range(self.cfg.num_warmup_copies):
                    yield self.step(frame_index, image, is_warmup=True)
            yield self.step(frame_index, image)
