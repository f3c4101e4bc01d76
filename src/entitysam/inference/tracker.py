"""Streaming per-video inference: the schedule, the bounded memory bank and per-step outputs.

The official evaluation processes frame 0 four times before the rest of the video
(`[0, 0, 0] + range(n)`): step 0 discovers the entities, steps 1-3 refine memory and points on
the same image, and only step 3 is an output frame. Memory of step p is read by steps p+1 ...
p+7 only, so the bank keeps 7 entries and drops older ones as it goes: memory use does not grow
with the video length.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from ..modeling.entitysam import MEMORY_DTYPE, EntitySAM, FrameFeatures, recall_memories
from .holes import fill_holes
from .compiled import check_compiled_exact
from .device_memory import default_query_chunk, weight_bytes


class MemoryBank:
    """The memories of the last `capacity` steps, as stored by the official code (bfloat16).

    A ring on the memories' device: the first `add` allocates one [capacity, Q, mem_dim, g, g]
    tensor (`slots`) and every memory is copied into slot `step % capacity`, so that a steady
    step allocates nothing here and its shapes stay the same (a GPU reuses the same addresses,
    as CUDA graphs need). `recall(step)` returns (memory [Q, mem_dim, g, g], steps_back) pairs,
    oldest first, for the steps `step - capacity ... step - 1` that exist; the memories are views
    of the ring, valid until the slot is written again (`capacity` steps later).
    """

    def __init__(self, capacity: int, dtype: torch.dtype = MEMORY_DTYPE):
        self.capacity = capacity
        self.dtype = dtype
        self.slots: torch.Tensor | None = None  # [capacity, Q, mem_dim, g, g], allocated at the first add
        self._slot_step: list[int | None] = [None] * capacity  # step stored in each slot

    @torch.inference_mode()
    def add(self, step: int, memory: torch.Tensor) -> None:
        """Store `memory` [Q, mem_dim, g, g] of step `step` (rounded to the bank's dtype)."""
        if self.slots is None:
            self.slots = torch.empty((self.capacity, *memory.shape), dtype=self.dtype, device=memory.device)
        elif memory.shape != self.slots.shape[1:]:
            raise ValueError(f"memory of shape {tuple(memory.shape)} does not fit the bank's "
                             f"{tuple(self.slots.shape[1:])}")
        slot = step % self.capacity
        self.slots[slot].copy_(memory)  # the same rounding as memory.to(dtype)
        self._slot_step[slot] = step

    def recall(self, step: int) -> list[tuple[torch.Tensor, int]]:
        """The memories step `step` reads (`recall_memories`, the rule training uses too)."""
        stored = sorted(((s, self.slots[slot]) for slot, s in enumerate(self._slot_step) if s is not None),
                        key=lambda entry: entry[0])
        return recall_memories(stored, step, self.capacity)

    def __len__(self) -> int:
        return sum(s is not None for s in self._slot_step)


class KeyRing:
    """The batched path's kept key bases (`MemoryKeys`), laid out like the memory bank's ring.

    Per memory-attention layer one [Q, capacity * N, C] tensor: tokens [s*N, (s+1)*N) hold the
    bases of the memory in bank slot s, made when that memory is first read. A step takes its
    memories in slot order (attention does not depend on their order), so their bases are one
    contiguous prefix and each layer's keys are a single add, with no concatenation.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.rings: list[torch.Tensor] | None = None
        self._slot_step: list[int | None] = [None] * capacity  # step whose bases each slot holds
        self._offsets: list[torch.Tensor] | None = None  # `memory_key_offsets`, made at first use

    def arrange(self, model: EntitySAM, step: int, memories: list[tuple[torch.Tensor, int]]):
        """(memories in slot order, `EntitySAM.step`'s key_parts for them); (memories, None)
        when their slots are not the prefix 0 .. k-1 (a bank not filled one step at a time)."""
        stored = {step - r: (memory, r) for memory, r in memories}  # step that stored it -> pair
        order = sorted(stored, key=lambda s: s % self.capacity)
        if [s % self.capacity for s in order] != list(range(len(order))):
            return memories, None
        for s in order:
            slot = s % self.capacity
            if self._slot_step[slot] != s:
                renewed = self._store(slot, model.memory_key_bases(stored[s][0]))
                self._slot_step[slot] = s
                if renewed:  # new rings (another dtype): the other slots are made again
                    return self.arrange(model, step, memories)
        if self._offsets is None:
            self._offsets = model.memory_key_offsets()
        tokens = self.rings[0].shape[1] // self.capacity * len(order)
        return [stored[s] for s in order], ([ring[:, :tokens] for ring in self.rings], self._offsets)

    def _store(self, slot: int, bases: list[torch.Tensor]) -> bool:
        """Write one memory's bases into `slot`; True when the rings had to be made anew."""
        first = bases[0]
        renewed = self.rings is None or self.rings[0].dtype != first.dtype or self.rings[0].shape[0] != first.shape[0]
        if renewed:
            batch, n, width = first.shape
            self.rings = [first.new_empty(batch, self.capacity * n, width) for _ in bases]
            self._slot_step = [None] * self.capacity
        n = first.shape[1]
        for ring, base in zip(self.rings, bases):
            ring[:, slot * n:(slot + 1) * n].copy_(base)
        return renewed


@dataclass
class StepResult:
    """Output of one step. mask_logits [Q, 1, h, w] low-res logits after hole filling,
    scores [Q] eIoU (float32), points [Q, 2] prompt coordinates (x, y as used; input-image pixels),
    score_dtype the dtype the eIoU was computed in (bfloat16 under autocast: the video score, their
    mean, is rounded to it, :func:`~entitysam.inference.merge_rules.mean_step_scores`)."""

    step: int
    frame_index: int
    is_warmup: bool
    mask_logits: torch.Tensor
    scores: torch.Tensor
    points: torch.Tensor
    score_dtype: torch.dtype = torch.float32


class EntityTracker:
    """Per-video state: memory bank, current points, step counter, last frame's features.

    Feed frames in order with `track(frames)`, an iterable of (frame_index, image) pairs (or
    one `step(frame_index, image)` at a time); `track` repeats frame 0 for the warm-up itself
    when `warmup=True` (the default, as the official evaluation).
    """

    def __init__(self, model: EntitySAM, fill_hole_area: int | None = None,
                 attention_dtype: torch.dtype | None = None, exact: bool = False,
                 batched: bool | None = None, query_chunk: int | None = None,
                 memory_dtype: torch.dtype | None = None, keep_keys: bool | None = None):
        """batched: all queries at once (see `EntitySAM.step`); None: on every device but the
        CPU. query_chunk: queries per batch (None: sized from the device's memory, see
        `device_memory.default_query_chunk`).
        memory_dtype: dtype of the stored memories (None: bfloat16, as the official code; float16
        autocast needs float16, see `precision.memory_dtype_for`). keep_keys: keep each stored
        memory's memory-attention keys (`MemoryKeys`: about 60 MiB per query at the published
        sizes) instead of projecting them again at every step; None: on the batched path with all
        queries at once (not with `exact`)."""
        check_compiled_exact(model, exact)
        self.model = model
        self.attention_dtype = attention_dtype  # see EntitySAM.condition_on_memory
        self.exact = exact  # see EntitySAM.step
        self.cfg = model.cfg
        self.device = next(model.parameters()).device
        self.batched = self.device.type != "cpu" if batched is None else batched
        self.query_chunk = query_chunk if query_chunk is not None or not self.batched \
            else default_query_chunk(model.cfg, self.device, held=weight_bytes(model))
        self.score_dtype = torch.float32  # dtype the step scores were computed in (see merge_rules.mean_step_scores)
        self.fill_hole_area = self.cfg.fill_hole_area if fill_hole_area is None else fill_hole_area
        self.bank = MemoryBank(self.cfg.num_maskmem, memory_dtype or MEMORY_DTYPE)
        can_keep = self.batched and not exact and self.query_chunk is None
        if keep_keys and not can_keep:
            raise ValueError("keep_keys needs the batched path with all queries at once, without exact")
        self.keep_keys = can_keep and keep_keys is not False
        self.key_ring = KeyRing(self.cfg.num_maskmem)
        self.points: torch.Tensor | None = None
        self.step_index = 0
        self._features: tuple[int, FrameFeatures] | None = None

    def _no_grad(self) -> contextlib.AbstractContextManager:
        """The grad mode of a step: inference mode on the CPU path; on the batched (device) path
        plain no-grad, outside inference mode. Autocast keeps the low-precision copy of each
        weight that requires grad until its region ends, but not in inference mode: there every
        linear and convolution casts its float32 weight again at every step (measured on an
        H200: 1% of a vit-s step, 3% of a vit-l one). The copies are the same values, so the
        results are the same bit for bit."""
        if not self.batched:
            return torch.inference_mode()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.no_grad())
        return stack

    def _features_for(self, frame_index: int, image: torch.Tensor) -> FrameFeatures:
        # The warm-up repeats frame 0: its features are computed once.
        if self._features is None or self._features[0] != frame_index:
            self._features = (frame_index, self.model.encode_frame(image.to(self.device, non_blocking=True)))
        return self._features[1]

    def step(self, frame_index: int, image: torch.Tensor, is_warmup: bool = False) -> StepResult:
        """Run one step on `image` [1, 3, S, S] (preprocessed) of frame `frame_index`."""
        with self._no_grad():
            return self._step(frame_index, image, is_warmup)

    def _step(self, frame_index: int, image: torch.Tensor, is_warmup: bool) -> StepResult:
        frame = self._features_for(frame_index, image)
        p = self.step_index
        memories, key_parts = self.bank.recall(p), None
        if self.keep_keys and memories:
            memories, key_parts = self.key_ring.arrange(self.model, p, memories)
        out = self.model.step(frame, memories, self.points, attention_dtype=self.attention_dtype,
                              exact=self.exact, batched=self.batched, query_chunk=self.query_chunk,
                              key_parts=key_parts)
        self.points = out.points
        scores = out.entity_scores
        self.score_dtype = scores.dtype
        if out.memory is not None:
            self.bank.add(p, out.memory)
        logits = out.mask_logits
        if self.fill_hole_area > 0:
            logits = fill_holes(logits, self.fill_hole_area)
        self.step_index += 1
        return StepResult(p, frame_index, is_warmup, logits, scores.float(), out.points.float(), scores.dtype)

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
