"""Per-step inference speed, per-part FLOPs and peak memory of EntitySAM on this machine.

    python benchmarks/inference.py --model vit-s --frames 6 --dtype float32 [--exact] [--json out.json]
    python benchmarks/inference.py --model tiny --frames 2 --threads 1 --matmul-size 256   # a quick check

Builds the model from `make_weights.py` weights (../shared/reference), runs the official
schedule on a generated clip (moving textured ellipses, 640x360) and prints, per part of the
step, the median time over steady steps, the FLOPs counted by torch's FlopCounterMode and the
achieved rate against this machine's matmul peak (measured after the run: a 4096^3 matmul,
--matmul-size, in the run's dtype and thread count; on the 2-vCPU EPYC of the issues ~185 GFLOP/s float32 and ~400
bfloat16 with torch 2.13). Also prints wall time per step, frames/s and peak RSS.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MANIFESTS = {"vit-s": "manifest-vits.json", "vit-l": "manifest-vitl.json"}


def make_clip(num_frames: int, height: int = 360, width: int = 640, seed: int = 0):
    """Moving, overlapping textured ellipses on a gradient: yields uint8 [H, W, 3] frames lazily."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([xx / width * 200, yy / height * 200, np.full_like(xx, 80)], axis=-1)
    shapes = [dict(c=rng.uniform([0, 0], [width, height]), v=rng.uniform(-12, 12, 2),
                   r=rng.uniform(25, 110, 2), col=rng.uniform(0, 255, 3)) for _ in range(6)]
    for t in range(num_frames):
        img = background.copy()
        for s in shapes:
            cx, cy = s["c"] + t * s["v"]
            inside = ((xx - cx) / s["r"][0]) ** 2 + ((yy - cy) / s["r"][1]) ** 2 <= 1
            texture = 30 * np.sin(xx[inside] / 7.0)[:, None]
            img[inside] = np.clip(s["col"] + texture, 0, 255)
        yield img.astype(np.uint8)


def _register_onednn_flops() -> None:
    """FlopCounterMode does not know oneDNN's linear (used for the attention products)."""
    from torch.utils.flop_counter import register_flop_formula

    try:
        op = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return

    @register_flop_formula(op)
    def _linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        rows = 1
        for d in x_shape[:-1]:
            rows *= d
        return 2 * rows * w_shape[0] * w_shape[1]


def build_model(name: str, seed: int):
    from entitysam.checkpoints import load_entitysam

    if name == "tiny":  # no published layout: seeded initialisation, queries spread apart
        from entitysam.config import get_config
        from entitysam.modeling.entitysam import EntitySAM

        torch.manual_seed(seed)
        model = EntitySAM(get_config("tiny")).eval()
        with torch.no_grad():  # distinct queries and offsets, so that entities survive the merge
            for key, p in model.named_parameters():
                if key.endswith(("queries.weight", "offset_embedding.weight", "point_embeddings.1.weight")):
                    p.normal_().mul_(3)
        return model

    ref = Path(ROOT.parent / "shared" / "reference")
    spec = importlib.util.spec_from_file_location("make_weights", ref / "make_weights.py")
    mw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mw)
    state = mw.make_state_dict(json.loads((ref / MANIFESTS[name]).read_text()), seed)
    return load_entitysam(state, name)


class PartTimer:
    """Wraps callables to accumulate wall time and FLOPs per named part within one step."""

    def __init__(self):
        self.time = defaultdict(float)
        self.flops = defaultdict(float)

    def wrap(self, name, fn):
        def wrapped(*args, **kwargs):
            with FlopCounterMode(display=False) as counter:
                start = time.perf_counter()
                out = fn(*args, **kwargs)
                self.time[name] += time.perf_counter() - start
            self.flops[name] += counter.get_total_flops()
            return out
        return wrapped

    def reset(self):
        self.time.clear()
        self.flops.clear()


def instrument(model, timer: PartTimer) -> None:
    import entitysam.modeling.entitysam as es
    import entitysam.inference.tracker as tracker

    model.image_encoder.forward = timer.wrap("image encoder", model.image_encoder.forward)
    model.dinov2_feature_extractor.forward = timer.wrap("dinov2", model.dinov2_feature_extractor.forward)
    model.memory_attention.forward = timer.wrap("memory attention", model.memory_attention.forward)
    model.encode_memory = timer.wrap("memory encoder", model.encode_memory)
    model.sam_mask_decoder.forward = timer.wrap("entity decoder", model.sam_mask_decoder.forward)
    es.sample_points = timer.wrap("prompt generator", es.sample_points)
    es.offset_attention = timer.wrap("prompt generator", es.offset_attention)
    tracker.fill_holes = timer.wrap("hole filling", tracker.fill_holes)

    # The memory attention runs its queries on worker threads, which FlopCounterMode (per thread)
    # does not see. Every query has the same shapes: query 0 runs on this thread, counted, and
    # stands for the others.
    import entitysam.modeling.memory as memory

    parallel = memory.for_each_query

    def for_each_query(fn, count, device):
        with FlopCounterMode(display=False) as counter:
            fn(0)
        timer.flops["memory attention"] += counter.get_total_flops() * (count - 1)
        parallel(lambda b: fn(b + 1), count - 1, device)

    memory.for_each_query = for_each_query


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(args) -> dict:
    from entitysam.inference.preprocess import preprocess_frame
    from entitysam.inference.tracker import EntityTracker

    from entitysam.inference.precision import precision_plan

    torch.set_num_threads(args.threads)
    _register_onednn_flops()
    model = build_model(args.model, args.seed)
    timer = PartTimer()
    instrument(model, timer)
    clip = make_clip(args.frames)
    # as `entitysam segment --dtype`: on CPU bfloat16 runs the memory attention only
    autocast, attention_dtype = precision_plan(model, getattr(torch, args.dtype))
    tracker = EntityTracker(model, attention_dtype=attention_dtype, exact=args.exact)
    frames = ((i, preprocess_frame(f, model.cfg.image_size)) for i, f in enumerate(clip))
    steps = []
    start = time.perf_counter()
    with autocast:
        it = tracker.track(frames)
        while True:
            timer.reset()
            t0 = time.perf_counter()
            try:
                result = next(it)
            except StopIteration:
                break
            elapsed = time.perf_counter() - t0
            steps.append(dict(step=result.step, memories=min(result.step, model.cfg.num_maskmem),
                              seconds=elapsed, parts=dict(timer.time), flops=dict(timer.flops)))
            print(f"step {result.step}: {elapsed:.1f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - start
    # steady steps: the ones with the most memory frames reached in this clip
    most = max(s["memories"] for s in steps)
    steady = [s for s in steps if s["memories"] == most and s["step"] > 0] or steps
    parts = sorted({p for s in steady for p in s["parts"]})
    table = []
    for part in parts:
        t = statistics.median(s["parts"].get(part, 0.0) for s in steady)
        f = statistics.median(s["flops"].get(part, 0.0) for s in steady)
        table.append(dict(part=part, seconds=t, gflop=f / 1e9,
                          gflops_per_s=(f / 1e9 / t) if t > 0 else 0.0))
    return dict(model=args.model, dtype=args.dtype, exact=args.exact, threads=args.threads, frames=args.frames,
                steps=len(steps), total_s=total, frames_per_s=args.frames / total,
                median_steady_step_s=statistics.median(s["seconds"] for s in steady),
                steady_memories=most, peak_rss_mb=peak_rss_mb(), parts=table, per_step=steps)


def matmul_peak_gflops(dtype: torch.dtype, n: int = 4096, repeats: int = 3) -> float:
    """Best rate of an n x n x n matmul in `dtype` (threads as set): the machine's practical peak."""
    a = torch.randn(n, n).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def print_table(res: dict) -> None:
    peak = res["matmul_peak_gflops"]
    print(f"\n{res['model']} {res['dtype']}{' exact' if res.get('exact') else ''} {res['threads']} threads: {res['frames']} frames, "
          f"{res['steps']} steps in {res['total_s']:.1f} s = {res['frames_per_s']:.4f} frames/s; "
          f"median steady step ({res['steady_memories']} memories) {res['median_steady_step_s']:.1f} s; "
          f"peak RSS {res['peak_rss_mb']:.0f} MB; matmul peak {peak:.0f} GFLOP/s")
    print(f"{'part':<20}{'s/step':>10}{'GFLOP':>12}{'GFLOP/s':>10}{'% of peak':>11}")
    for row in res["parts"]:
        print(f"{row['part']:<20}{row['seconds']:>10.2f}{row['gflop']:>12.1f}{row['gflops_per_s']:>10.1f}"
              f"{100 * row['gflops_per_s'] / peak:>10.1f}%")


def print_official_comparison(res: dict) -> None:
    """Per-step wall time against the official code on this machine (reference meta.json)."""
    meta_path = ROOT.parent / "shared" / "reference" / {"vit-s": "golden-vits", "vit-l": "golden-vitl"}.get(
        res["model"], "-") / "meta.json"
    if not meta_path.is_file():
        return
    official = json.loads(meta_path.read_text())["step_times_s"]
    ours = [s["seconds"] for s in res["per_step"]][: len(official)]
    if not ours:
        return
    print(f"\nper step vs the official code (float32, {meta_path.parent.name}/meta.json; a step's cost depends "
          "on its number of memories, not on the pixels)")
    print(f"{'step':>4}{'memories':>10}{'official s':>12}{'ours s':>10}{'speed-up':>10}")
    for i, (o, m) in enumerate(zip(official, ours)):
        print(f"{i:>4}{res['per_step'][i]['memories']:>10}{o:>12.1f}{m:>10.1f}{o / m:>9.2f}x")
    n = len(ours)
    print(f"{'all':>4}{'':>10}{sum(official[:n]):>12.1f}{sum(ours):>10.1f}{sum(official[:n]) / sum(ours):>9.2f}x"
          f"   (steps 0-{n - 1}; frame encoding and post-processing excluded on both sides)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit-s", choices=sorted(MANIFESTS) + ["tiny"])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--exact", action="store_true", help="the official order of operations (float32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--matmul-size", type=int, default=4096,
                        help="n of the n^3 matmul that measures the peak (default 4096; smaller: a quick check)")
    args = parser.parse_args()
    res = run(args)
    res["matmul_peak_gflops"] = matmul_peak_gflops(DTYPES[args.dtype], args.matmul_size)
    print_table(res)
    print_official_comparison(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
