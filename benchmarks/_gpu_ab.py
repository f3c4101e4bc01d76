"""The `ab` section of benchmarks/gpu.py: what each speed switch of the batched path is worth.

The steady step with every switch as committed, and with each one turned the other way, side by
side in one process (same weights, frames and full memory bank), in two rounds so that a drift of
the GPU's clocks shows as a difference between rounds rather than between variants:

* `weights cast at every step`: the tracker's steps in inference mode, where autocast does not keep
  the bfloat16 copy of each weight (`EntityTracker._no_grad` explains it);
* `keys projected at every step`: `EntityTracker(keep_keys=False)` (`MemoryKeys` explains it);
* `cuDNN autotuning flipped`: `precision.CUDNN_AUTOTUNE` the other way;
* `all flipped`: the three together (about the code before these switches existed);
* `memory encoder compiled`: `torch.compile` of `MemoryEncoder.fuse` alone (mask downsampler,
  fuser, projection: elementwise passes over 50 full-resolution maps that inductor fuses),
  compiled during the untimed filling steps: what `--compile` does (`inference/compiled.py`).
"""

from __future__ import annotations

import contextlib
import time

import torch

from _gpu_sections import model_context
from _gpu_util import Ctx, batched_kwargs, device_images, get_model


@contextlib.contextmanager
def _autotune_flipped():
    from entitysam.inference import precision

    before = precision.CUDNN_AUTOTUNE
    precision.CUDNN_AUTOTUNE = not before
    try:
        yield
    finally:
        precision.CUDNN_AUTOTUNE = before


@contextlib.contextmanager
def _memory_encoder_compiled(model, backend: str):
    encoder = model.memory_encoder
    encoder.fuse = torch.compile(encoder.fuse, dynamic=False, backend=backend)  # an instance attribute
    try:
        yield
    finally:
        del encoder.fuse
        torch._dynamo.reset()  # noqa: SLF001


# label -> (casts weights every step, keeps keys, flips cuDNN autotuning, compiles the memory encoder)
VARIANTS = {
    "as committed": (False, None, False, False),
    "weights cast at every step": (True, None, False, False),
    "keys projected at every step": (False, False, False, False),
    "cuDNN autotuning flipped": (False, None, True, False),
    "all flipped": (True, False, True, False),
    "memory encoder compiled": (False, None, False, True),
}


def _steady_ms(ctx: Ctx, model, images, cast_every_step: bool, keep_keys, flip_autotune: bool,
               compile_memory_encoder: bool) -> dict:
    from entitysam.inference.tracker import EntityTracker

    steps = ctx.args.ab_steps
    with _autotune_flipped() if flip_autotune else contextlib.nullcontext(), \
            _memory_encoder_compiled(model, "eager" if ctx.args.smoke else "inductor") if compile_memory_encoder \
            else contextlib.nullcontext(), \
            model_context(ctx, model) as attention_dtype:
        extra = {} if keep_keys is None else {"keep_keys": keep_keys}
        tracker = EntityTracker(model, attention_dtype=attention_dtype, **batched_kwargs(ctx, EntityTracker), **extra)
        if cast_every_step:
            tracker._no_grad = torch.inference_mode  # the steps as before the switch
        for i in range(model.cfg.num_maskmem + 3):  # a full bank, and two steps more to warm up
            tracker.step(i, images[i % len(images)])
        ctx.sync()
        start = tracker.step_index
        t0 = time.perf_counter()
        for t in range(start, start + steps):
            tracker.step(t, images[t % len(images)])
        ctx.sync()
        seconds = time.perf_counter() - t0
    return dict(ms_per_step=seconds / steps * 1e3, steps=steps, keep_keys=tracker.keep_keys)


def ab_section(ctx: Ctx, name: str) -> dict:
    model = get_model(ctx, name)
    images = device_images(ctx, model, 8)
    rows: dict[str, dict] = {label: dict(ms_per_step=[]) for label in VARIANTS}
    for round_ in range(2):
        for label, switches in VARIANTS.items():
            if label == "memory encoder compiled" and not (ctx.cuda or ctx.args.smoke):
                rows[label]["skipped"] = "CUDA only (inductor builds C++ for minutes on a CPU)"
                continue
            if ctx.left() < 0:
                rows[label].setdefault("skipped", f"section budget ran out in round {round_ + 1}")
                continue
            got = _steady_ms(ctx, model, images, *switches)
            rows[label]["ms_per_step"].append(got["ms_per_step"])
            rows[label]["keep_keys"] = got["keep_keys"]
            ctx.log(f"ab {name} round {round_ + 1}: {label}: {got['ms_per_step']:.1f} ms/step")
    base = min(rows["as committed"]["ms_per_step"], default=None)
    for row in rows.values():
        if row["ms_per_step"]:
            row["best_ms"] = min(row["ms_per_step"])
            row["vs_committed"] = row["best_ms"] / base if base else None
    return dict(rows=rows, cudnn_autotune_committed=_committed_autotune(), steps=ctx.args.ab_steps)


def _committed_autotune() -> bool:
    from entitysam.inference import precision

    return bool(getattr(precision, "CUDNN_AUTOTUNE", False))


if __name__ == "__main__":  # a helper module, not a script: say so instead of exiting 0 having done nothing
    raise SystemExit("_gpu_ab.py is a helper module of benchmarks/gpu.py: run python benchmarks/gpu.py --help")
