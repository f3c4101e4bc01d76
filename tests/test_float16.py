"""float16 on the device path stays finite and agrees with float32 (`--dtype auto` picks it on GPUs
older than Ampere), checked without a GPU: CUDA autocast's dtype rules emulated on the CPU, with
products accumulated in float32 and rounded to float16 as a GPU's (tests/cuda_autocast.py).

The input is realistic: the bundled (trained) demo model on an 854x480 demo scene, through the
public `segment`. What was measured (benchmarks/float16_headroom.py, README "GPU"): the largest
value held in float16 there is ~130, 500x below float16's 65504, and 99.99% of mask pixels keep
float32's sign. The second test shows the check can fail: the same model with its DINOv2
residual stream scaled up (float32 results unchanged, float16 past 65504) fails it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cuda_autocast import CudaAutocast

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAMES, HEIGHT, WIDTH = 4, 480, 854
SAME_SIGN_MIN = 0.995  # fraction of low-res mask pixels with float32's sign, per frame (measured >= 0.9999)
SCORE_ATOL = 0.01  # video-level score of each query (measured <= 3e-4)
SAME_ID_MIN = 0.99  # fraction of output id-map pixels equal to float32's, per frame


@pytest.fixture(scope="module")
def demo_model():
    from entitysam import EntitySAM

    return EntitySAM.from_pretrained("demo")


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    from entitysam.data.synthetic.scenes import render_demo_scene

    images, _ = render_demo_scene(np.random.default_rng([2025, 9]), FRAMES, HEIGHT, WIDTH)
    return images


def run(model, video, dtype: str, tmp_path, monkeypatch):
    """segment() on the batched path -> (low-res logits [n, Q, h, w], scores [Q], id maps [n, H, W])."""
    import entitysam.inference.precision as precision

    monkeypatch.setattr(precision, "autocast_for",
                        lambda device_type, d: CudaAutocast(d, float32_products=True))
    path = tmp_path / f"{dtype}.npz"
    with model.segment(video, dtype=dtype, batched=True, save_logits=path) as result:
        maps = np.stack(list(result))
    saved = np.load(path)
    return saved["logits"], saved["scores"], maps


def agreement(reference, got) -> dict:
    (ref_logits, ref_scores, ref_maps), (logits, scores, maps) = reference, got
    finite = bool(np.isfinite(logits).all() and np.isfinite(scores).all())
    return dict(finite=finite,
                same_sign=[float(((a > 0) == (b > 0)).mean()) for a, b in zip(ref_logits, logits)],
                score_diff=float(np.nan_to_num(np.abs(ref_scores - scores), nan=np.inf).max()),
                same_id=[float((a == b).mean()) for a, b in zip(ref_maps, maps)])


def passes(a: dict) -> bool:
    return a["finite"] and min(a["same_sign"]) >= SAME_SIGN_MIN and a["score_diff"] <= SCORE_ATOL \
        and min(a["same_id"]) >= SAME_ID_MIN


@pytest.fixture(scope="module")
def float32_run(demo_model, scene, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        return run(demo_model, scene, "float32", tmp_path_factory.mktemp("float32"), mp)


def test_float16_is_finite_and_agrees_with_float32(demo_model, scene, float32_run, tmp_path, monkeypatch):
    assert torch.get_num_threads() == 1  # dispatch modes are per thread
    ref = float32_run
    assert len(np.unique(ref[2])) > 3  # the trained model finds entities here: the id maps mean something
    got = agreement(ref, run(demo_model, scene, "float16", tmp_path, monkeypatch))
    assert passes(got), got


def test_the_check_fails_when_float16_overflows(demo_model, scene, float32_run, tmp_path, monkeypatch):
    """DINOv2's patch embedding, class and position embeddings and layer scales times 5000: every
    residual-stream value scaled alike, which each LayerNorm removes (float32 results unchanged),
    but the patch embedding's float16 output passes 65504."""
    import copy

    scaled = copy.deepcopy(demo_model)
    dino = scaled.dinov2_feature_extractor
    with torch.no_grad():
        for p in (dino.patch_embed.proj.weight, dino.patch_embed.proj.bias, dino.cls_token, dino.pos_embed,
                  *(g for n, g in dino.named_parameters() if n.endswith("gamma"))):
            p.mul_(5000.0)
    same_in_float32 = agreement(float32_run, run(scaled, scene, "float32", tmp_path, monkeypatch))
    assert passes(same_in_float32), same_in_float32
    got = agreement(float32_run, run(scaled, scene, "float16", tmp_path, monkeypatch))
    assert not passes(got), got
