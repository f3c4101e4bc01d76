"""The merge's per-pixel winner on ties: the lowest query index among the maxima, as the official
``argmax(0)`` on the CPU, whatever order the backend reduces in.

Ties are common (sigmoid(+-40) is exactly 1 or 0 in float32, so equal scores give equal
products; duplicate queries). Which index ``max(dim)``/``argmax`` returns on ties is a property of
each backend's kernel, so the rule is built from order-independent reductions
(``merge_rules.first_max_index``). A backend that breaks ties differently is emulated here by a
dispatch mode whose ``max``/``argmax`` reduce the flipped dimension (the last maximal index).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from entitysam.inference.merge_rules import assign_pixels, first_max_index
from entitysam.inference.offline_merge import merge_video_panoptic
from entitysam.inference.online_merge import OnlineMerger

aten = torch.ops.aten


class LastIndexOnTies(TorchDispatchMode):
    """max(dim), min(dim), argmax and argmin reduce in the opposite order: on ties they return the
    last index (a legal answer for a kernel that does not promise the first). Notes what it
    changed."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (aten.max.dim, aten.min.dim, aten.argmax.default, aten.argmin.default):
            self.calls += 1
            x, dim = args[0], (args[1] if len(args) > 1 else kwargs.get("dim"))
            keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            if dim is None:  # argmax over everything: over the flattened tensor
                x, dim = x.reshape(-1), 0
            out = func(x.flip(dim), dim, keepdim)
            size = x.shape[dim]
            if isinstance(out, tuple):
                return type(out)((out[0], size - 1 - out[1]))
            return size - 1 - out
        return func(*args, **kwargs)


def reference_first_max(values: np.ndarray) -> np.ndarray:
    """The lowest index among the maxima over axis 0, one column at a time (NaN is the maximum)."""
    flat = values.reshape(values.shape[0], -1)
    out = np.empty(flat.shape[1], np.int64)
    for j in range(flat.shape[1]):
        col = flat[:, j]
        nan = np.flatnonzero(np.isnan(col))
        out[j] = nan[0] if nan.size else np.flatnonzero(col == col.max())[0]
    return out.reshape(values.shape[1:])


def saturated_disks(k: int = 4, frames: int = 3, size: int = 16) -> torch.Tensor:
    """[k, frames, size, size] logits of +-40 disks (probabilities exactly 1 or 0 in float32);
    queries 1 and 2 are the same disk."""
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    disk = lambda cy, cx, r: torch.where((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r, 40.0, -40.0)  # noqa: E731
    masks = [disk(4, 4, 3), disk(10, 10, 4), disk(10, 10, 4), disk(3, 12, 2)][:k]
    return torch.stack(masks)[:, None].repeat(1, frames, 1, 1)


# ------------------------------------------------------------------ the rule


def test_the_emulated_backend_breaks_ties_the_other_way():
    """The emulation is a real change of tie-breaking (else the tests below prove nothing)."""
    values = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.5, 2.0]])
    with LastIndexOnTies():
        assert values.max(0).indices.tolist() == values.argmax(0).tolist() == [1, 2]
    assert values.argmax(0).tolist() == [0, 0]


def test_deliberate_ties_go_to_the_lowest_query_on_any_backend():
    # equal scores x saturated sigmoids: queries 1 and 2 tie on their disk, 0 and 3 elsewhere
    lowres = saturated_disks()
    scores = torch.tensor([0.6, 0.7, 0.7, 0.6])
    lowres[3] = lowres[0]  # 0 and 3 now tie too (equal scores, the same disk)
    expected, _, _ = assign_pixels(lowres, scores, (32, 32), 0.5)
    with LastIndexOnTies() as backend:
        ids, win_fg, fg_count = assign_pixels(lowres, scores, (32, 32), 0.5)
    assert torch.equal(ids, expected)
    assert set(ids.unique().tolist()) == {-1, 0, 1}, "a tie went to query 2 or 3"
    assert not backend.calls, "the winner still comes from a tie-breaking reduction"


@pytest.mark.parametrize("queries", [1, 3, 255, 256, 300])
def test_first_max_index_is_the_reference_on_tied_values(queries):
    """Few distinct values (many ties), -0.0 beside 0.0, NaNs; ranks stored in uint8 up to 255
    queries, int16 beyond."""
    g = np.random.default_rng(queries)
    values = g.integers(0, 3, (queries, 5, 7)).astype(np.float32)
    values[g.random(values.shape) < 0.1] = -0.0
    values[g.random(values.shape) < 0.02] = np.nan
    got = first_max_index(torch.from_numpy(values))
    np.testing.assert_array_equal(got.numpy(), reference_first_max(values))
    assert torch.equal(got, torch.from_numpy(values).argmax(0))  # the official call on the CPU


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 12), n=st.integers(1, 30), levels=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_first_max_index_does_not_depend_on_the_reduction_order(k, n, levels, seed):
    """Computed on the queries in reverse order as the last maximum, then mapped back, and with
    the reductions themselves reversed: the same index."""
    values = torch.from_numpy(np.random.default_rng(seed).integers(0, levels, (k, n)).astype(np.float32))
    lowest = first_max_index(values)
    last_of_flipped = k - 1 - torch.from_numpy(reference_first_max(values.numpy()))
    assert torch.equal(k - 1 - last_of_flipped, lowest)
    with LastIndexOnTies():
        assert torch.equal(first_max_index(values), lowest)
        assert torch.equal(first_max_index(values.flip(0).contiguous().flip(0)), lowest)


def test_first_max_index_runs_on_meta_without_a_sync():
    """`meta` stands in for a GPU: any host synchronisation fails there."""
    out = first_max_index(torch.empty(50, 2, 64, 64, device="meta"))
    assert out.shape == (2, 64, 64) and out.dtype == torch.int64 and out.device.type == "meta"


# ------------------------------------------------------------------ the merges


@pytest.mark.parametrize("chunk", [None, 1])
def test_offline_merge_keeps_the_first_of_duplicate_queries_on_any_backend(chunk):
    lowres, scores = saturated_disks(), torch.tensor([0.6, 0.7, 0.7, 0.5])
    expected = merge_video_panoptic(scores, lowres, (32, 32), frame_chunk=chunk)
    assert expected.query_index == [0, 1, 3]  # the official rule (tests/test_postprocess.py)
    with LastIndexOnTies():
        got = merge_video_panoptic(scores, lowres, (32, 32), frame_chunk=chunk)
    assert got.query_index == [0, 1, 3]
    np.testing.assert_array_equal(got.id_maps, expected.id_maps)


def test_online_merge_keeps_the_first_of_duplicate_queries_on_any_backend():
    lowres, scores = saturated_disks(), torch.tensor([0.6, 0.7, 0.7, 0.5])
    offline = merge_video_panoptic(scores, lowres, (32, 32))
    with LastIndexOnTies():
        merger = OnlineMerger(4, (32, 32), delay=0, warmup_steps=0)
        frames = []
        for t in range(lowres.shape[1]):
            merger.add_scores(scores)
            frames += merger.add_frame(lowres[:, t])
        frames += merger.finish()
    assert sorted(q for q, _ in frames[-1].segments.values()) == [0, 1, 3]
    np.testing.assert_array_equal(np.stack([f.id_map for f in frames]), offline.id_maps)
