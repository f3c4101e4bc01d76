"""benchmarks/gpu.py: where a step's time goes (per part, per kernel) and which attention kernel is fastest."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from _gpu_sections import cuda_only, filled_tracker, model_context, new_tracker
from _gpu_util import Ctx, Probe, batched_kwargs, count_flops, device_images, first_line, get_model, measure, new_kwargs, \
    sdpa_backend

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
        out["skipped"] = {"kernels": cuda_only(ctx) + ": counted the step's aten operators instead"}
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


if __name__ == "__main__":  # a helper module, not a script: say so instead of exiting 0 having done nothing
    raise SystemExit("_gpu_parts.py is a helper module of benchmarks/gpu.py: run python benchmarks/gpu.py --help")
