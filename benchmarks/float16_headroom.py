"""float16 (and bfloat16) on the batched (device) path against float32, with CUDA autocast's dtype
rules emulated on the CPU (tests/cuda_autocast.py, products in float32 and rounded as a GPU's).

    python benchmarks/float16_headroom.py --model vit-s [--frames 2] [--size 640x360]
                                          [--dtypes float32,bfloat16,float16] [--steps N] [--json out.json]

vit-s / vit-l: `make_weights.py` weights (seed 1234 / 4321) on the reference clip's frames
(resized to --size first); demo: the bundled demo model on a generated demo scene at --size.
Every dispatched operation's floating-point output is checked: per module, the largest |value|
(float16 overflows past 65504) and how many outputs held inf / NaN, and the first operation that
made a non-finite value from finite inputs. Per step: the fraction of low-res mask pixels whose
sign equals float32's, the largest eIoU and point differences.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
sys.path.insert(0, str(ROOT / "tests"))

FLOAT16_MAX = 65504.0


class Recorder(TorchDispatchMode):
    """Largest |output| and non-finite outputs of every operation, per module (forward hooks)."""

    def __init__(self, model: torch.nn.Module, depth: int = 3):
        super().__init__()
        self.names = {id(m): n for n, m in model.named_modules()}
        self.stack: list[str] = ["(step)"]
        self.depth = depth
        self.max_abs: dict[str, float] = defaultdict(float)
        self.max_abs_op: dict[str, float] = defaultdict(float)  # "module op"
        self.max_abs_low: dict[str, float] = defaultdict(float)  # outputs held in float16 / bfloat16
        self.nonfinite: dict[str, int] = defaultdict(int)
        self.first_source: dict | None = None
        self.step = -1
        self.hooks = []

    def __enter__(self):
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        def pre(module, args):
            name = self.names.get(id(module))
            if name:
                self.stack.append(".".join(name.split(".")[: self.depth]))

        def post(module, args, out):
            if self.names.get(id(module)):
                self.stack.pop()

        self.hooks = [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if "empty" in func.__name__ or func.is_view:  # uninitialised memory (written later), or no new value
            return out
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for t in outs:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and t.device.type == "cpu":
                where = self.stack[-1]
                m = t.abs().amax()  # inf or NaN if any value is (no full-size mask then: big tensors)
                if not bool(torch.isfinite(m)):
                    finite = torch.isfinite(t)
                    self.nonfinite[where] += 1
                    inputs_finite = all(bool(torch.isfinite(a).all()) for a in _tensors(args, kwargs))
                    if inputs_finite and self.first_source is None:
                        self.first_source = dict(step=self.step, module=where, op=str(func), dtype=str(t.dtype),
                                                 shape=list(t.shape), count=int((~finite).sum()))
                    m = t[finite].abs().max() if bool(finite.any()) else torch.tensor(0.0)
                self.max_abs[where] = max(self.max_abs[where], float(m))
                key = f"{where} {func.overloadpacket}"
                self.max_abs_op[key] = max(self.max_abs_op[key], float(m))
                if t.dtype in (torch.float16, torch.bfloat16):
                    self.max_abs_low[where] = max(self.max_abs_low[where], float(m))
        return out


def _tensors(args, kwargs):
    for a in list(args) + list((kwargs or {}).values()):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, torch.Tensor) and t.is_floating_point())


def load(model_name: str, size: tuple[int, int], frames: int):
    from PIL import Image

    from entitysam.checkpoints import load_entitysam
    from entitysam.inference.preprocess import preprocess_frame

    if model_name == "demo":
        from entitysam.data.synthetic.scenes import render_demo_scene
        from entitysam.pipeline.loading import from_pretrained

        model = from_pretrained("demo")
        images, _ = render_demo_scene(np.random.default_rng([2025, 9]), frames, size[1], size[0])
        pictures = [Image.fromarray(im) for im in images]
    else:
        import importlib.util

        spec = importlib.util.spec_from_file_location("make_weights", REFERENCE / "make_weights.py")
        mw = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mw)
        variant, seed = {"vit-s": ("vits", 1234), "vit-l": ("vitl", 4321)}[model_name]
        manifest = json.loads((REFERENCE / f"manifest-{variant}.json").read_text())
        model = load_entitysam(mw.make_state_dict(manifest, seed))
        folder = REFERENCE / f"golden-{variant}" / "frames"
        names = sorted(folder.iterdir())[:frames]
        pictures = [Image.open(p).convert("RGB").resize(size) for p in names]
    return model.eval(), [(i, preprocess_frame(p, model.cfg.image_size)) for i, p in enumerate(pictures)]


def run(model, frames, dtype: torch.dtype, max_steps: int | None = None):
    from cuda_autocast import CudaAutocast

    from entitysam.inference.precision import memory_dtype_for
    from entitysam.inference.tracker import EntityTracker

    import entitysam.inference.tracker as tracker_module

    recorder = Recorder(model)
    fill_holes = tracker_module.fill_holes

    def labelled_fill_holes(*a, **k):  # its labelling works with -inf on purpose
        recorder.stack.append("(hole filling)")
        try:
            return fill_holes(*a, **k)
        finally:
            recorder.stack.pop()

    tracker_module.fill_holes = labelled_fill_holes
    tracker = EntityTracker(model, batched=True, memory_dtype=memory_dtype_for(dtype))
    steps, seconds = [], []
    autocast = CudaAutocast(dtype, float32_products=True) if dtype != torch.float32 else None
    if autocast is not None:
        autocast.__enter__()
    try:
        with recorder:
            it = tracker.track(frames)
            while max_steps is None or len(steps) < max_steps:
                recorder.step = tracker.step_index
                start = time.perf_counter()
                try:
                    steps.append(next(it))
                except StopIteration:
                    break
                seconds.append(time.perf_counter() - start)
                print(f"  {dtype} step {len(steps) - 1}: {seconds[-1]:.1f} s", flush=True)
    finally:
        tracker_module.fill_holes = fill_holes
        if autocast is not None:
            autocast.__exit__(None, None, None)
    return steps, recorder, seconds


def compare(ref, got) -> list[dict]:
    rows = []
    for a, b in zip(ref, got):
        la, lb = a.mask_logits.float(), b.mask_logits.float()
        rows.append(dict(step=a.step, finite=bool(torch.isfinite(lb).all() and torch.isfinite(b.scores).all()
                                                  and torch.isfinite(b.points).all()),
                         identical_mask_pixels=float(((la > 0) == (lb > 0)).float().mean()),
                         eiou_max_diff=float((a.scores - b.scores.float()).abs().max()),
                         points_max_diff=float((a.points - b.points.float()).abs().max()),
                         logits_max_abs=float(lb[torch.isfinite(lb)].abs().max())))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("vit-s", "vit-l", "demo"), default="vit-s")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--steps", type=int, help="stop after this many steps (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # dispatch modes are per thread
    w, h = (int(v) for v in args.size.split("x"))
    model, frames = load(args.model, (w, h), args.frames)
    report = dict(model=args.model, size=args.size, frames=args.frames, torch=torch.__version__, runs={})
    results = {}
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        steps, rec, seconds = run(model, frames, dtype, args.steps)
        results[name] = steps
        worst = max(v for k, v in rec.max_abs.items() if k != "(hole filling)")
        report["runs"][name] = dict(seconds=seconds, max_abs=dict(sorted(rec.max_abs.items())),
                                    max_abs_per_op=dict(sorted(rec.max_abs_op.items())),
                                    max_abs_low_precision=dict(sorted(rec.max_abs_low.items())),
                                    max_abs_overall=worst, headroom_vs_float16_max=FLOAT16_MAX / worst,
                                    nonfinite_outputs=dict(rec.nonfinite), first_nonfinite_source=rec.first_source)
        print(f"{name}: largest |output| {worst:.4g} ({FLOAT16_MAX / worst:.3g}x below 65504); "
              f"non-finite outputs {dict(rec.nonfinite) or 0}; first source {rec.first_source}", flush=True)
        for module, m in sorted(rec.max_abs_op.items(), key=lambda kv: -kv[1])[:10]:
            print(f"    {module:70s} {m:12.4g}")
        if rec.max_abs_low:
            low = max(rec.max_abs_low.values())
            print(f"  largest |value| held in {name}: {low:.4g} ({FLOAT16_MAX / low:.3g}x below 65504); per module:")
            for module, m in sorted(rec.max_abs_low.items(), key=lambda kv: -kv[1])[:10]:
                print(f"    {module:70s} {m:12.4g}")
        if name != "float32" and "float32" in results:
            rows = compare(results["float32"], steps)
            report["runs"][name]["vs_float32"] = rows
            for r in rows:
                print(f"    step {r['step']}: finite {r['finite']}, identical mask pixels "
                      f"{r['identical_mask_pixels']:.4%}, eIoU max diff {r['eiou_max_diff']:.4f}, "
                      f"points max diff {r['points_max_diff']:.2f} px, max |logit| {r['logits_max_abs']:.4g}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
