"""The `compile` section of benchmarks/gpu.py: is `entitysam segment --compile` worth it here?

A torch.compile'd copy of the model (`entitysam.compile_model`, the flag's code) against the eager
model, on the same frames and path: the seconds of the first num_maskmem + 1 steps (where the
compilation happens, one graph per memory count), steady frames/s both ways, and how far the
compiled kernels move the last step's masks. (What `compile_model` compiles changed: the four heavy
modules until run 6, where they measured 0.69x eager; the memory encoder's fusion since, which
the `ab` section measured 12-14% faster per step.)
"""

from __future__ import annotations

import copy
import time

import torch

from _gpu_sections import model_context, new_tracker
from _gpu_util import Ctx, device_images, get_model


def _run(ctx: Ctx, model, images) -> dict:
    """Fill the memory bank (timed: compilation happens here), then --steady-steps timed steps."""
    with model_context(ctx, model) as attention_dtype:
        t0 = time.perf_counter()
        tracker = new_tracker(ctx, model, attention_dtype)
        for i in range(model.cfg.num_maskmem + 1):  # one graph per memory count: logged as they come
            t = time.perf_counter()
            tracker.step(i, images[i % len(images)])
            ctx.sync()
            ctx.log(f"  step {i} ({len(tracker.bank)} memories after it): {time.perf_counter() - t:.1f} s")
        fill_s = time.perf_counter() - t0
        start = tracker.step_index
        t0 = time.perf_counter()
        for t in range(start, start + ctx.args.steady_steps):
            last = tracker.step(t, images[t % len(images)])
        ctx.sync()
        seconds = time.perf_counter() - t0
    return dict(first_steps_s=fill_s, frames_per_s=ctx.args.steady_steps / seconds,
                ms_per_step=seconds / ctx.args.steady_steps * 1e3, logits=last.mask_logits.float())


def compile_section(ctx: Ctx, name: str) -> dict:
    from entitysam.inference import compiled

    batched = ctx.args.batched
    if ctx.args.smoke:  # graph capture without code generation, on the device path: the wiring in seconds
        compiled.BACKEND, ctx.args.batched = "eager", True
    try:
        return _compare(ctx, name, compiled)
    finally:
        ctx.args.batched = batched


def _compare(ctx: Ctx, name: str, compiled) -> dict:
    model = get_model(ctx, name)
    images = device_images(ctx, model, 8)
    eager = _run(ctx, model, images)
    ctx.log(f"compile {name}: eager {eager['frames_per_s']:.2f} frames/s; compiling (mode {ctx.args.compile_mode})")
    copy_ = compiled.compile_model(copy.deepcopy(model), mode=ctx.args.compile_mode)
    try:
        comp = _run(ctx, copy_, images)
    finally:
        del copy_
        torch._dynamo.reset()  # noqa: SLF001 - frees the graphs (and their memory) before the next section
    a, b = eager.pop("logits"), comp.pop("logits")
    out = dict(mode=ctx.args.compile_mode, backend=str(compiled.BACKEND), batched=ctx.batched, eager=eager,
               compiled=comp, speedup=comp["frames_per_s"] / eager["frames_per_s"],
               compile_overhead_s=comp["first_steps_s"] - eager["first_steps_s"],
               last_step_max_abs_diff=(a - b).abs().max().item(),
               last_step_identical_signs=((a > 0) == (b > 0)).float().mean().item())
    ctx.log(f"compile {name}: {comp['frames_per_s']:.2f} frames/s ({out['speedup']:.2f}x eager), compilation "
            f"{out['compile_overhead_s']:.0f} s, identical mask signs {out['last_step_identical_signs']:.4%}")
    return out


if __name__ == "__main__":  # a helper module, not a script: say so instead of exiting 0 having done nothing
    raise SystemExit("_gpu_compile.py is a helper module of benchmarks/gpu.py: run python benchmarks/gpu.py --help")
