"""Tests for entitysam.inference.offline_merge against the official reference fixtures."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F

from entitysam.inference.holes import fill_holes
from entitysam.inference.merge_rules import MergeConfig
from entitysam.inference.offline_merge import (
    PanopticResult,
    iter_video_panoptic,
    merge_video_panoptic,
    plan_video_panoptic,
)

F01 = np.float32(0.1)


def _shared_dir() -> Path:
    env = os.environ.get("ENTITYSAM_SHARED_DIR")
    if env:
        return Path(env) / "reference" if (Path(env) / "reference").is_dir() else Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "reference"


def _load(variant: str, name: str) -> dict[str, np.ndarray]:
    path = _shared_dir() / variant / name
    if not path.is_file():
        pytest.fail(f"missing reference fixture {path}")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


VARIANTS = ["golden-vits", "golden-vitl"]


def _case_b_inputs(variant: str):
    g = _load(variant, "golden.npz")
    p = _load(variant, "postproc.npz")
    logits = p["b_logit_scale"] * g["lowres_logits_sub4"][~g["is_padding"]].transpose(1, 0, 2, 3)
    return g["video_scores"], np.ascontiguousarray(logits), g["out_size"], p


def _assert_same(r: PanopticResult, ids, seg_ids, query_idx):
    assert r.id_maps is not None and r.id_maps.dtype == np.int32
    np.testing.assert_array_equal(r.id_maps, ids)
    assert r.segment_ids == [int(x) for x in seg_ids]
    assert r.query_index == [int(x) for x in query_idx]
    assert len(r.scores) == len(r.segment_ids)


def _reference_merge(scores, logits, out_size):
    """Straightforward restatement of the official rule on the full [K, n, H, W]
    volume (argmax, per-query loop, second same-size resize), for random checks."""
    scores = torch.as_tensor(scores)
    logits = torch.as_tensor(logits)
    out_size = (int(out_size[0]), int(out_size[1]))
    q = len(scores)
    kth = scores.topk(k=min(q, 100))[0][-1]
    keep = scores >= max(0.05, kth)
    s, m, qid = scores[keep], logits[keep], torch.arange(q)[keep]
    pan = torch.zeros((logits.shape[1], *out_size), dtype=torch.int32)
    if m.shape[0] == 0:
        return pan.numpy(), [], []
    sub = m[:, ::5]
    quality = (sub > 1).flatten(1).sum(-1) / (sub > -1).flatten(1).sum(-1).clamp(min=1)
    s = s + 0.5 * quality
    prob = F.interpolate(m, size=out_size, mode="bilinear").sigmoid()
    bg = (prob < 0.5).sum(0) == len(prob)
    idm = (s.view(-1, 1, 1, 1) * prob).argmax(0)
    idm[bg] = -1
    seg, out_q = [], []
    for k in range(len(prob)):
        pk = F.interpolate(prob[k][None], size=out_size, mode="bilinear", align_corners=False)[0]
        a = int((idm == k).sum())
        o = int((pk >= 0.5).sum())
        sel = (idm == k) & (pk >= 0.5)
        if a > 0 and o > 0 and int(sel.sum()) > 0:
            if a / o < 0.7:
                continue
            seg.append(len(seg) + 1)
            pan[sel] = seg[-1]
            out_q.append(int(qid[k]))
    return pan.numpy(), seg, out_q


# ---------------------------------------------------------------------------
# merge_video_panoptic vs the official outputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_case_a_matches_official(variant):
    p = _load(variant, "postproc.npz")
    r = merge_video_panoptic(p["a_scores"], p["a_logits"], p["a_out_size"])
    _assert_same(r, p["a_panoptic_ids"], p["a_segment_ids"], p["a_segment_query_index"])
    assert r.id_maps.shape == (p["a_logits"].shape[1], *p["a_out_size"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_case_b_matches_official(variant):
    scores, logits, out_size, p = _case_b_inputs(variant)
    r = merge_video_panoptic(scores, torch.from_numpy(logits), out_size)
    _assert_same(r, p["b_panoptic_ids"], p["b_segment_ids"], p["b_segment_query_index"])


def test_chunked_equals_unchunked():
    p = _load("golden-vits", "postproc.npz")
    scores, logits, out_size, _ = _case_b_inputs("golden-vitl")
    a_full = merge_video_panoptic(p["a_scores"], p["a_logits"], p["a_out_size"], frame_chunk=1000)
    b_full = merge_video_panoptic(scores, logits, out_size, frame_chunk=1000)
    for chunk in (1, 2, 3):
        a = merge_video_panoptic(p["a_scores"], p["a_logits"], p["a_out_size"], frame_chunk=chunk)
        _assert_same(a, a_full.id_maps, a_full.segment_ids, a_full.query_index)
        assert a.scores == a_full.scores
        b = merge_video_panoptic(scores, logits, out_size, frame_chunk=chunk)
        _assert_same(b, b_full.id_maps, b_full.segment_ids, b_full.query_index)


def test_streaming_and_memmap(tmp_path):
    p = _load("golden-vits", "postproc.npz")
    scores, logits16 = p["a_scores"], p["a_logits"].astype(np.float16)
    mm = np.lib.format.open_memmap(tmp_path / "logits.npy", mode="w+", dtype=np.float16,
                                   shape=logits16.shape)
    mm[:] = logits16
    mm.flush()
    mm = np.load(tmp_path / "logits.npy", mmap_mode="r")

    ref = merge_video_panoptic(scores, torch.from_numpy(logits16).float(), p["a_out_size"])
    from_mm = merge_video_panoptic(scores, mm, p["a_out_size"], frame_chunk=2)
    _assert_same(from_mm, ref.id_maps, ref.segment_ids, ref.query_index)

    frames = {}
    streamed = merge_video_panoptic(scores, mm, p["a_out_size"], frame_chunk=3,
                                    frames_out=lambda t, m: frames.__setitem__(t, m.copy()))
    assert streamed.id_maps is None
    assert sorted(frames) == list(range(logits16.shape[1]))
    np.testing.assert_array_equal(np.stack([frames[t] for t in sorted(frames)]), ref.id_maps)
    assert streamed.segment_ids == ref.segment_ids and streamed.query_index == ref.query_index

    plan = plan_video_panoptic(scores, p["a_logits"], p["a_out_size"])
    got = [m for _, m in iter_video_panoptic(plan, p["a_logits"], frame_chunk=4)]
    np.testing.assert_array_equal(np.stack(got), p["a_panoptic_ids"])


class _CountingLogits:
    """[Q, n, h, w] logits that count the frames read through ``logits[:, t0:t1]``."""

    def __init__(self, logits: torch.Tensor):
        self.logits, self.shape, self.frames_read = logits, logits.shape, 0

    def __getitem__(self, index):
        chunk = self.logits[index]
        self.frames_read += chunk.shape[1]
        return chunk


@pytest.mark.parametrize("queries", [12, 300])  # codes of one byte (< 256 kept) and of int32
def test_streamed_merge_reads_the_logits_once_and_paints_what_two_passes_paint(tmp_path, queries):
    g = torch.Generator().manual_seed(queries)
    n, out_size = 11, (37, 53)
    logits = torch.randn(queries, n, 16, 16, generator=g) * 4
    scores = torch.rand(queries, generator=g)
    config = MergeConfig(test_topk_per_image=1000, overlap_threshold=0.1)
    counting = _CountingLogits(logits)
    frames = {}
    streamed = merge_video_panoptic(scores, counting, out_size, config=config, frame_chunk=3, work_dir=tmp_path,
                                    frames_out=lambda t, m: frames.__setitem__(t, m.copy()))
    quality_frames = len(range(0, n, 5))
    assert counting.frames_read == n + quality_frames  # one pass (plus the quality frames), not two
    assert list(tmp_path.iterdir()) == []  # the winners' temporary file is gone
    plan = plan_video_panoptic(scores, logits, out_size, config=config, frame_chunk=4)
    assert (len(plan.kept) >= 256) == (queries > 256) and 3 < len(plan.segment_ids) < len(plan.kept)
    two_passes = np.stack([m for _, m in iter_video_panoptic(plan, logits, frame_chunk=4)])
    np.testing.assert_array_equal(np.stack([frames[t] for t in range(n)]), two_passes)
    whole = merge_video_panoptic(scores, logits, out_size, config=config, frame_chunk=2)
    np.testing.assert_array_equal(whole.id_maps, two_passes)
    assert streamed.segment_ids == whole.segment_ids == plan.segment_ids


def test_random_inputs_match_reference_rule():
    g = torch.Generator().manual_seed(7)
    for trial in range(6):
        q = [12, 7, 120, 30, 5, 9][trial]
        n, h, w = [(6, 12, 16), (11, 9, 13), (2, 8, 8), (5, 16, 12), (3, 10, 10), (7, 6, 9)][trial]
        out = [(30, 41), (20, 25), (16, 16), (23, 17), (40, 40), (13, 29)][trial]
        # Blocky, partly saturated logits: sigmoid(+-40) is exactly 1/0 in float32,
        # which creates exact argmax ties between duplicate queries.
        base = torch.randn(q, n, max(2, h // 3), max(2, w // 3), generator=g) * 12
        logits = F.interpolate(base, size=(h, w), mode="nearest")
        logits = logits + torch.randn(q, n, h, w, generator=g)
        logits[logits.abs() > 15] *= 3
        scores = torch.rand(q, generator=g) * 0.9
        if q > 3:
            logits[2] = logits[1]
            scores[2] = scores[1]
            scores[3] = 0.04
        exp_ids, exp_seg, exp_q = _reference_merge(scores, logits, out)
        for chunk in (None, 1, 4):
            r = merge_video_panoptic(scores, logits, out, frame_chunk=chunk)
            _assert_same(r, exp_ids, exp_seg, exp_q)


def test_exact_ties_go_to_first_query():
    # Queries 1 and 2 are identical (same score, saturated probabilities): the
    # argmax tie must go to query 1, so query 2 wins nothing and is dropped.
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    disk = lambda cy, cx, r: torch.where((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r, 40.0, -40.0)
    logits = torch.stack([disk(4, 4, 3), disk(10, 10, 4), disk(10, 10, 4), disk(3, 12, 2)])
    logits = logits[:, None].repeat(1, 3, 1, 1)
    scores = torch.tensor([0.6, 0.7, 0.7, 0.5])
    exp_ids, exp_seg, exp_q = _reference_merge(scores, logits, (32, 32))
    assert exp_q == [0, 1, 3]
    for chunk in (None, 1, 2):
        _assert_same(merge_video_panoptic(scores, logits, (32, 32), frame_chunk=chunk),
                     exp_ids, exp_seg, exp_q)


def test_nothing_kept():
    logits = torch.randn(4, 3, 8, 8)
    r = merge_video_panoptic(torch.full((4,), 0.01), logits, (10, 12))
    assert r.id_maps.shape == (3, 10, 12) and not r.id_maps.any()
    assert r.segment_ids == [] and r.query_index == [] and r.scores == []


# ---------------------------------------------------------------------------
# fill_holes
# ---------------------------------------------------------------------------


def _brute_holes(bg: np.ndarray, max_area: int) -> np.ndarray:
    """bg: [P, H, W] bool -> pixels of 8-connected bg components of area <= max_area."""
    out = np.zeros_like(bg)
    p_, h, w = bg.shape
    for p in range(p_):
        seen = np.zeros((h, w), bool)
        for y in range(h):
            for x in range(w):
                if not bg[p, y, x] or seen[y, x]:
                    continue
                comp, todo = [], deque([(y, x)])
                seen[y, x] = True
                while todo:
                    cy, cx = todo.popleft()
                    comp.append((cy, cx))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = cy + dy, cx + dx
                            if 0 <= ny < h and 0 <= nx < w and bg[p, ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = True
                                todo.append((ny, nx))
                if len(comp) <= max_area:
                    for cy, cx in comp:
                        out[p, cy, cx] = True
    return out


def test_fill_holes_hand_made():
    m = np.full((3, 1, 12, 12), 5.0, dtype=np.float32)
    m[0, 0, 2, 2:5] = -1.0          # 3-px hole
    m[0, 0, 6:9, 6:9] = -2.0        # 9-px region: kept
    m[1, 0, 3, 3] = -1.0            # diagonal pair + 7 more along the diagonal = 9 px,
    for i in range(1, 9):           # one component under 8-connectivity: kept
        m[1, 0, 3 + i, 3 + i] = 0.0 if i == 4 else -1.0
    m[2, 0, 0, 0:2] = -3.0          # small region touching the border: filled
    m[2, 0, 5, 5] = -1.0            # diagonal pair, 2 px: filled
    m[2, 0, 6, 6] = -1.0
    x = torch.from_numpy(m)
    y = fill_holes(x, 8)
    assert y.shape == x.shape and y.dtype == torch.float32
    yn = y.numpy()
    np.testing.assert_array_equal(yn[0, 0, 2, 2:5], F01)
    np.testing.assert_array_equal(yn[0, 0, 6:9, 6:9], -2.0)
    np.testing.assert_array_equal(yn[1], m[1])  # 9-px diagonal chain (0.0 counts as bg)
    np.testing.assert_array_equal(yn[2, 0, 0, 0:2], F01)
    np.testing.assert_array_equal(yn[2, 0, [5, 6], [5, 6]], F01)
    # Untouched pixels are copied, input is not modified.
    changed = yn != m
    assert changed.sum() == 3 + 2 + 2
    assert (x.numpy() == m).all()
    # Without the diagonal link (4-connectivity) the chain would be 9 separate
    # 1-px holes; check the [N, H, W] layout gives the same result.
    np.testing.assert_array_equal(fill_holes(x[:, 0], 8).numpy(), yn[:, 0])


def test_fill_holes_masks_independent():
    # Two planes whose bg regions would form one 10-px component if planes touched.
    m = np.ones((2, 1, 6, 6), dtype=np.float32)
    m[0, 0, 0, 0:5] = -1.0
    m[1, 0, 0, 0:5] = -1.0
    y = fill_holes(torch.from_numpy(m), 8).numpy()
    np.testing.assert_array_equal(y[:, 0, 0, 0:5], F01)
    # Same 10 px inside one plane: not a hole.
    m2 = np.ones((1, 1, 6, 6), dtype=np.float32)
    m2[0, 0, 0, 0:5] = -1.0
    m2[0, 0, 1, 0:5] = -1.0
    np.testing.assert_array_equal(fill_holes(torch.from_numpy(m2), 8).numpy(), m2)


@pytest.mark.parametrize("max_area", [1, 3, 8])
def test_fill_holes_brute_force(max_area):
    rng = np.random.default_rng(max_area)
    x = rng.standard_normal((6, 1, 17, 23)).astype(np.float32) + 0.4
    x[0] = np.abs(x[0])              # no bg at all
    x[1, 0, ::2] = np.abs(x[1, 0, ::2])
    x[2] = -np.abs(x[2])             # all bg, one big component
    x[3, 0, 5, 5] = 0.0              # exactly 0 is background
    expect = _brute_holes(x[:, 0] <= 0, max_area)[:, None]
    y = fill_holes(torch.from_numpy(x), max_area).numpy()
    np.testing.assert_array_equal(y, np.where(expect, F01, x))
    assert expect.any()


def test_fill_holes_threaded_path_matches_brute_force():
    # Big enough to take the multi-threaded path when several threads are available.
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((20, 1, 128, 128)).astype(np.float32) + 0.5)
    y = fill_holes(x, 8)
    sel = [0, 7, 19]
    expect = _brute_holes(x[sel, 0].numpy() <= 0, 8)
    np.testing.assert_array_equal(y[sel, 0].numpy(), np.where(expect, F01, x[sel, 0].numpy()))


def test_fill_holes_other_dtypes():
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.standard_normal((4, 1, 15, 15)).astype(np.float32) + 0.4)
    expect = torch.from_numpy(_brute_holes(x[:, 0].numpy() <= 0, 8)[:, None])
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        xd = x.to(dtype)
        y = fill_holes(xd, 8)
        assert y.dtype == dtype
        torch.testing.assert_close(y, torch.where(expect, torch.tensor(0.1, dtype=dtype), xd),
                                   rtol=0, atol=0)


def test_fill_holes_rejects_bad_area():
    with pytest.raises(ValueError):
        fill_holes(torch.zeros(1, 1, 4, 4), 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fill_holes_consistent_with_golden(variant):
    # The yielded golden logits are already hole-filled: no <= 8-px bg component
    # may remain, so filling their sign pattern again must change nothing; and
    # every pixel equal to float32(0.1) on the sub-sampled grid is foreground.
    g = _load(variant, "golden.npz")
    steps = [0, len(g["is_padding"]) - 1]
    bits = np.unpackbits(g["lowres_sign_bits"][steps], axis=-1)[..., :256].astype(bool)
    signs = np.where(bits, np.float32(1.0), np.float32(-1.0)).reshape(-1, 1, 256, 256)
    refilled = fill_holes(torch.from_numpy(signs), 8).numpy()
    np.testing.assert_array_equal(refilled, signs)
    sub = g["lowres_logits_sub4"][steps]
    is_fill = sub == F01
    assert is_fill.any()
    assert bits[:, :, ::4, ::4][is_fill].all()


@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_area_counts_are_the_bincounts(k, seed):
    """The survival counts (scatter-based, sync-free on a GPU) equal plain bincounts."""
    from entitysam.inference.merge_rules import area_counts

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(-1, k, (2, 9, 11), generator=g)
    win_fg = (torch.rand(ids.shape, generator=g) < 0.6) & (ids >= 0)
    fg_count = torch.randint(0, 50, (k,), generator=g)
    a, o, s = area_counts(ids, win_fg, fg_count, k)
    assert torch.equal(a, torch.bincount(ids[ids >= 0], minlength=k))
    assert torch.equal(s, torch.bincount(ids[win_fg], minlength=k))
    assert o is fg_count
