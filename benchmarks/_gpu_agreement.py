"""benchmarks/gpu.py: agreement of the device's results with the golden fixtures (float32) and of
bfloat16 with float32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _golden import step_failures, step_stats, video_sign_mismatch
from _gpu_sections import cuda_only, new_tracker, precision
from _gpu_util import VARIANT_MODELS, Ctx, get_model, make_frames, new_kwargs, sdpa_backend, tf32

# ----------------------------------------------------------------------------- agreement


def _fixture_frames(path: Path, meta: dict, size: int, count: int):
    from PIL import Image

    from entitysam.inference.preprocess import preprocess_frame

    return [(i, preprocess_frame(Image.open(path / "frames" / name), size))
            for i, name in enumerate(meta["frame_names"][:count])]


def make_tiny_fixture(ctx: Ctx) -> Path:
    """Smoke mode: a fixture in the golden layout made by the tiny model's own float32 run on the
    per-query path (the CPU reference): the comparison code runs, and with --batched it compares
    the batched path with the per-query one."""
    from PIL import Image

    from entitysam.inference.tracker import EntityTracker

    path = Path(ctx.args.cache_dir) / "golden-tiny"
    (path / "frames").mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(make_frames(ctx, 2)):
        names.append(f"{i:05d}.png")
        Image.fromarray(image).save(path / "frames" / names[-1])
    meta = dict(variant="tiny", weight_seed=ctx.args.seed, frame_names=names,
                out_size=[ctx.args.height, ctx.args.width])
    model = get_model(ctx, "tiny")
    arrays: dict[str, list] = {k: [] for k in ("lowres_logits_sub4", "lowres_sign_bits", "pred_eiou",
                                               "sampled_point_coords")}
    video = []
    with torch.inference_mode():
        tracker = EntityTracker(model, **new_kwargs(EntityTracker, "batched", False, old_behaviour=True))
        for s in tracker.track(_fixture_frames(path, meta, model.cfg.image_size, 2)):
            logits = s.mask_logits[:, 0].float().cpu().numpy()
            arrays["lowres_logits_sub4"].append(logits[:, ::4, ::4])
            arrays["lowres_sign_bits"].append(np.packbits(logits > 0, axis=-1))
            arrays["pred_eiou"].append(s.scores.cpu().numpy())
            arrays["sampled_point_coords"].append(s.points.cpu().numpy())
            if not s.is_warmup:
                up = F.interpolate(s.mask_logits.float().cpu(), size=tuple(meta["out_size"]), mode="bilinear",
                                   align_corners=False)[:, 0] > 0
                video.append(np.packbits(up.numpy(), axis=-1))
    np.savez(path / "golden.npz", video_sign_bits=np.stack(video), **{k: np.stack(v) for k, v in arrays.items()})
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def fixtures(ctx: Ctx) -> list[Path]:
    """The --golden fixtures whose model is among --models (smoke: a self-made tiny one)."""
    if ctx.args.smoke:
        return [make_tiny_fixture(ctx)]
    out = []
    for name in ctx.args.golden:
        path = Path(name) if Path(name).is_dir() else Path(ctx.args.reference_dir) / name  # a folder, or a name there
        meta = json.loads((path / "meta.json").read_text())
        if VARIANT_MODELS[meta["variant"]] in ctx.args.models:
            out.append(path)
    return out


def golden_one(ctx: Ctx, path: Path, allow_tf32: bool = False) -> dict:
    """float32 (TF32 off unless `allow_tf32`) on the device against the official float32 outputs
    of the fixture."""
    meta = json.loads((path / "meta.json").read_text())
    golden = dict(np.load(path / "golden.npz"))
    model = get_model(ctx, VARIANT_MODELS[meta["variant"]], meta["weight_seed"])
    frames = _fixture_frames(path, meta, model.cfg.image_size, ctx.args.golden_frames or len(meta["frame_names"]))
    rows, signs = [], {}
    with torch.inference_mode(), tf32(allow_tf32), sdpa_backend(ctx.args.sdpa_backend):
        _, attention_dtype = precision(ctx, model, torch.float32)  # its TF32 context is not entered
        for s in new_tracker(ctx, model, attention_dtype).track(frames):
            logits = s.mask_logits[:, 0].float().cpu().numpy()
            stats = step_stats(golden, s.step, logits, s.scores.cpu().numpy(), s.points.cpu().numpy())
            stats["failures"] = step_failures(stats)
            if not s.is_warmup:
                stats["video_sign_mismatch"] = video_sign_mismatch(golden, s.frame_index, s.mask_logits,
                                                                   meta["out_size"])
            rows.append(stats)
            signs[s.step] = (np.packbits(logits > 0, axis=-1), s.scores.cpu().numpy())
            ctx.log(f"golden {path.name}{' TF32' if allow_tf32 else ''} step {s.step}: within {stats['within_tolerance']:.5f}, sign mismatch "
                    f"{stats['sign_mismatch']:.1e}{' FAIL' if stats['failures'] else ''}")
            if ctx.left() < 0 and s.step >= model.cfg.num_warmup_copies:
                break
    if not allow_tf32:
        ctx.cache[("fp32", path.name)] = signs
    first_frame = model.cfg.num_warmup_copies + 1
    passed = len(rows) >= first_frame and not any(r["failures"] or r.get("video_sign_mismatch", 0) > 1e-3
                                                  for r in rows)
    return dict(passed=passed, steps_compared=len(rows), steps_in_fixture=len(meta["frame_names"]) + first_frame - 1,
                tf32=allow_tf32, batched=ctx.batched, steps=rows)


def golden(ctx: Ctx) -> dict:
    """Each fixture with TF32 off (the check), then, on CUDA and as information, with TF32 on (what
    `--dtype float32` runs there, as the official evaluation)."""
    paths = fixtures(ctx)
    out = {path.name: golden_one(ctx, path) for path in paths}
    for path in paths:
        if not ctx.cuda:
            out[path.name]["skipped"] = {"tf32_on": cuda_only(ctx)}
        elif ctx.left() > 0:
            out[path.name]["tf32_on"] = golden_one(ctx, path, allow_tf32=True)
    return out


def bf16(ctx: Ctx) -> dict:
    """bfloat16 autocast against float32 on the device (first fixture's frames): identical mask signs."""
    path = fixtures(ctx)[0]
    reference = ctx.cache.get(("fp32", path.name)) or (golden_one(ctx, path) and ctx.cache[("fp32", path.name)])
    meta = json.loads((path / "meta.json").read_text())
    gold = dict(np.load(path / "golden.npz"))
    model = get_model(ctx, VARIANT_MODELS[meta["variant"]], meta["weight_seed"])
    frames = _fixture_frames(path, meta, model.cfg.image_size, len(meta["frame_names"]))
    rows = []
    autocast, attention_dtype = precision(ctx, model, torch.bfloat16)
    with torch.inference_mode(), autocast, sdpa_backend(ctx.args.sdpa_backend):
        for s in new_tracker(ctx, model, attention_dtype).track(frames):
            if s.step not in reference:
                break
            bits = np.packbits(s.mask_logits[:, 0].float().cpu().numpy() > 0, axis=-1)
            fp32_bits, fp32_scores = reference[s.step]
            rows.append(dict(step=s.step,
                             identical_to_float32=1 - float(np.unpackbits(bits ^ fp32_bits, axis=-1).mean()),
                             identical_to_golden=1 - float(np.unpackbits(bits ^ gold["lowres_sign_bits"][s.step],
                                                                         axis=-1).mean()),
                             eiou_max_diff_to_float32=float(np.abs(s.scores.cpu().numpy() - fp32_scores).max())))
    mode = "memory attention only (CPU)" if attention_dtype is not None else "autocast over the whole model"
    return dict(fixture=path.name, min_identical_to_float32=min(r["identical_to_float32"] for r in rows),
                bfloat16=mode, steps=rows)


if __name__ == "__main__":  # a helper module, not a script: say so instead of exiting 0 having done nothing
    raise SystemExit("_gpu_agreement.py is a helper module of benchmarks/gpu.py: run python benchmarks/gpu.py --help")
