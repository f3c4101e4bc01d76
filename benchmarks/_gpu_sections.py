"""The whole-run measurements of benchmarks/gpu.py (environment, models, speed, memory), one
function per section (per model where it says so), and the helpers every section shares.
Per-part timings and kernels are in _gpu_parts.py, agreement with the fixtures in _gpu_agreement.py.

Each returns a JSON-ready dict. A measurement that needs CUDA is listed under "skipped" with the
reason on other devices; the code around it still runs (so that the CPU smoke run proves it).
"""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from _gpu_util import (VARIANT_MODELS, Ctx, SectionTimeout, batched_kwargs, device_images, first_line, get_model,
                       measure, new_kwargs, sdpa_backend, tf32, write_clip)

CUDA_ONLY = "CUDA only (device {})"
MIB = 1 << 20


def cuda_only(ctx: Ctx) -> str:
    """Why a CUDA-only measurement is skipped here."""
    return CUDA_ONLY.format(ctx.device.type)


def precision(ctx: Ctx, model, dtype: torch.dtype):
    """entitysam.inference.precision.precision_plan for the run's path: (context, memory-attention dtype)."""
    from entitysam.inference.precision import precision_plan

    return precision_plan(model, dtype, **new_kwargs(precision_plan, "batched", ctx.args.batched, old_behaviour=True))


@contextlib.contextmanager
def model_context(ctx: Ctx, model):
    """The precision `entitysam segment` uses for the run's --dtype (bfloat16 autocast on CUDA by
    default) and the --sdpa-backend restriction; yields the memory-attention dtype for CPU."""
    from entitysam.inference.precision import resolve_dtype

    autocast, attention_dtype = precision(ctx, model, resolve_dtype(ctx.args.dtype, ctx.device))
    with torch.inference_mode(), autocast, sdpa_backend(ctx.args.sdpa_backend):
        yield attention_dtype


def new_tracker(ctx: Ctx, model, attention_dtype=None):
    from entitysam.inference.tracker import EntityTracker

    return EntityTracker(model, attention_dtype=attention_dtype,
                         **batched_kwargs(ctx, EntityTracker, ctx.args.batched))


def filled_tracker(ctx: Ctx, model, images, attention_dtype):
    """A tracker that has run num_maskmem + 1 steps: its next step attends to a full memory bank."""
    tracker = new_tracker(ctx, model, attention_dtype)
    for i in range(model.cfg.num_maskmem + 1):
        tracker.step(i, images[i % len(images)])
    ctx.sync()
    return tracker


# ----------------------------------------------------------------------------- environment


def env(ctx: Ctx) -> dict:
    import entitysam

    out = dict(device=str(ctx.device), torch=torch.__version__, cuda_build=torch.version.cuda,
               cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
               python=platform.python_version(), entitysam=entitysam.__version__, entitysam_path=entitysam.__file__,
               cpu_threads=torch.get_num_threads(), batched=ctx.batched, sdpa_backend=ctx.args.sdpa_backend,
               dtype=ctx.args.dtype)
    if not ctx.cuda:
        out["skipped"] = {"gpu": cuda_only(ctx)}
        return out
    props = torch.cuda.get_device_properties(ctx.device)
    free, total = torch.cuda.mem_get_info(ctx.device)
    out.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
               memory_total_gib=total / 2**30, memory_free_gib=free / 2**30)
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        out["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        out["driver"] = f"unknown ({first_line(err)})"
    return out


def peak(ctx: Ctx) -> dict:
    """This device's practical matmul rate: n x n x n products, median of --reps."""
    n = ctx.args.matmul_size
    out = dict(n=n)
    for label, dtype, allow_tf32 in (("bfloat16", torch.bfloat16, False), ("float32", torch.float32, False),
                                     ("tf32", torch.float32, True)):
        if label == "tf32" and not ctx.cuda:
            out.setdefault("skipped", {})["tf32"] = cuda_only(ctx)
            continue
        a, b = (torch.randn(n, n, device=ctx.device, dtype=dtype) for _ in range(2))
        c = torch.empty_like(a)
        with tf32(allow_tf32):
            t = measure(ctx, lambda: torch.mm(a, b, out=c), warmup=ctx.args.warmup + 1)
        out[label] = dict(tflops=2 * n**3 / t["ms"] / 1e9, tflops_best=2 * n**3 / t["ms_min"] / 1e9, **t)
        ctx.log(f"matmul {label}: {out[label]['tflops']:.1f} TFLOP/s")
    ctx.cache["peak"] = out
    return out


def models(ctx: Ctx, name: str) -> dict:
    """Weights made once into the cache folder, loaded through entitysam.pipeline.loading.from_checkpoint."""
    t0 = time.perf_counter()
    model = get_model(ctx, name)
    out = {}
    if {"golden", "bf16"} & set(ctx.args.sections) and not ctx.args.smoke:  # their seeds too, ahead of time
        from _gpu_agreement import fixtures  # here: that module builds on this one

        try:
            for path in fixtures(ctx):
                meta = json.loads((path / "meta.json").read_text())
                if VARIANT_MODELS[meta["variant"]] == name:
                    get_model(ctx, name, meta["weight_seed"])
        except (OSError, ValueError, KeyError) as err:  # the golden section reports it again
            out["golden_weights_error"] = first_line(err)
    ctx.sync()
    out.update(load_s=time.perf_counter() - t0, parameters=sum(p.numel() for p in model.parameters()),
               config=model.cfg.name)
    if ctx.cuda:
        out["allocated_mib"] = torch.cuda.memory_allocated(ctx.device) / MIB
    return out


# ----------------------------------------------------------------------------- speed


def steady(ctx: Ctx, name: str) -> dict:
    """Tracker steps at a full memory bank on frames already on the device: clock around
    --steady-steps steps with one synchronisation at each end, after 3 x --warmup untimed ones."""
    model = get_model(ctx, name)
    images = device_images(ctx, model, 8)
    with model_context(ctx, model) as attention_dtype:
        tracker = filled_tracker(ctx, model, images, attention_dtype)
        # More untimed steps at the full bank: as the first heavy GPU work of a process this
        # section once read 114.6 ms a step where all later measurements read 93-95 (run 6).
        for _ in range(ctx.args.warmup * 3):
            tracker.step(tracker.step_index, images[tracker.step_index % len(images)])
        ctx.sync()
        start, steps = tracker.step_index, 0
        t0 = time.perf_counter()
        for t in range(start, start + ctx.args.steady_steps):
            tracker.step(t, images[t % len(images)])
            steps += 1
            if ctx.left() < 0:
                break
        ctx.sync()
        seconds = time.perf_counter() - t0
    out = dict(frames_per_s=steps / seconds, ms_per_step=seconds / steps * 1e3, steps=steps,
               memories=len(tracker.bank), batched=ctx.batched)
    ctx.log(f"steady {name}: {out['frames_per_s']:.2f} frames/s ({out['ms_per_step']:.1f} ms/step)")
    return out


def _segment_once(ctx: Ctx, model, name: str, max_frames: int | None) -> dict:
    """`entitysam.segment` on the generated mp4 and `save` of the --formats, timed together."""
    from entitysam.pipeline.segment import segment

    clip = write_clip(ctx, ctx.args.frames)
    kwargs = dict(dtype=ctx.args.dtype, **batched_kwargs(ctx, segment, ctx.args.batched))

    def on_frame(t: int) -> None:
        if ctx.left() < 0:
            raise SectionTimeout(f"section budget ran out after {t + 1} frames")

    import entitysam.inference.video as video

    merge, merge_s = video.merge_video_panoptic, []

    def timed_merge(*args, **kw):  # the video-level merge runs after tracking (offline mode)
        t = time.perf_counter()
        try:
            return merge(*args, **kw)
        finally:
            merge_s.append(time.perf_counter() - t)

    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    t0 = time.perf_counter()
    video.merge_video_panoptic = timed_merge
    try:
        with sdpa_backend(ctx.args.sdpa_backend):
            with segment(model, clip, max_frames=max_frames, on_frame=on_frame, **kwargs) as result:
                folder = result.save(Path(ctx.args.cache_dir) / "out" / name, formats=ctx.args.formats,
                                     overwrite=True)
                frames, entities, timings = len(result), len(result.entities), dict(result.timings)
    finally:
        video.merge_video_panoptic = merge
    seconds = time.perf_counter() - t0
    out = dict(frames=frames, seconds=seconds, frames_per_s=frames / seconds, segment_s=timings.get("segment"),
               merge_s=sum(merge_s), write_s=timings.get("write"), entities=entities, output=str(folder),
               panoptic_pngs=len(list((folder / "panoptic").glob("*.png"))))
    if ctx.cuda:
        out["peak_allocated_mib"] = torch.cuda.max_memory_allocated(ctx.device) / MIB
        out["peak_reserved_mib"] = torch.cuda.max_memory_reserved(ctx.device) / MIB
    else:
        out["skipped"] = {"peak memory": cuda_only(ctx)}
    return out


def e2e(ctx: Ctx, name: str) -> dict:
    """The whole `entitysam segment` path (decode, preprocess, track, merge, write files) after an
    untimed warm-up on a few frames; frames/s against the steady rate."""
    model = get_model(ctx, name)
    if ctx.cuda:  # kernel selection, cuDNN plans, allocator pools
        _segment_once(ctx, model, name, max_frames=min(ctx.args.frames, 8))
    out = _segment_once(ctx, model, name, max_frames=None)
    ctx.cache[("e2e", name)] = out
    rate = ctx.results.get("steady", {}).get("result", {}).get(name, {}).get("frames_per_s")
    if rate:
        out["steady_frames_per_s"] = rate
        out["ratio_to_steady"] = out["frames_per_s"] / rate
    else:
        out.setdefault("skipped", {})["ratio_to_steady"] = "no steady result for this model"
    ctx.log(f"end-to-end {name}: {out['frames']} frames in {out['seconds']:.1f} s = {out['frames_per_s']:.2f} frames/s "
            f"(merge {out['merge_s']:.2f} s, writing {out['write_s'] or 0:.2f} s)")
    return out


def memory(ctx: Ctx, name: str) -> dict:
    """Peak device memory of the end-to-end run on a third of the clip against the whole clip."""
    model = get_model(ctx, name)
    short = _segment_once(ctx, model, name, max_frames=max(2, ctx.args.frames // 3))
    full = ctx.cache.get(("e2e", name)) or _segment_once(ctx, model, name, max_frames=None)
    out = dict(short_frames=short["frames"], full_frames=full["frames"])
    if not ctx.cuda:
        out["skipped"] = {"peak memory": cuda_only(ctx)}
        return out
    out.update(short_peak_mib=short["peak_allocated_mib"], full_peak_mib=full["peak_allocated_mib"],
               ratio=full["peak_allocated_mib"] / short["peak_allocated_mib"],
               short_reserved_mib=short["peak_reserved_mib"], full_reserved_mib=full["peak_reserved_mib"])
    ctx.log(f"memory {name}: {out['short_peak_mib']:.0f} MiB ({out['short_frames']} frames) vs "
            f"{out['full_peak_mib']:.0f} MiB ({out['full_frames']} frames)")
    return out


if __name__ == "__main__":  # a helper module, not a script: say so instead of exiting 0 having done nothing
    raise SystemExit("_gpu_sections.py is a helper module of benchmarks/gpu.py: run python benchmarks/gpu.py --help")
