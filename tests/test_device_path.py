"""The device (GPU) path, checked without a GPU.

* hole filling on the device: the same pixels as scipy's labelling, bit for bit;
* the batched path (all queries at once) against the per-query CPU path, in float32;
* a whole steady-state step on the `meta` device at the published sizes: few operations
  (kernel launches on a GPU) and no host synchronisation (a meta tensor has no data, so
  `.item()`, `.cpu()`, `bool(tensor)` or a data-dependent shape fail there);
* CUDA autocast's dtype rules emulated on the CPU (tests/cuda_autocast.py), through several
  frames, on both paths.
"""

from __future__ import annotations

import collections
import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from cuda_autocast import CudaAutocast
from entitysam.config import get_config
from entitysam.inference.holes import fill_holes, small_background_components, small_components_cpu
from entitysam.inference.precision import memory_dtype_for
from entitysam.inference.tracker import EntityTracker
from entitysam.inference.video import segment_video
from entitysam.modeling.entitysam import EntitySAM


def scipy_holes(bg: np.ndarray, max_area: int) -> np.ndarray:
    holes = small_components_cpu(bg.reshape(-1, *bg.shape[-2:]), max_area)
    return np.zeros(bg.shape, bool) if holes is None else holes.reshape(bg.shape)


# ------------------------------------------------------------------ hole filling


@settings(max_examples=150, deadline=None)
@given(h=st.integers(1, 24), w=st.integers(1, 24), density=st.floats(0.05, 0.95),
       max_area=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_device_hole_labelling_is_scipy_bit_for_bit(h, w, density, max_area, seed):
    rng = np.random.default_rng(seed)
    bg = rng.random((3, h, w)) < density
    got = small_background_components(torch.from_numpy(bg), max_area).numpy()
    np.testing.assert_array_equal(got, scipy_holes(bg, max_area))


def _adversarial_masks() -> list[tuple[np.ndarray, int]]:
    cases = []
    # a component of exactly max_area and one of max_area + 1 pixels, in a line and on diagonals
    for n in (8, 9):
        line = np.zeros((12, 12), bool)
        line[5, 1:1 + n] = True
        cases.append((line, 8))
        diagonal = np.zeros((12, 12), bool)
        for i in range(n):
            diagonal[i + 1, i + 1] = True  # connected through corners only
        cases.append((diagonal, 8))
    # components touching every border and corner
    border = np.zeros((10, 10), bool)
    border[0, 0] = True
    border[0, 4:7] = True
    border[9, 9] = border[5, 0] = border[9, 3] = True
    border[3:5, 9] = True
    cases.append((border, 8))
    # two diagonal-only neighbours that are one component of 2, then 8 + 1 through one corner
    corner = np.zeros((8, 8), bool)
    corner[1, 1] = corner[2, 2] = True
    corner[4:6, 4:8] = True
    corner[6, 3] = True  # touches (5, 4) diagonally: 9 pixels in all
    cases.append((corner, 8))
    # a long snake whose pixel indices decrease along it: labels propagate slowly and unevenly
    snake = np.zeros((9, 9), bool)
    snake[0, :] = snake[2, :] = snake[4, :] = snake[6, :] = snake[8, :] = True
    snake[1, 8] = snake[3, 0] = snake[5, 8] = snake[7, 0] = True
    cases.append((snake, 8))
    cases.append((snake[::-1, ::-1].copy(), 8))
    # everything background, nothing background, a single pixel plane
    cases += [(np.ones((6, 7), bool), 8), (np.zeros((6, 7), bool), 8), (np.ones((1, 1), bool), 1)]
    # a checkerboard: every background pixel joins its diagonal neighbours into one component
    cases.append((np.indices((7, 7)).sum(0) % 2 == 0, 8))
    return cases


@pytest.mark.parametrize("index", range(len(_adversarial_masks())))
def test_device_hole_labelling_adversarial_masks(index):
    bg, max_area = _adversarial_masks()[index]
    for mask in (bg, bg.T.copy(), ~bg):
        got = small_background_components(torch.from_numpy(mask), max_area).numpy()
        np.testing.assert_array_equal(got, scipy_holes(mask, max_area))


def test_fill_holes_on_a_device_uses_the_device_labelling():
    logits = torch.randn(4, 1, 32, 32)
    on_meta = fill_holes(logits.to("meta"), 8)  # no host copy: would fail on meta
    assert on_meta.device.type == "meta" and on_meta.shape == logits.shape
    expected = fill_holes(logits, 8)
    via_device_rule = torch.where(small_background_components(logits <= 0, 8), 0.1, logits)
    assert torch.equal(expected, via_device_rule)


# ------------------------------------------------------------------ batched vs per query


def _video(num_frames: int, size: int, seed: int = 0) -> list[tuple[int, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 3, size, size, generator=g)
    return [(t, torch.roll(base, shifts=(2 * t, 3 * t), dims=(2, 3)) + 0.1 * torch.randn(base.shape, generator=g))
            for t in range(num_frames)]


def test_batched_path_equals_the_per_query_path(tiny_model):
    """Every step of a 5-frame video (8 steps, 7 memories reached), float32 on CPU."""
    frames = _video(5, tiny_model.cfg.image_size)
    runs = {}
    for batched in (False, True):
        tracker = EntityTracker(tiny_model, batched=batched)
        runs[batched] = list(tracker.track(frames))
    assert len(runs[True]) == 5 + tiny_model.cfg.num_warmup_copies
    worst = 0.0
    for a, b in zip(runs[False], runs[True]):
        for name in ("mask_logits", "scores", "points"):
            worst = max(worst, (getattr(a, name) - getattr(b, name)).abs().max().item())
    assert worst <= 1e-4


def test_kept_memory_keys_equal_keys_projected_at_every_step(tiny_model, monkeypatch):
    """The batched path keeps each memory's key projection (`MemoryKeys`) and adds its age's
    offset at every step: the same steps, float32 on CPU, as projecting all keys again, through
    the bank's evictions (10 steps); after the first read each memory's keys are made once."""
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.maskmem_tpos_enc.normal_()  # (zero in the fixture: the offsets would add nothing)
    frames = _video(7, model.cfg.image_size, seed=3)
    projected = list(EntityTracker(model, batched=True, keep_keys=False).track(frames))
    made = []
    real = model.memory_key_bases
    monkeypatch.setattr(model, "memory_key_bases", lambda memory: made.append(1) or real(memory))
    tracker = EntityTracker(model, batched=True)
    assert tracker.keep_keys
    kept, per_step = [], []
    for result in tracker.track(frames):
        kept.append(result)
        per_step.append(len(made))
        made.clear()
    assert len(kept) == 10 > model.cfg.num_maskmem + 1
    assert per_step == [0] + [1] * 9  # step p reads the memory of step p - 1 for the first time
    ring = tracker.key_ring.rings[0]  # one slot per memory-bank slot, the same storage throughout
    assert ring.shape[1] == model.cfg.num_maskmem * model.cfg.grid_size ** 2
    worst = 0.0
    for a, b in zip(projected, kept):
        for name in ("mask_logits", "scores", "points"):
            worst = max(worst, (getattr(a, name) - getattr(b, name)).abs().max().item())
    assert 0 < worst <= 1e-4  # not bit-identical: the keys are rounded differently


def test_keys_are_kept_only_on_the_batched_path_with_all_queries(tiny_model):
    assert not EntityTracker(tiny_model).keep_keys  # per-query CPU path
    assert not EntityTracker(tiny_model, batched=True, query_chunk=4).keep_keys
    assert not EntityTracker(tiny_model, batched=True, exact=True).keep_keys
    with pytest.raises(ValueError, match="keep_keys"):
        EntityTracker(tiny_model, batched=True, query_chunk=4, keep_keys=True)


def test_batched_path_in_chunks_of_queries_equals_all_at_once(tiny_model):
    frames = _video(3, tiny_model.cfg.image_size, seed=1)
    whole = list(EntityTracker(tiny_model, batched=True).track(frames))
    chunked = list(EntityTracker(tiny_model, batched=True, query_chunk=4).track(frames))
    for a, b in zip(whole, chunked):
        assert (a.mask_logits - b.mask_logits).abs().max().item() <= 1e-5


def test_batched_is_the_default_off_the_cpu(tiny_model):
    assert EntityTracker(tiny_model).batched is False
    with torch.device("meta"):
        meta_model = EntitySAM(get_config("tiny")).eval()
    assert EntityTracker(meta_model).batched is True
    assert EntityTracker(meta_model, batched=False).batched is False


# ------------------------------------------------------------------ meta device


class CountOps(TorchDispatchMode):
    """Counts the dispatched operations that may launch a kernel (views excluded: they only
    make a new tensor header). Outside inference mode composite operations reach the dispatcher
    decomposed (a linear as addmm + views; on `meta` attention as its math form, which on a GPU
    is one fused kernel), so this over-counts a GPU's launches."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


class CountWeightCasts(TorchDispatchMode):
    """Counts dtype conversions of whole parameters (`params`; slices of them excluded: autocast
    never keeps the copy of a view)."""

    def __init__(self, params):
        super().__init__()
        self.storages = {p.untyped_storage().data_ptr() for p in params}
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten._to_copy, torch.ops.aten.to) and not args[0]._is_view() \
                and args[0].untyped_storage().data_ptr() in self.storages:
            self.casts += 1
        return func(*args, **(kwargs or {}))


def test_autocast_casts_each_weight_once_per_region_on_the_batched_path(tiny_model, one_torch_thread):
    """Autocast keeps a weight's bfloat16 copy for its whole region, except in inference mode:
    the batched path runs its steps outside it, so a step after the first that read memory
    casts no weight again (on an H200 these casts were hundreds of kernels a step)."""
    frames = _video(3, tiny_model.cfg.image_size, seed=4)
    tracker = EntityTracker(tiny_model, batched=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for t in range(2):  # every part has run once (step 1 is the first to read memory)
            tracker.step(*frames[t])
        with CountWeightCasts(tiny_model.parameters()) as counter:
            tracker.step(*frames[2])
    assert counter.casts == 0


@pytest.mark.parametrize("name, limit", [("vit-s", 3000), ("vit-l", 5000)])
def test_steady_step_on_meta_is_small_and_sync_free(name, limit):
    """The published sizes, hole filling on: the first step (point sampler) and steady steps
    with a full memory bank run on `meta` (so nothing in them reads a value on the host) and
    a steady step (one new memory) dispatches at most `limit` operations (the per-query path:
    ~267,000)."""
    cfg = get_config(name)
    with torch.device("meta"):
        model = EntitySAM(cfg).eval()
    tracker = EntityTracker(model)
    assert tracker.batched and tracker.fill_hole_area > 0
    image = torch.empty(1, 3, cfg.image_size, cfg.image_size, device="meta")
    first = tracker.step(0, image)
    assert first.mask_logits.device.type == "meta"
    # Fill the bank as after 7 steps, then time a step on a new frame.
    g = cfg.grid_size
    for p in range(1, cfg.num_maskmem):
        tracker.bank.add(p, torch.empty(cfg.num_queries, cfg.mem_dim, g, g, device="meta"))
    tracker.step_index = cfg.num_maskmem
    assert len(tracker.bank.recall(tracker.step_index)) == cfg.num_maskmem
    tracker.step(1, image)  # reads these memories first (their kept keys are made here)
    assert tracker.keep_keys
    with CountOps() as counter:
        out = tracker.step(2, image)
    total = sum(counter.ops.values())
    assert out.mask_logits.shape == (cfg.num_queries, 1, cfg.lowres_mask_size, cfg.lowres_mask_size)
    # (max_pool2d dispatches as itself in inference mode, else as its with-indices form)
    assert counter.ops["aten.max_pool2d"] + counter.ops["aten.max_pool2d_with_indices"] > 0, \
        "hole filling did not run on the device"
    assert total <= limit, f"{total} operations per steady step: {counter.ops.most_common(10)}"


# ------------------------------------------------------------------ CUDA autocast rules



@pytest.mark.parametrize("batched", [True, False], ids=["batched", "per-query"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_video_under_cuda_autocast_rules(tiny_model, one_torch_thread, dtype, batched):
    # Dispatch modes are per thread: the CPU path's worker threads must not be used.
    assert torch.get_num_threads() == 1
    frames = _video(4, tiny_model.cfg.image_size, seed=2)
    memory_dtype = memory_dtype_for(dtype)  # as pipeline.segment
    with CudaAutocast(dtype) as rules:
        result = segment_video(tiny_model, frames, (40, 48), memory_dtype=memory_dtype, batched=batched,
                               keep_steps=True)
    # (dispatched as the composite or the core operation depending on the torch build)
    assert rules.casts["aten.softmax"] + rules.casts["aten._softmax"] > 0
    assert rules.casts["aten.layer_norm"] + rules.casts["aten.native_layer_norm"] > 0
    assert result.panoptic.id_maps.shape == (4, 40, 48)
    assert torch.isfinite(result.scores).all()
    for step in result.steps:
        assert torch.isfinite(step.mask_logits).all() and torch.isfinite(step.points).all()
    # Points stay in the autocast dtype as in the official run: bfloat16 / float16 values.
    last = result.steps[-1].points
    assert torch.equal(last, last.to(dtype).float())


def test_public_api_under_cuda_autocast_rules(tiny_model, one_torch_thread, monkeypatch):
    import entitysam.inference.precision as precision
    from entitysam.pipeline.segment import segment

    monkeypatch.setattr(precision, "autocast_for", lambda device_type, dtype: CudaAutocast(dtype))
    video = (np.random.default_rng(0).random((3, 36, 44, 3)) * 255).astype(np.uint8)
    for dtype in ("bfloat16", "float16"):
        with segment(tiny_model, video, dtype=dtype, batched=True) as result:
            assert len(result) == 3 and result[2].shape == (36, 44)



def test_batched_attention_queries_are_never_stride_0(tiny_model, monkeypatch):
    """cuDNN's SDPA takes its output layout from the query: a stride-0 (expanded) query batch made
    it fail on an H200 in bfloat16 at the first step that reads memory. Every query handed to
    SDPA by the batched path must be materialised."""
    import torch.nn.functional as F

    real, strides = F.scaled_dot_product_attention, []

    def recording(q, k, v, *args, **kwargs):
        strides.append(q.stride())
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    with torch.inference_mode():
        list(EntityTracker(tiny_model, batched=True).track(_video(2, tiny_model.cfg.image_size)))
    assert strides and all(0 not in s for s in strides), [s for s in strides if 0 in s]


def test_merge_counting_is_sync_free():
    """The merge's per-pixel assignment and its survival counts run on the `meta` device (any host
    synchronisation would fail there): on a GPU only the [K] totals come back, once per video."""
    from entitysam.inference.merge_rules import area_counts, assign_pixels

    lowres = torch.randn(5, 2, 64, 64, device="meta")
    ids, win_fg, fg_count = assign_pixels(lowres, torch.rand(5, device="meta"), (120, 160), 0.5)
    a, o, s = area_counts(ids, win_fg, fg_count, 5)
    assert a.shape == o.shape == s.shape == (5,) and a.device.type == "meta"
