"""EntitySAM on one NVIDIA GPU: speed per part, steady and end-to-end frames/s, memory, kernel
launches, SDPA backends and agreement with the official float32 outputs, against the targets.

On a GPU box (one H100/H200-class GPU), from the repository root:

    pip install torch -e ".[test]"
    python benchmarks/gpu.py --json gpu.json

It needs ../shared/reference (make_weights.py, the manifests, golden-vits/golden-vitl; elsewhere:
--reference-dir), writes the generated weights (~4.6 GB) and clip into --cache-dir once, prints
progress and a table, and rewrites the JSON after every section (a killed run keeps what it did).
Every section runs in its own try/except under a time budget (--budget-s for the whole run,
shared out by weight; a watchdog stops a stuck section): the defaults finish in under 8 minutes.
Exit status 0: every section ran; 1: some section failed (see the JSON); 2: no CUDA device or a bad
command line. `--smoke` runs every section on the CPU with the tiny config in well under a minute.
Each row is explained in docs/gpu-benchmark.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _gpu_agreement as A  # noqa: E402
import _gpu_parts as P  # noqa: E402
import _gpu_sections as S  # noqa: E402
from _gpu_ab import ab_section  # noqa: E402
from _gpu_compile import compile_section  # noqa: E402
from _gpu_util import ROOT, Ctx, first_line, watchdog  # noqa: E402

# name -> (function, budget weight, per model): in priority order (a short budget drops the tail)
SECTIONS = {
    "env": (S.env, 2, False),
    "peak": (S.peak, 4, False),
    "models": (S.models, 15, True),
    "golden": (A.golden, 14, False),
    "steady": (S.steady, 6, True),
    "ab": (ab_section, 6, True),
    "e2e": (S.e2e, 12, True),
    "memory": (S.memory, 6, True),
    "parts": (P.parts, 9, True),
    "kernels": (P.kernels, 6, True),
    "bf16": (A.bf16, 6, False),
    "sdpa": (P.sdpa, 10, False),
    "compile": (compile_section, 10, True),
}
# Not in the default run: compiling both models takes minutes of its own (run it with --sections models,compile).
OPT_IN = ("compile",)
TARGET_FPS = {"vit-s": 20.0, "vit-l": 15.0}  # steady, bfloat16, 7 memories, one H200
TARGET_E2E_RATIO = 0.9
TARGET_MEMORY_RATIO = 1.05  # "flat": the whole clip's peak at most 5% above a third of it
GRACE_S = 20  # a section's watchdog fires this long after its budget (its own checks stop it first)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda (default), cuda:N, or cpu")
    p.add_argument("--models", default="vit-s,vit-l", help="comma-separated among vit-s, vit-l, tiny")
    p.add_argument("--sections", default=None,
                   help="comma-separated subset of: " + ", ".join(SECTIONS) + " (default: all but "
                        + ", ".join(OPT_IN) + "; --smoke: all)")
    p.add_argument("--frames", type=int, help="frames of the end-to-end clip (default 60; memory: a third vs all)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--quick", action="store_true", help="fewer repetitions, 30 frames, the first golden frame")
    p.add_argument("--smoke", action="store_true", help="CPU smoke run: tiny model, small clip, every section")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--batched", dest="batched", action="store_true", default=None,
                      help="all queries at once (default off the CPU)")
    mode.add_argument("--per-query", dest="batched", action="store_false", help="one query at a time")
    p.add_argument("--sdpa-backend", default="auto", choices=("auto", "flash", "efficient", "cudnn", "math"),
                   help="restrict the model's attention to one SDPA backend")
    p.add_argument("--dtype", default="auto", help="as `entitysam segment --dtype` (auto: bfloat16 on CUDA, float16 before Ampere)")
    p.add_argument("--formats", default="panoptic,entities,overlay", help="files the end-to-end run writes")
    p.add_argument("--reps", type=int, help="timed repetitions per measurement (default 10)")
    p.add_argument("--warmup", type=int, help="untimed calls before each measurement (default 2)")
    p.add_argument("--steady-steps", type=int, help="timed tracker steps (default 30)")
    p.add_argument("--ab-steps", type=int, help="timed steps per variant of the ab section (default 10)")
    p.add_argument("--merge-frames", type=int, default=8, help="frames per timed merge call")
    p.add_argument("--matmul-size", type=int, default=8192)
    p.add_argument("--golden", default="golden-vits,golden-vitl",
                   help="fixtures: names under --reference-dir or folders (e.g. tests/fixtures/reference/vits-854x480-5f)")
    p.add_argument("--golden-frames", type=int, help="leading fixture frames to compare (default all)")
    p.add_argument("--sdpa-batch", type=int, default=50, help="batch of the SDPA section (the entity queries)")
    p.add_argument("--sdpa-memories", default="1,3,7")
    p.add_argument("--sdpa-dtypes", default="bfloat16,float32")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode of the compile section (default: torch's; e.g. max-autotune-no-cudagraphs)")
    p.add_argument("--budget-s", type=float, help="whole-run time budget in seconds (default 400)")
    p.add_argument("--seed", type=int, default=1234, help="make_weights.py seed of the speed models")
    p.add_argument("--reference-dir", default=str(ROOT.parent / "shared" / "reference"))
    p.add_argument("--cache-dir", default=os.path.join(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")),
                                                       "entitysam-gpu-benchmark"))
    p.add_argument("--json", default="gpu-benchmark.json", help="where to write the results")
    args = p.parse_args(argv)
    apply_presets(args)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")
    try:
        device = torch.device(args.device)
    except (RuntimeError, TypeError):  # (torch's message lists every device type it knows)
        device = None
    if device is None or device.type not in ("cuda", "cpu"):
        p.error(f"--device must be cuda, cuda:N or cpu, not {args.device!r}")
    return args


def apply_presets(a: argparse.Namespace) -> None:
    """Defaults by mode: full (sized for 8 minutes on one H200), --quick, --smoke (CPU, tiny)."""
    if a.smoke:
        a.device = a.device or "cpu"
        a.models, a.width, a.height, a.matmul_size, a.merge_frames = "tiny", 160, 96, 256, 3
        a.sdpa_memories, a.sdpa_dtypes = "1,7", "float32"
    preset = dict(frames=6, reps=2, warmup=1, steady_steps=3, ab_steps=2, budget_s=120) if a.smoke else \
        dict(frames=30, reps=5, warmup=2, steady_steps=10, ab_steps=5, budget_s=240, golden_frames=1) if a.quick \
        else dict(frames=60, reps=10, warmup=2, steady_steps=30, ab_steps=10, budget_s=400)
    for key, value in preset.items():
        if getattr(a, key, None) is None:
            setattr(a, key, value)
    if a.quick and not a.smoke and a.sdpa_memories == "1,3,7":
        a.sdpa_memories, a.sdpa_dtypes = "1,7", "bfloat16"
    a.device = a.device or "cuda"
    a.models = [m for m in a.models.split(",") if m]
    if a.sections is None:
        a.sections = ",".join(name for name in SECTIONS if a.smoke or name not in OPT_IN)
    a.sections = [s for s in a.sections.split(",") if s]
    a.golden = [g for g in a.golden.split(",") if g]
    a.sdpa_memories = [int(k) for k in a.sdpa_memories.split(",")]
    a.sdpa_dtypes = [d for d in a.sdpa_dtypes.split(",") if d]


def run_sections(ctx: Ctx, write) -> dict:
    """Every unit (section, or section x model) in its own try/except and time budget; the JSON is
    rewritten after each."""
    units = [(name, model) for name in ctx.args.sections
             for model in (ctx.args.models if SECTIONS[name][2] else [None])]
    deadline = ctx.start + ctx.args.budget_s
    for i, (name, model) in enumerate(units):
        fn, weight, per_model = SECTIONS[name]
        entry = ctx.results.setdefault(name, {"status": "ok", "seconds": 0.0, "result": {}} if per_model
                                       else {"status": "ok", "seconds": 0.0})
        left = deadline - time.perf_counter()
        share = left * weight / sum(SECTIONS[n][1] for n, _ in units[i:])
        label = f"{name}" + (f" {model}" if model else "")
        if left < 5:
            record(entry, model, skipped=f"whole-run budget (--budget-s {ctx.args.budget_s:.0f}) spent")
            ctx.log(f"{label}: skipped (budget spent)")
            continue
        ctx.log(f"{label}: start (budget {share:.0f} s)")
        ctx.section_deadline = time.perf_counter() + share
        t0 = time.perf_counter()
        try:
            with watchdog(share + GRACE_S):
                result = fn(ctx, model) if per_model else fn(ctx)
            record(entry, model, result=result)
        except Exception as err:  # noqa: BLE001 - the benchmark goes on, the JSON says what failed
            record(entry, model, error=first_line(err), tb=traceback.format_exc(limit=8))
            ctx.log(f"{label}: ERROR {first_line(err)}")
            if ctx.cuda:
                torch.cuda.empty_cache()
        entry["seconds"] += time.perf_counter() - t0
        write()
    return ctx.results


def record(entry: dict, model, result=None, error=None, tb=None, skipped=None) -> None:
    """Store one unit's outcome. A section's status: error (every unit failed), partial (some
    failed), skipped (every unit skipped, with the reason), else ok (skipped models listed)."""
    if model is None:
        entry.update({k: v for k, v in dict(result=result, error=error, traceback=tb, skipped=skipped).items()
                      if v is not None})
        entry["status"] = "error" if error else "skipped" if skipped else "ok"
        return
    if result is not None:
        entry["result"][model] = result
    for key, value in (("errors", error), ("tracebacks", tb), ("skipped_models", skipped)):
        if value is not None:
            entry.setdefault(key, {})[model] = value
    errors, skipped = entry.get("errors", {}), entry.get("skipped_models", {})
    if errors:
        entry["status"] = "error" if not entry["result"] and not skipped else "partial"
    elif skipped and not entry["result"]:
        entry["status"], entry["skipped"] = "skipped", "; ".join(sorted(set(skipped.values())))
    else:
        entry["status"] = "ok"


def targets(ctx: Ctx) -> list[dict]:
    """The issue's targets next to the measured numbers (None: not measured)."""
    r = {k: v.get("result", {}) for k, v in ctx.results.items()}

    def target(name: str, value, threshold: str, ok) -> dict:
        return dict(target=name, value=value, threshold=threshold, passed=None if value is None else ok(value))

    out = []
    for model in ctx.args.models:
        if model in TARGET_FPS:
            out.append(target(f"{model} steady frames/s (bf16, 7 memories, H200)",
                              r.get("steady", {}).get(model, {}).get("frames_per_s"),
                              f">= {TARGET_FPS[model]:g}", lambda v, m=model: v >= TARGET_FPS[m]))
        out.append(target(f"{model} end-to-end / steady", r.get("e2e", {}).get(model, {}).get("ratio_to_steady"),
                          f">= {TARGET_E2E_RATIO}", lambda v: v >= TARGET_E2E_RATIO))
        out.append(target(f"{model} peak memory, whole clip / a third", r.get("memory", {}).get(model, {}).get("ratio"),
                          f"<= {TARGET_MEMORY_RATIO}", lambda v: v <= TARGET_MEMORY_RATIO))
    for name, g in (r.get("golden") or {}).items():
        out.append(dict(target=f"float32 (TF32 off) vs {name}", value=g.get("steps_compared"),
                        threshold="reference tolerances, steps compared", passed=g.get("passed")))
    return out


def fmt(v) -> str:
    return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def print_report(ctx: Ctx, report: dict) -> None:
    env = ctx.results.get("env", {}).get("result", {})
    print(f"\n== EntitySAM GPU benchmark: {env.get('gpu', ctx.device)} (capability {env.get('capability', '-')}), "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}, batched={ctx.batched}, sdpa={ctx.args.sdpa_backend}")
    peak = ctx.results.get("peak", {}).get("result") or {}
    print("matmul peak TFLOP/s: " + ", ".join(f"{k} {fmt(peak[k]['tflops'])}" for k in ("bfloat16", "float32", "tf32")
                                              if k in peak))
    for model, res in (ctx.results.get("parts", {}).get("result") or {}).items():
        print(f"\n{model} ({res['dtype']}, % of its matmul peak): part{'':<20}{'ms':>9}{'GFLOP':>9}{'TFLOP/s':>9}"
              f"{'% peak':>8}")
        for row in res["rows"]:
            print(f"  {row['part']:<52}{fmt(row.get('ms')):>9}{fmt(row.get('gflop')):>9}"
                  f"{fmt(row.get('tflops_per_s')):>9}{fmt(row.get('percent_of_peak')):>8}"
                  + (f"  ({row['skipped']})" if "skipped" in row else ""))
    for model, res in (ctx.results.get("ab", {}).get("result") or {}).items():
        print(f"\n{model} steady step with each speed switch turned the other way (ms/step, two rounds):")
        for label, row in res["rows"].items():
            print(f"  {label:<32}{', '.join(fmt(v) for v in row['ms_per_step']):<20}"
                  f"x{fmt(row.get('vs_committed'))} of as committed" + (f"  ({row['skipped']})" if "skipped" in row else ""))
    kern = ctx.results.get("kernels", {}).get("result") or {}
    for model, k in kern.items():
        print(f"{model}: {fmt(k.get('kernels'))} kernels, {fmt(k.get('launch_calls'))} launches, "
              f"{fmt(k.get('host_syncs'))} host syncs per steady step")
    for name, g in (ctx.results.get("golden", {}).get("result") or {}).items():
        worst = max(g["steps"], key=lambda r: r["sign_mismatch"], default=None)
        print(f"golden {name}: {'PASS' if g['passed'] else 'FAIL'}, {g['steps_compared']}/{g['steps_in_fixture']} steps"
              + (f", worst sign mismatch {worst['sign_mismatch']:.1e} (step {worst['step']})" if worst else "")
              + (f"; with TF32 on: {'PASS' if g['tf32_on']['passed'] else 'FAIL'}" if "tf32_on" in g else ""))
    bf16 = ctx.results.get("bf16", {}).get("result")
    if bf16:
        print(f"bfloat16 vs float32 ({bf16['fixture']}): min identical mask signs "
              f"{bf16['min_identical_to_float32']:.4%}")
    sdpa = ctx.results.get("sdpa", {}).get("result")
    if sdpa:
        print(f"\nSDPA cross-attention, batch {sdpa['batch']}, {sdpa['queries']} queries, ms per call "
              "(err: unsupported)")
        groups: dict = {}
        for r in sdpa["rows"]:
            groups.setdefault((r["dtype"], r["memories"], r["values"]), []).append(
                f"{r['backend']} {fmt(r['ms']) if 'ms' in r else 'err' if 'error' in r else '-'}")
        for (dtype, k, values), cells in groups.items():
            print(f"  {dtype:<9}{k} mem  {values:<24}" + ", ".join(cells))
    for model, c in (ctx.results.get("compile", {}).get("result") or {}).items():
        print(f"{model} --compile: {fmt(c['compiled']['frames_per_s'])} vs {fmt(c['eager']['frames_per_s'])} frames/s "
              f"eager ({fmt(c['speedup'])}x), compilation {fmt(c['compile_overhead_s'])} s, identical mask signs "
              f"{c['last_step_identical_signs']:.4%}")
    print(f"\n{'target':<52}{'measured':>10}  {'threshold':<40}verdict")
    for t in report["targets"]:
        verdict = "not measured" if t["passed"] is None else "PASS" if t["passed"] else "FAIL"
        print(f"{t['target']:<52}{fmt(t['value']):>10}  {t['threshold']:<40}{verdict}")
    print("\nsections: " + ", ".join(f"{k} {v['status']}" for k, v in ctx.results.items()))
    print(f"results: {ctx.args.json}")


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "torch built without CUDA" if torch.version.cuda is None else "no GPU visible to torch"
        print(f"no CUDA device: {why} (torch {torch.__version__}); run with --device cpu or on a GPU box",
              file=sys.stderr)
        return 2
    if device.type == "cuda" and device.index is not None:
        if device.index >= (count := torch.cuda.device_count()):
            print(f"no CUDA device {device}: this machine has {count} GPU(s) visible (cuda:0 .. cuda:{count - 1})",
                  file=sys.stderr)
            return 2
        # The timing events, empty_cache and the profiler act on the current device: make it the
        # one measured (events recorded on cuda:0 around work queued on cuda:1 time nothing).
        torch.cuda.set_device(device)
    if args.smoke:
        torch.set_num_threads(1)  # the tiny model is per-op overhead: threads only fight over cores
    ctx = Ctx(args, device)
    report = dict(args={k: v for k, v in vars(args).items()}, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  sections=ctx.results, targets=[])

    def write() -> None:
        try:
            report["targets"] = targets(ctx)
        except Exception as err:  # noqa: BLE001 - the measurements matter more than the summary
            report["targets"] = [dict(target="(summary failed)", value=None, threshold=first_line(err), passed=None)]
        report["elapsed_s"] = time.perf_counter() - ctx.start
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    run_sections(ctx, write)
    write()
    try:
        print_report(ctx, report)
    except Exception as err:  # noqa: BLE001
        print(f"could not print the table ({first_line(err)}); the results are in {args.json}")
    return 1 if any(v["status"] in ("error", "partial") for v in ctx.results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
