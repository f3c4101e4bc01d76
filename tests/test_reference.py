"""Equivalence with the official implementation on a golden fixture.

The fixture folder (default `../shared/reference/golden-vits`, override with
ENTITYSAM_REFERENCE_DIR) holds frames, `meta.json` (weight seed, variant), `golden.npz` and
`postproc.npz`, made by running the official code on CPU in float32 with weights from
`make_weights.py`. The checkpoint is rebuilt from the seed, loaded through the public loader
and run through the public video path; every golden array is compared with the tolerances the
fixture's README recommends. ENTITYSAM_REFERENCE_FRAMES sets how many leading real frames are
compared (default 1: the three warm-up steps and the first output frame; `all`: every frame).
ENTITYSAM_REFERENCE_EXACT=1 runs the exact mode (`segment(..., exact=True)`: the official order of
operations) instead of the default fast one; same tolerances, and the report says which steps
are bit-identical. ENTITYSAM_REFERENCE_BATCHED=1 runs the batched device path (all queries at
once, the GPU path) on the CPU instead of the per-query CPU path.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from entitysam.checkpoints import load_entitysam
from entitysam.inference.offline_merge import merge_video_panoptic
from entitysam.inference.preprocess import preprocess_frame
from entitysam.inference.video import segment_video

from conftest import REPO, load_make_weights, reference_dir

sys.path.insert(0, str(REPO / "benchmarks"))  # the comparison is shared with benchmarks/gpu.py
from _golden import format_stats, step_failures, step_stats, video_sign_mismatch  # noqa: E402


def fixture_dir() -> Path:
    path = Path(os.environ.get("ENTITYSAM_REFERENCE_DIR", reference_dir() / "golden-vits"))
    for name in ("meta.json", "golden.npz", "postproc.npz", "frames"):
        if not (path / name).exists():
            pytest.fail(f"reference fixture incomplete: {path / name} is missing")
    return path


def frames_to_compare(total: int) -> int:
    value = os.environ.get("ENTITYSAM_REFERENCE_FRAMES", "1")
    return total if value == "all" else min(int(value), total)


def exact_mode() -> bool:
    return os.environ.get("ENTITYSAM_REFERENCE_EXACT", "0") not in ("", "0")


def batched_path() -> bool:
    return os.environ.get("ENTITYSAM_REFERENCE_BATCHED", "0") not in ("", "0")


@pytest.fixture(scope="module")
def fixture():
    path = fixture_dir()
    meta = json.loads((path / "meta.json").read_text())
    golden = dict(np.load(path / "golden.npz"))
    return path, meta, golden


@pytest.fixture(scope="module")
def official_run(fixture, tmp_path_factory):
    """Our model on the fixture's first frames, loaded and run through the public API."""
    path, meta, _ = fixture
    manifest = {"vits": "manifest-vits.json", "vitl": "manifest-vitl.json"}[meta["variant"]]
    make_weights = load_make_weights()
    manifest_data = json.loads((reference_dir() / manifest).read_text())
    state = make_weights.make_state_dict(manifest_data, meta["weight_seed"])
    ckpt = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": state}, ckpt)
    del state

    torch.set_num_threads(int(meta.get("threads", 2)))
    model = load_entitysam(ckpt)  # config inferred from the keys
    n = frames_to_compare(len(meta["frame_names"]))
    size = model.cfg.image_size
    frames = ((i, preprocess_frame(Image.open(path / "frames" / name), size))
              for i, name in enumerate(meta["frame_names"][:n]))
    start = time.time()
    result = segment_video(model, frames, tuple(meta["out_size"]), keep_steps=True, exact=exact_mode(),
                           batched=batched_path())
    mode = "exact" if exact_mode() else "batched" if batched_path() else "default"
    print(f"\n{meta['variant']} ({mode} mode): {n} frames, {len(result.steps)} steps in {time.time() - start:.1f} s")
    return n, result


def test_per_step_outputs_match_golden(fixture, official_run):
    _, _, golden = fixture
    n, result = official_run
    steps = result.steps
    assert len(steps) == n + 3
    assert [s.is_warmup for s in steps] == list(golden["is_padding"][: n + 3])
    assert [s.frame_index for s in steps] == list(golden["source_frame"][: n + 3])
    for s in steps:
        stats = step_stats(golden, s.step, s.mask_logits[:, 0].numpy(), s.scores.numpy(), s.points.numpy())
        print(format_stats(stats))
        assert not step_failures(stats), "; ".join(step_failures(stats))


def test_video_outputs_match_golden(fixture, official_run):
    """Upsampled signs per output frame, and (for a complete run) scores and id maps."""
    _, meta, golden = fixture
    n, result = official_run
    height, width = meta["out_size"]
    for s in result.steps:
        if s.is_warmup:
            continue
        mismatch = video_sign_mismatch(golden, s.frame_index, s.mask_logits, (height, width))
        assert mismatch <= 1e-3, f"frame {s.frame_index}: {mismatch:.2e} of video signs differ"
    if n < len(meta["frame_names"]):
        pytest.skip("video-level scores and id maps need all frames (ENTITYSAM_REFERENCE_FRAMES=all)")
    print(f"video scores max |diff| {np.abs(result.scores.numpy() - golden['video_scores']).max():.1e}")
    np.testing.assert_allclose(result.scores.numpy(), golden["video_scores"], atol=5e-3, rtol=0)
    ids = result.panoptic.id_maps
    ref_ids = golden["panoptic_ids"]
    assert ids.shape == ref_ids.shape
    assert np.mean(ids != ref_ids) <= 1e-4
    assert list(result.panoptic.segment_ids) == list(golden["segment_ids"])
    assert list(result.panoptic.query_index) == list(golden["segment_query_index"])


def test_postprocessing_matches_official_cases(fixture):
    path, _, golden = fixture
    post = np.load(path / "postproc.npz")
    a = merge_video_panoptic(torch.from_numpy(post["a_scores"]), torch.from_numpy(post["a_logits"]),
                             tuple(int(v) for v in post["a_out_size"]))
    np.testing.assert_array_equal(a.id_maps, post["a_panoptic_ids"])
    assert list(a.segment_ids) == list(post["a_segment_ids"])
    assert list(a.query_index) == list(post["a_segment_query_index"])

    real = ~golden["is_padding"]
    logits = float(post["b_logit_scale"]) * golden["lowres_logits_sub4"][real].transpose(1, 0, 2, 3)
    b = merge_video_panoptic(torch.from_numpy(golden["video_scores"]), torch.from_numpy(np.ascontiguousarray(logits)),
                             tuple(int(v) for v in golden["out_size"]))
    np.testing.assert_array_equal(b.id_maps, post["b_panoptic_ids"])
    assert list(b.segment_ids) == list(post["b_segment_ids"])
    assert list(b.query_index) == list(post["b_segment_query_index"])
