"""Per-step comparison with a golden fixture of the official code, with the tolerances that
../shared/reference/README.md recommends for a float32 implementation.

Shared by tests/test_reference.py (which asserts them) and benchmarks/gpu.py (which reports
them for the float32 GPU path): one definition of "matches the official code".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

LOGIT_ATOL = 0.05  # |ours - golden| <= LOGIT_ATOL + LOGIT_RTOL * |golden| ...
LOGIT_RTOL = 0.03
WITHIN_MIN = 0.999  # ... for at least this fraction of the (every 4th pixel) logits
MEDIAN_MAX = 0.01  # median |ours - golden| of those logits
SIGN_MISMATCH_MAX = 1e-3  # fraction of low-res / upsampled mask signs that may differ
POINTS_ATOL = 0.05  # prompt coordinates, pixels of the 1024 input
ID_MAP_MAX = 1e-4  # fraction of the video's id-map pixels that may differ (a complete run)
VIDEO_SCORE_ATOL = 5e-3  # video-level score of each query (a complete run)


def eiou_atol(step: int) -> float:
    """The warm-up steps over frame 0 (0-2) are held tighter than the later ones."""
    return 2e-3 if step < 3 else 5e-3


@dataclass(frozen=True)
class Tolerance:
    """What one step may differ from a golden fixture by. The defaults are the README's (valid on
    the fixture's own CPU family); `measured_tolerance` widens them from the official code's own noise."""

    within_min: float = WITHIN_MIN
    median_max: float = MEDIAN_MAX
    sign_max: float = SIGN_MISMATCH_MAX  # low-res signs, and upsampled signs of an output frame
    eiou_atol: float | None = None  # None: eiou_atol(step)
    points_atol: float = POINTS_ATOL
    id_map_max: float = ID_MAP_MAX  # whole video
    video_score_atol: float = VIDEO_SCORE_ATOL  # whole video

    def eiou_bound(self, step: int) -> float:
        return eiou_atol(step) if self.eiou_atol is None else self.eiou_atol


CROSS_CPU_MARGIN = 2.0  # allowed = max(README, margin x what the official code itself moved on another CPU)
THREAD_NOISE_MARGIN = 1.0  # ... and x what it moved with another thread count on the fixture's own CPU family


def measured_tolerance(step: int, measurements: list[dict], margin: float = CROSS_CPU_MARGIN) -> Tolerance:
    """The tolerance for `step` from the official code's own measured difference from a fixture
    (on another CPU, or with another thread count).

    measurements: one entry per measurement, {"steps": [step_stats rows]} (the official code run
    elsewhere against the fixture, `scripts/reference/harness.py against-fixture`). Per statistic
    the worst measurement of that step (steps past the last measured one use the last measured
    step) times `margin`, never tighter than the README tolerance; the whole video's id maps and
    scores likewise, where a measurement records them ("id_map_mismatch", "video_score_max_diff").
    """
    rows = []
    for m in measurements:
        by_step = {r["step"]: r for r in m["steps"]}
        rows.append(by_step.get(step, by_step[max(by_step)]))
    if not rows:
        return Tolerance()
    worst = lambda key: max(float(r.get(key, 0.0)) for r in rows)  # noqa: E731
    return Tolerance(
        within_min=1.0 - max(1.0 - WITHIN_MIN, margin * (1.0 - min(float(r["within_tolerance"]) for r in rows))),
        median_max=max(MEDIAN_MAX, margin * worst("median_abs_diff")),
        sign_max=max(SIGN_MISMATCH_MAX, margin * worst("sign_mismatch"), margin * worst("video_sign_mismatch")),
        eiou_atol=max(eiou_atol(step), margin * worst("eiou_max_diff")),
        points_atol=max(POINTS_ATOL, margin * worst("points_max_diff")),
        id_map_max=max([ID_MAP_MAX] + [margin * float(m["id_map_mismatch"]) for m in measurements
                                       if "id_map_mismatch" in m]),
        video_score_atol=max([VIDEO_SCORE_ATOL] + [margin * float(m["video_score_max_diff"]) for m in measurements
                                                   if "video_score_max_diff" in m]),
    )


def widest(step: int, *tolerances: Tolerance) -> Tolerance:
    """Per statistic the loosest of `tolerances` at `step`."""
    return Tolerance(within_min=min(t.within_min for t in tolerances),
                     median_max=max(t.median_max for t in tolerances),
                     sign_max=max(t.sign_max for t in tolerances),
                     eiou_atol=max(t.eiou_bound(step) for t in tolerances),
                     points_atol=max(t.points_atol for t in tolerances),
                     id_map_max=max(t.id_map_max for t in tolerances),
                     video_score_atol=max(t.video_score_atol for t in tolerances))


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
        bit_identical=bool(not diff.any() and np.array_equal(signs, golden["lowres_sign_bits"][step])
                           and np.array_equal(scores, golden["pred_eiou"][step])
                           and np.array_equal(points, golden["sampled_point_coords"][step])),
    )


def step_failures(stats: dict, tol: Tolerance | None = None) -> list[str]:
    """The tolerances `stats` (from `step_stats`) breaks, as messages; empty when it passes.
    NaN statistics fail every comparison. tol: default the README's."""
    tol = tol or Tolerance()
    p = stats["step"]
    failures = []
    if not stats["within_tolerance"] >= tol.within_min:
        failures.append(f"step {p}: only {stats['within_tolerance']:.5f} of logits within tolerance "
                        f"(needs {tol.within_min:.5f})")
    if not stats["median_abs_diff"] <= tol.median_max:
        failures.append(f"step {p}: median diff {stats['median_abs_diff']:.2e} > {tol.median_max:.2e}")
    if not stats["sign_mismatch"] <= tol.sign_max:
        failures.append(f"step {p}: {stats['sign_mismatch']:.2e} of low-res signs differ (> {tol.sign_max:.1e})")
    if not stats["eiou_max_diff"] <= tol.eiou_bound(p):
        failures.append(f"step {p}: eIoU max |diff| {stats['eiou_max_diff']:.2e} > {tol.eiou_bound(p):.1e}")
    if not stats["points_max_diff"] <= tol.points_atol:
        failures.append(f"step {p}: points max |diff| {stats['points_max_diff']:.3f} px > {tol.points_atol}")
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


if __name__ == "__main__":  # a helper module, not a script: say so instead of exiting 0 having done nothing
    raise SystemExit("_golden.py is a helper module (tests/test_reference.py, benchmarks/gpu.py), not a script")
