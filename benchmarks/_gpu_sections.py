"""The measurements of benchmarks/gpu.py, one function per section (per model where it says so).

Each returns a JSON-ready dict. A measurement that needs CUDA is listed under "skipped" with the
reason on other devices; the code around it still runs (so that the CPU smoke run proves it).
"""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _golden import step_failures, step_stats, video_sign_mismatch
from _gpu_util import (VARIANT_MODELS, Ctx, SectionTimeout, batched_kwargs, count_flops, device_images, first_line,
                       get_model, make_frames, measure, new_kwargs, Probe, sdpa_backend, tf32, write_clip)

CUDA_ONLY = "CUDA only (device {})"
MIB = 1 << 20


def _skip(ctx: Ctx) -> str:
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
        out["skipped"] = {"gpu": _skip(ctx)}
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
            out.setdefault("skipped", {})["tf32"] = _skip(ctx)
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
        out["skipped"] = {"peak memory": _skip(ctx)}
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
        out["skipped"] = {"peak memory": _skip(ctx)}
        return out
    out.update(short_peak_mib=short["peak_allocated_mib"], full_peak_mib=full["peak_allocated_mib"],
               ratio=full["peak_allocated_mib"] / short["peak_allocated_mib"],
               short_reserved_mib=short["peak_reserved_mib"], full_reserved_mib=full["peak_reserved_mib"])
    ctx.log(f"memory {name}: {out['short_peak_mib']:.0f} MiB ({out['short_frames']} frames) vs "
            f"{out['full_peak_mib']:.0f} MiB ({out['full_frames']} frames)")
    return out


# ----------------------------------------------------------------------------- per part


def _row(ctx: Ctx, part: str, fn, wall: bool = False) -> dict:
    if ctx.left() < 0:
        return dict(part=part, skipped="section budget ran out")
    t = measure(ctx, fn, wall=wall)
    flops = count_flops(fn)
    return dict(part=part, gflop=flops / 1e9, tflops_per_s=flops / t["ms"] / 1e9 if flops else None, **t)


REST = "rest of the step (points, offset attention, prompts)"


def _step_rows(ctx: Ctx, model, frame, memories, points, kwargs: dict) -> list[dict]:
    """A whole step at 7 memories, and its parts timed inside it (events around the calls)."""
    call = lambda: model.step(frame, memories, points, **kwargs)  # noqa: E731
    total = _row(ctx, f"whole step, {len(memories)} memories", call)
    probe = Probe(ctx)
    parts = (("memory attention (in the step)", model, "condition_on_memory"),
             ("decoder", model.sam_mask_decoder, "forward"), ("memory encoder", model, "encode_memory"))
    times: dict[str, list[float]] = {}
    try:
        for label, owner, attr in parts:
            probe.wrap(owner, attr, label)
        probe.counting = True  # one pass counting FLOPs per part, then timed passes
        call()
        probe.counting = False
        call()
        probe.collect()
        for _ in range(total.get("reps", 0)):
            start = probe.mark()
            call()
            probe.pending.append(("step", start, probe.mark()))
            step = probe.collect()
            step[REST] = step["step"] - sum(ms for label, ms in step.items() if label != "step")
            for label, ms in step.items():
                times.setdefault(label, []).append(ms)
    finally:
        probe.close()
    rows = [total]
    for label, _, _ in parts:
        if label not in times:
            rows.append(dict(part=label, skipped="not called by EntitySAM.step on this path"))
            continue
        ms, flops = float(np.median(times[label])), probe.flops.get(label, 0)
        rows.append(dict(part=label, ms=ms, reps=len(times[label]), gflop=flops / 1e9,
                         tflops_per_s=flops / ms / 1e9 if flops else None))
    if REST in times:  # per repetition: the step between its events minus the parts inside it
        rest = float(np.median(times[REST]))
        flops = total["gflop"] - sum(r.get("gflop", 0.0) for r in rows[1:])
        rows.append(dict(part=REST, ms=rest, gflop=flops,
                         tflops_per_s=flops / rest if rest > 0 and flops > 0 else None))
    return rows


def parts(ctx: Ctx, name: str) -> dict:
    """Milliseconds and TFLOP/s of each part of a step (warm-up, median of --reps)."""
    from entitysam.inference.holes import fill_holes
    from entitysam.inference.offline_merge import merge_video_panoptic

    model = get_model(ctx, name)
    images = device_images(ctx, model, 2)
    rows = []
    with model_context(ctx, model) as attention_dtype:
        # the tracker's queries per batch (all, unless the device's free memory holds fewer)
        chunk = getattr(new_tracker(ctx, model, attention_dtype), "query_chunk", None)
        path = dict(**batched_kwargs(ctx, model.step), **({"query_chunk": chunk} if chunk else {}))
        attend = dict(attention_dtype=attention_dtype, **path)
        frame = model.encode_frame(images[0])
        first = model.step(frame, [], None, attention_dtype=attention_dtype, **path)
        memory = first.memory.to(torch.bfloat16)  # as the memory bank stores it
        memories = [(memory, r) for r in range(model.cfg.num_maskmem, 0, -1)]  # oldest first
        rows.append(_row(ctx, "encoders (Hiera + DINOv2)", lambda: model.encode_frame(images[1])))
        dino_input = F.interpolate(images[1], size=(model.cfg.dino_input_size,) * 2, mode="bilinear",
                                   align_corners=False)
        rows.append(_row(ctx, "  of which image encoder (Hiera + FPN)", lambda: model.image_encoder(images[1])))
        rows.append(_row(ctx, "  of which DINOv2", lambda: model.dinov2_feature_extractor(dino_input)))
        for k in (1, 3, model.cfg.num_maskmem):
            rows.append(_row(ctx, f"memory attention, {k} memories",
                             lambda k=k: model.condition_on_memory(frame, memories[-k:], **attend)))
        rows += _step_rows(ctx, model, frame, memories, first.points, attend)
        logits = first.mask_logits
        rows.append(_row(ctx, "hole filling", lambda: fill_holes(logits, model.cfg.fill_hole_area)))
    n = ctx.args.merge_frames
    video = logits[:, 0].float().cpu().unsqueeze(1).expand(-1, n, -1, -1).contiguous()  # the logit store is on the CPU
    scores = first.entity_scores.float().cpu()
    merge_kwargs = new_kwargs(merge_video_panoptic, "device", ctx.device, old_behaviour=True)
    row = _row(ctx, "merge, per frame", lambda: merge_video_panoptic(scores, video, (ctx.args.height, ctx.args.width),
                                                                      **merge_kwargs), wall=True)
    for key in ("ms", "ms_min"):
        if key in row:
            row[key] /= n
    row["merge_device"] = str(ctx.device) if merge_kwargs else "cpu (merge_video_panoptic has no device=)"
    rows.append(row)
    from entitysam.inference.precision import resolve_dtype

    dtype = str(resolve_dtype(ctx.args.dtype, ctx.device)).replace("torch.", "")
    peak_tflops = ctx.cache.get("peak", {}).get(dtype, {}).get("tflops")
    for r in rows:
        if peak_tflops and r.get("tflops_per_s"):
            r["percent_of_peak"] = 100 * r["tflops_per_s"] / peak_tflops
    return dict(rows=rows, dtype=dtype, peak_tflops=peak_tflops, batched=ctx.batched, query_chunk=chunk)


# ----------------------------------------------------------------------------- kernels


def kernels(ctx: Ctx, name: str) -> dict:
    """Device kernels, launch calls and host synchronisations of one step at 7 memories."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    model = get_model(ctx, name)
    images = device_images(ctx, model, 8)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    with model_context(ctx, model) as attention_dtype:
        tracker = filled_tracker(ctx, model, images, attention_dtype)
        t = tracker.step_index
        with profile(activities=activities, record_shapes=True) as prof:
            with record_function("benchmark_step"):
                tracker.step(t, images[t % len(images)])
            ctx.sync()
    events = list(prof.events())
    cpu = [e for e in events if e.device_type == DeviceType.CPU]
    step = next(e for e in cpu if e.name == "benchmark_step")
    inside = [e for e in cpu if step.time_range.start <= e.time_range.start and e.time_range.end <= step.time_range.end]
    out = dict(cpu_aten_ops=sum(e.name.startswith("aten::") for e in inside))
    if not ctx.cuda:
        out["skipped"] = {"kernels": _skip(ctx) + ": counted the step's aten operators instead"}
        return out
    device = [e for e in events if e.device_type == DeviceType.CUDA and e.name != "benchmark_step"
              and not getattr(e, "is_user_annotation", False)]
    kernels_ = [e for e in device if not e.name.startswith(("Memcpy", "Memset"))]
    names = Counter(e.name for e in inside)
    out.update(kernels=len(kernels_), memcpy=sum(e.name.startswith("Memcpy") for e in device),
               memset=sum(e.name.startswith("Memset") for e in device),
               launch_calls=sum(n for k, n in names.items() if "LaunchKernel" in k or "GraphLaunch" in k),
               host_syncs=sum(n for k, n in names.items() if "Synchronize" in k),
               blocking_memcpy_calls=names.get("cudaMemcpy", 0) + names.get("cuMemcpyDtoH_v2", 0),
               top_kernels=Counter(e.name[:120] for e in kernels_).most_common(12))
    busy: Counter = Counter()
    for e in kernels_:
        busy[e.name[:120]] += e.time_range.elapsed_us()
    out.update(kernel_ms=sum(busy.values()) / 1e3,
               top_kernels_by_time=[(k, round(us / 1e3, 3)) for k, us in busy.most_common(15)])
    try:  # the operators behind the kernels, with their shapes: where the step's time goes
        out["top_ops_by_device_time"] = prof.key_averages(group_by_input_shape=True).table(
            sort_by="device_time_total", row_limit=40, max_name_column_width=60, max_shapes_column_width=90)
    except Exception as err:  # noqa: BLE001 - older torch: the kernel table above still stands
        out["top_ops_by_device_time"] = f"unavailable: {first_line(err)}"
    ctx.log(f"kernels {name}: {out['kernels']} kernels ({out['kernel_ms']:.1f} ms busy), {out['host_syncs']} host "
            f"syncs per step; slowest: " + "; ".join(f"{k[:60]} {ms} ms" for k, ms in out["top_kernels_by_time"][:6]))
    return out


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
            out[path.name]["skipped"] = {"tf32_on": _skip(ctx)}
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


# ----------------------------------------------------------------------------- SDPA backends

BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")


def _kernel_names(ctx: Ctx, fn) -> list[str]:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        ctx.sync()
    return sorted({e.name[:100] for e in prof.events() if e.device_type == DeviceType.CUDA})


def sdpa(ctx: Ctx) -> dict:
    """The memory attention's cross-attention alone (batch = entity queries, one head): raw 64-d
    values with the value projection after the weighted sum, against values projected to 256-d
    first, per SDPA backend. FLOPs: 2*B*N*M*(C + Cv) for the attention, 2*rows*64*256 for the
    projection."""
    a = ctx.args
    batch, n, c, cv = (2, 64, 32, 16) if a.smoke else (a.sdpa_batch, 4096, 256, 64)
    if ctx.cuda:  # the math backend materialises [batch, 4096, 28672] scores: give it the cached blocks
        torch.cuda.empty_cache()
    rows, projection = [], []
    for dtype_name in a.sdpa_dtypes:
        dtype = getattr(torch, dtype_name)
        for k in a.sdpa_memories:
            m = k * n
            q = torch.randn(batch, 1, n, c, device=ctx.device, dtype=dtype)
            key = torch.randn(batch, 1, m, c, device=ctx.device, dtype=dtype)
            raw = torch.randn(batch, 1, m, cv, device=ctx.device, dtype=dtype)
            weight = torch.randn(c, cv, device=ctx.device, dtype=dtype) / cv**0.5
            values = {"raw 64-d values": raw, "projected 256-d values": raw @ weight.t()}
            after = torch.randn(batch, 1, n, cv, device=ctx.device, dtype=dtype)
            for label, rows_projected, x in (("raw 64-d values", batch * n, after),
                                             ("projected 256-d values", batch * m, raw)):
                t = measure(ctx, lambda x=x: x @ weight.t(), warmup=1)
                projection.append(dict(dtype=dtype_name, memories=k, values=label, ms=t["ms"],
                                       gflop=2 * rows_projected * cv * c / 1e9))
            for label, v in values.items():
                for backend in BACKENDS:
                    row = dict(dtype=dtype_name, memories=k, keys=m, values=label, backend=backend)
                    rows.append(row)
                    if ctx.left() < 0:
                        row["skipped"] = "section budget ran out"
                        continue
                    fn = lambda v=v, q=q, key=key: F.scaled_dot_product_attention(q, key, v)  # noqa: E731
                    try:
                        with warnings.catch_warnings(), sdpa_backend(backend):
                            warnings.simplefilter("ignore")
                            t = measure(ctx, fn, reps=min(ctx.args.reps, 5), warmup=1)
                            if backend == "auto" and ctx.cuda:
                                row["kernels"] = _kernel_names(ctx, fn)
                        flops = 2 * batch * n * m * (c + v.shape[-1])
                        row.update(t, tflops_per_s=flops / t["ms"] / 1e9)
                    except Exception as err:  # an unsupported backend / shape / dtype is a result
                        row["error"] = first_line(err)
                        if ctx.cuda:
                            torch.cuda.empty_cache()
            del q, key, raw, values, after
    return dict(batch=batch, queries=n, head_dim=c, raw_value_dim=cv, rows=rows, value_projection=projection)
