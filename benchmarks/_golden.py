"""Per-step comparison with a golden fixture of the official code, with the tolerances that
../shared/reference/README.md recommends for a float32 implementation.

Shared by tests/test_reference.py (which asserts them) and benchmarks/gpu.py (which reports
them for the float32 GPU path): one definition of "matches the official code".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LOGIT_ATOL = 0.05  # |ours - golden| <= LOGIT_ATOL + LOGIT_RTOL * |golden| ...
LOGIT_RTOL = 0.03
WITHIN_MIN = 0.999  # ... for at least this fraction of the (every 4th pixel) logits
MEDIAN_MAX = 0.01  # median |ours - golden| of those logits
SIGN_MISMATCH_MAX = 1e-3  # fraction of low-res / upsampled mask signs that may differ
POINTS_ATOL = 0.05  # prompt coordinates, pixels of the 1024 input


def eiou_atol(step: int) -> float:
    """The warm-up steps over frame 0 (0-2) are held tighter than the later ones."""
    return 2e-3 if step < 3 else 5e-3


def step_stats(golden: dict, step: int, logits: np.ndarray, scores: np.ndarray, points: np.ndarray) -> dict:
    """Diff statistics of one step against `golden` (the arrays of golden.npz).

    logits [Q, h, w] float32 low-res logits after hole filling, scores [Q] eIoU, points [Q, 2].
    """
    ref = golden["lowres_logits_sub4"][step]
    diff = np.abs(logits[:, ::4, ::4] - ref)
    signs = np.packbits(logits > 0, axis=-1)
    return dict(
        step=int(step),
        within_tolerance=float(np.mean(diff <= LOGIT_ATOL + LOGIT_RTOL * np.abs(ref))),
        median_abs_diff=float(np.median(diff)),
        q999_abs_diff=float(np.quantile(diff, 0.999)),
        sign_mismatch=float(np.unpackbits(signs ^ golden["lowres_sign_bits"][step], axis=-1).mean()),
        eiou_max_diff=float(np.abs(scores - golden["pred_eiou"][step]).max()),
        points_max_diff=float(np.abs(points - golden["sampled_point_coords"][step]).max()),
        bit_identical=not diff.any(),
    )


def step_failures(stats: dict) -> list[str]:
    """The tolerances `stats` (from `step_stats`) breaks, as messages; empty when it passes.
    NaN statistics fail every comparison."""
    p = stats["step"]
    failures = []
    if not stats["within_tolerance"] >= WITHIN_MIN:
        failures.append(f"step {p}: only {stats['within_tolerance']:.5f} of logits within tolerance")
    if not stats["median_abs_diff"] <= MEDIAN_MAX:
        failures.append(f"step {p}: median diff {stats['median_abs_diff']}")
    if not stats["sign_mismatch"] <= SIGN_MISMATCH_MAX:
        failures.append(f"step {p}: {stats['sign_mismatch']:.2e} of low-res signs differ")
    if not stats["eiou_max_diff"] <= eiou_atol(p):
        failures.append(f"step {p}: eIoU max |diff| {stats['eiou_max_diff']:.2e} > {eiou_atol(p)}")
    if not stats["points_max_diff"] <= POINTS_ATOL:
        failures.append(f"step {p}: points max |diff| {stats['points_max_diff']:.3f} px > {POINTS_ATOL}")
    return failures


def format_stats(stats: dict) -> str:
    return (f"step {stats['step']}: logits within tolerance {stats['within_tolerance']:.5f}, median |diff| "
            f"{stats['median_abs_diff']:.1e}, 99.9% |diff| {stats['q999_abs_diff']:.3f}, sign mismatch "
            f"{stats['sign_mismatch']:.1e}, eIoU max |diff| {stats['eiou_max_diff']:.1e}, points max |diff| "
            f"{stats['points_max_diff']:.1e} px" + (", logits bit-identical" if stats["bit_identical"] else ""))


def video_sign_mismatch(golden: dict, frame_index: int, mask_logits: torch.Tensor, out_size) -> float:
    """Fraction of the upsampled (bilinear, to the video size) mask signs of one output frame that
    differ from the golden `video_sign_bits`; mask_logits [Q, 1, h, w]."""
    height, width = (int(v) for v in out_size)
    up = F.interpolate(mask_logits.float().cpu(), size=(height, width), mode="bilinear", align_corners=False)[:, 0] > 0
    bits = np.packbits(up.numpy(), axis=-1) ^ golden["video_sign_bits"][frame_index]
    return float(np.unpackbits(bits, axis=-1)[..., :width].mean())
