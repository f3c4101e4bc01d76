"""The tracker's state: the memory bank ring and the stored memories' dtype."""

from __future__ import annotations

from collections import deque

import pytest
import torch

from entitysam.inference.tracker import EntityTracker, MemoryBank


def _video(num_frames: int, size: int, seed: int = 0) -> list[tuple[int, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 3, size, size, generator=g)
    return [(t, torch.roll(base, shifts=(2 * t, 3 * t), dims=(2, 3)) + 0.1 * torch.randn(base.shape, generator=g))
            for t in range(num_frames)]


class ListBank:
    """The bank as it was before the ring: a new tensor per memory in a bounded deque."""

    def __init__(self, capacity: int, dtype: torch.dtype = torch.bfloat16):
        self.capacity, self.dtype = capacity, dtype
        self._entries: deque[tuple[int, torch.Tensor]] = deque(maxlen=capacity)

    def add(self, step: int, memory: torch.Tensor) -> None:
        self._entries.append((step, memory.to(self.dtype)))

    def recall(self, step: int) -> list[tuple[torch.Tensor, int]]:
        return [(mem, step - s) for s, mem in self._entries if 1 <= step - s <= self.capacity]

    def __len__(self) -> int:
        return len(self._entries)


@pytest.mark.parametrize("batched", [False, True], ids=["per-query", "batched"])
def test_ring_bank_gives_the_same_steps_as_a_list_bank(tiny_model, one_torch_thread, batched):
    """More than capacity + 2 steps: the ring wraps around; every step's outputs are bit-identical
    to those of a bank that stores a new tensor per memory, and the ring's storage never moves."""
    capacity = tiny_model.cfg.num_maskmem
    frames = _video(capacity + 3 - tiny_model.cfg.num_warmup_copies + 1, tiny_model.cfg.image_size)
    ring = EntityTracker(tiny_model, batched=batched)
    listed = EntityTracker(tiny_model, batched=batched)
    listed.bank = ListBank(capacity)
    pointers = []
    for a, b in zip(ring.track(frames), listed.track(frames)):
        for name in ("mask_logits", "scores", "points"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (a.step, name)
        pointers.append(ring.bank.slots.data_ptr())
        recalled = ring.bank.recall(ring.step_index)
        expected = listed.bank.recall(listed.step_index)
        assert [back for _, back in recalled] == [back for _, back in expected]
        assert all(torch.equal(m, e) for (m, _), (e, _) in zip(recalled, expected))
    assert len(pointers) >= capacity + 3 and len(set(pointers)) == 1
    assert ring.bank.slots.shape == (capacity, *expected[0][0].shape)
    assert len(ring.bank) == capacity and ring.bank.slots.dtype == torch.bfloat16


def test_ring_bank_recall_oldest_first_and_bounded():
    bank = MemoryBank(3, dtype=torch.float32)
    for step in range(5):
        bank.add(step, torch.full((2, 1, 1, 1), float(step)))
    assert [(float(m[0, 0, 0, 0]), back) for m, back in bank.recall(5)] == [(2.0, 3), (3.0, 2), (4.0, 1)]
    assert [back for _, back in bank.recall(7)] == [3]  # steps 5 and 6 never came
    with pytest.raises(ValueError, match="does not fit"):
        bank.add(5, torch.zeros(3, 1, 1, 1))


@pytest.mark.parametrize("memory_dtype, stored", [(None, torch.bfloat16), (torch.float16, torch.float16),
                                                  (torch.float32, torch.float32)])
def test_tracker_stores_memories_in_the_dtype_it_is_given(tiny_model, one_torch_thread, memory_dtype, stored):
    tracker = EntityTracker(tiny_model, memory_dtype=memory_dtype)
    list(tracker.track(_video(1, tiny_model.cfg.image_size)))
    assert tracker.bank.dtype == stored
    assert {m.dtype for m, _ in tracker.bank.recall(tracker.step_index)} == {stored}


@pytest.mark.parametrize("exact", [True, False])
def test_exact_mode_encodes_the_memory_of_all_queries_in_one_batch(tiny_model, one_torch_thread, exact):
    """The official model runs the memory encoder over all queries at once, and a convolution's
    rounding can depend on the batch it is given: on an AVX-512 AMD EPYC (Zen 4) the mask
    downsampler's last 1x1 convolution of one query differed from the same rows of 50
    (scripts/reference/intermediates.py). Exact mode keeps the official batch; the CPU default
    encodes one query at a time (its intermediates stay in cache)."""
    q = tiny_model.cfg.num_queries
    seen: list[int] = []
    hook = tiny_model.memory_encoder.mask_downsampler.register_forward_hook(
        lambda m, a, o: seen.append(a[0].shape[0]))
    try:
        tracker = EntityTracker(tiny_model, exact=exact)
        for t, frame in _video(2, tiny_model.cfg.image_size):
            tracker.step(t, frame, is_warmup=False)
    finally:
        hook.remove()
    assert seen == ([q, q] if exact else [1] * (2 * q))
