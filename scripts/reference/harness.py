"""Differential harness: the official EntitySAM code and this project on the same frames, same
weights, same threads, on this machine. See scripts/reference/README.md.

    python scripts/reference/harness.py check --frames DIR [--steps K] [--threads 2]
    python scripts/reference/harness.py official --frames DIR --out official.npz [--steps K]
    python scripts/reference/harness.py ours --mode exact --frames DIR --out exact.npz [--steps K]
    python scripts/reference/harness.py compare A.npz B.npz
    python scripts/reference/harness.py against-fixture RUN.npz FIXTURE_DIR
    python scripts/reference/harness.py write-fixture --run official.npz --frames DIR --out FIXTURE_DIR
    python scripts/reference/harness.py machine

Each run is its own process (a run of the official ViT-S model peaks at ~8 GB; torch's thread
count is fixed before any work). Runs are saved as .npz (full 256x256 low-res logits of every
step) so that an expensive official run is made once and compared many times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "benchmarks"))

import aten_trace  # noqa: E402
import fixture_writer  # noqa: E402
import machine  # noqa: E402
import official  # noqa: E402
from runs import load_run, save_run  # noqa: E402  (tests read runs through harness)

LOGIT_ATOL, LOGIT_RTOL = 0.05, 0.03  # README of shared/reference: |a-b| <= 0.05 + 0.03 |ref|


def reference_dir() -> Path:
    """shared/reference (make_weights.py, manifests): ENTITYSAM_SHARED_DIR or beside the repository."""
    return Path(os.environ.get("ENTITYSAM_SHARED_DIR", REPO.parent / "shared")) / "reference"


def make_state_dict(variant: str, seed: int) -> dict:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_weights", reference_dir() / "make_weights.py")
    if spec is None or not (reference_dir() / "make_weights.py").exists():
        raise SystemExit(f"error: {reference_dir() / 'make_weights.py'} is missing (set ENTITYSAM_SHARED_DIR)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    manifest = json.loads((reference_dir() / f"manifest-{variant}.json").read_text())
    return module.make_state_dict(manifest, seed)


# ---------------------------------------------------------------------------------- the two runs

def run_official(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "weights.pth"
        torch.save({"model": make_state_dict(args.variant, args.seed)}, checkpoint)
        start = time.time()
        info = {"who": "official", "variant": args.variant, "seed": args.seed, "frames": str(args.frames),
                "machine": machine.machine_record(args.threads)}
        partial = Path(args.out).with_suffix(".partial.npz")
        arrays = official.run(Path(args.frames), args.variant, checkpoint, args.steps,
                              on_step=lambda a: save_run(partial, a, dict(info, partial=True)),
                              recording=aten_trace.recording)
    save_run(Path(args.out), arrays, dict(info, total_s=round(time.time() - start, 1)))
    partial.unlink(missing_ok=True)


def run_ours(args) -> None:
    """This project through its public API: load_entitysam, preprocess_frame, EntityTracker
    (the tracker segment_video drives), mean_step_scores + merge_video_panoptic for a whole clip."""
    import torch
    from PIL import Image

    from entitysam.checkpoints import load_entitysam
    from entitysam.inference.offline_merge import merge_video_panoptic
    from entitysam.inference.preprocess import preprocess_frame
    from entitysam.inference.merge_rules import mean_step_scores
    from entitysam.inference.tracker import EntityTracker

    torch.set_num_threads(args.threads)
    model = load_entitysam(make_state_dict(args.variant, args.seed))
    frames_dir = Path(args.frames)
    names = official.frame_names(frames_dir)
    first = Image.open(frames_dir / names[0]).convert("RGB")
    out_size = (first.size[1], first.size[0])
    frames = ((i, preprocess_frame(Image.open(frames_dir / name), model.cfg.image_size)) for i, name in enumerate(names))
    tracker = EntityTracker(model, exact=args.mode == "exact")
    info = {"who": f"entitysam {args.mode}", "variant": args.variant, "seed": args.seed, "frames": str(frames_dir),
            "machine": machine.machine_record(args.threads)}
    partial = Path(args.out).with_suffix(".partial.npz")
    total = len(names) + official.NUM_WARMUP if args.steps is None else min(args.steps, len(names) + official.NUM_WARMUP)
    steps, times, start0 = [], [], time.time()
    start = start0
    with aten_trace.recording():
        for result in tracker.track(frames):
            steps.append(result)
            times.append(time.time() - start)
            print(f"ours ({args.mode}) step {len(steps) - 1}: {times[-1]:.1f} s", file=sys.stderr, flush=True)
            start = time.time()
            if len(steps) == total:
                break
            save_run(partial, step_arrays(steps, out_size, times), dict(info, partial=True))
    arrays = step_arrays(steps, out_size, times)
    if total == len(names) + official.NUM_WARMUP:
        scores = mean_step_scores([s.scores for s in steps], tracker.score_dtype)
        logits = torch.stack([s.mask_logits[:, 0] for s in steps if not s.is_warmup], dim=1)
        panoptic = merge_video_panoptic(scores, logits, out_size)
        arrays.update(video_scores=scores.numpy(), panoptic_ids=np.asarray(panoptic.id_maps, dtype=np.int32),
                      segment_ids=np.asarray(panoptic.segment_ids, dtype=np.int32),
                      segment_query_index=np.asarray(panoptic.query_index, dtype=np.int32))
    save_run(Path(args.out), arrays, dict(info, total_s=round(time.time() - start0, 1)))
    partial.unlink(missing_ok=True)


def step_arrays(steps, out_size, times) -> dict:
    """Our StepResults so far as the arrays of a saved run."""
    import torch

    return {
        "logits": torch.stack([s.mask_logits[:, 0] for s in steps]).numpy(),
        "eiou": torch.stack([s.scores for s in steps]).numpy(),
        "points": torch.stack([s.points for s in steps]).numpy(),
        "source_frame": np.array([s.frame_index for s in steps], dtype=np.int32),
        "is_padding": np.array([s.is_warmup for s in steps]),
        "out_size": np.array(out_size, dtype=np.int32),
        "step_times_s": np.array(times),
    }


# ------------------------------------------------------------------------------------ comparing

def compare_runs(a: dict, b: dict) -> list[dict]:
    """Per step statistics of run `a` against run `b` (b is the reference), full 256x256 logits."""
    rows = []
    for p in range(min(len(a["logits"]), len(b["logits"]))):
        la, lb = a["logits"][p], b["logits"][p]
        diff = np.abs(la - lb)
        rows.append(dict(
            step=p,
            bit_identical=bool(np.array_equal(la, lb) and np.array_equal(a["eiou"][p], b["eiou"][p])
                               and np.array_equal(a["points"][p], b["points"][p])),
            median_abs_diff=float(np.median(diff)),
            q999_abs_diff=float(np.quantile(diff, 0.999)),
            max_abs_diff=float(diff.max()),
            within_tolerance=float(np.mean(diff <= LOGIT_ATOL + LOGIT_RTOL * np.abs(lb))),
            sign_mismatch=float(np.mean((la > 0) != (lb > 0))),
            eiou_max_diff=float(np.abs(a["eiou"][p] - b["eiou"][p]).max()),
            points_max_diff=float(np.abs(a["points"][p] - b["points"][p]).max()),
        ))
    return rows


def ids_report(a: dict, b: dict) -> str:
    if "panoptic_ids" not in a or "panoptic_ids" not in b:
        return "ids: not compared (a run stopped before the last step)"
    differ = float(np.mean(a["panoptic_ids"] != b["panoptic_ids"])) if a["panoptic_ids"].shape == b["panoptic_ids"].shape else 1.0
    return (f"ids: map {'identical' if differ == 0 else f'differs on {differ:.1e} of pixels'}"
            f", segments {a['segment_ids'].tolist()} (queries {a['segment_query_index'].tolist()}) vs "
            f"{b['segment_ids'].tolist()} (queries {b['segment_query_index'].tolist()}), video scores max |diff| "
            f"{np.abs(a['video_scores'] - b['video_scores']).max():.1e}")


def format_row(r: dict) -> str:
    head = "BIT-IDENTICAL" if r["bit_identical"] else "differs"
    return (f"step {r['step']}: {head:13s} median {r['median_abs_diff']:.1e}, 99.9% {r['q999_abs_diff']:.1e}, "
            f"max {r['max_abs_diff']:.2f}, within tol {r['within_tolerance']:.5f}, signs {r['sign_mismatch']:.1e}, "
            f"eIoU {r['eiou_max_diff']:.1e}, points {r['points_max_diff']:.1e} px")


def print_comparison(label: str, a: dict, b: dict) -> list[dict]:
    rows = compare_runs(a, b)
    print(f"== {label}")
    for r in rows:
        print("  " + format_row(r))
    print("  " + ids_report(a, b))
    return rows


def against_fixture(run: dict, fixture: Path) -> list[dict]:
    """A run against a golden fixture (its sub-sampled logits and sign bits), README tolerances."""
    import torch
    from _golden import step_stats, video_sign_mismatch

    golden = dict(np.load(fixture / "golden.npz"))
    rows = []
    for p in range(min(len(run["logits"]), len(golden["pred_eiou"]))):
        row = step_stats(golden, p, run["logits"][p], run["eiou"][p], run["points"][p])
        if not golden["is_padding"][p]:  # an output frame: its upsampled signs too
            row["video_sign_mismatch"] = video_sign_mismatch(golden, int(golden["source_frame"][p]),
                                                             torch.from_numpy(run["logits"][p][:, None]),
                                                             golden["out_size"])
        rows.append(row)
    return rows


def cmd_compare(args) -> None:
    a, ia = load_run(Path(args.a))
    b, ib = load_run(Path(args.b))
    rows = print_comparison(f"{ia.get('who')} vs {ib.get('who')} ({machine.cpu_family_name(ia['machine']['cpu'])}, "
                            f"{ia['machine']['threads']} vs {ib['machine']['threads']} threads)", a, b)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def cmd_against_fixture(args) -> None:
    from _golden import format_stats

    run, info = load_run(Path(args.run))
    print(f"== {info.get('who')} on {machine.cpu_family_name(info['machine']['cpu'])} vs fixture {args.fixture}")
    rows = against_fixture(run, Path(args.fixture))
    for r in rows:
        video = f", video signs {r['video_sign_mismatch']:.1e}" if "video_sign_mismatch" in r else ""
        print("  " + format_stats(r) + video)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def child(kind: str, args, out: Path, threads: int, mode: str | None = None) -> None:
    cmd = [sys.executable, __file__, kind, "--frames", str(args.frames), "--variant", args.variant, "--seed",
           str(args.seed), "--threads", str(threads), "--out", str(out)]
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    if mode:
        cmd += ["--mode", mode]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    subprocess.run(cmd, check=True, env=env)


def cmd_check(args) -> None:
    """Official run, then this project in both modes, same threads; report; keep the runs."""
    work = Path(args.work or tempfile.mkdtemp(prefix="entitysam-harness-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, kind, mode in (("official", "official", None), ("exact", "ours", "exact"), ("default", "ours", "default")):
        out = work / f"{name}-t{args.threads}.npz"
        if not out.exists():
            child(kind, args, out, args.threads, mode)
        runs[name] = load_run(out)[0]
    cpu = machine.cpu_record()
    print(f"machine: {cpu['model_name']} ({machine.cpu_family_name(cpu)}), flags {' '.join(cpu['flags'])}, "
          f"{args.threads} threads; runs kept in {work}")
    report = {"machine": machine.machine_record(args.threads)}
    for name in ("exact", "default"):
        report[name] = print_comparison(f"entitysam {name} vs official", runs[name], runs["official"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    exact_ok = all(r["bit_identical"] for r in report["exact"])
    print(f"exact mode bit-identical at every step: {exact_ok}")


# -------------------------------------------------------------------------------------------- CLI

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    def run_options(p, out_required=True):
        p.add_argument("--frames", required=True, type=Path, help="folder of JPEG frames (sorted by name)")
        p.add_argument("--variant", default="vits", choices=sorted(official.VARIANTS))
        p.add_argument("--seed", type=int, default=1234, help="make_weights.py seed")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--steps", type=int, default=None, help="stop after K steps (default: all, n + 3)")
        if out_required:
            p.add_argument("--out", required=True, type=Path)

    run_options(sub.add_parser("official", help="run the official code, save the run"))
    p = sub.add_parser("ours", help="run this project, save the run")
    run_options(p)
    p.add_argument("--mode", choices=("default", "exact"), default="default")
    p = sub.add_parser("check", help="official + exact + default, compared step by step")
    run_options(p, out_required=False)
    p.add_argument("--work", type=Path, help="folder for the runs (reused when present)")
    p.add_argument("--json", type=Path)
    p = sub.add_parser("compare", help="compare two saved runs (B is the reference)")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", type=Path)
    p = sub.add_parser("against-fixture", help="a saved run against a golden fixture, README tolerances")
    p.add_argument("run")
    p.add_argument("fixture")
    p.add_argument("--json", type=Path)
    p = sub.add_parser("write-fixture", help="a fixture from a complete official run")
    p.add_argument("--run", required=True)
    p.add_argument("--frames", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cross-cpu", help="JSON of the official code's cross-CPU difference per step, recorded")
    p = sub.add_parser("make-frames", help="deterministic synthetic frames (JPEG) for a new fixture")
    p.add_argument("--size", required=True, help="WIDTHxHEIGHT, e.g. 853x479")
    p.add_argument("--num-frames", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    sub.add_parser("machine", help="print this machine's record")
    args = parser.parse_args(argv)
    if args.cmd in ("official", "check", "write-fixture"):
        official.official_dir(), official.dinov2_dir()  # fail early, one line
    {"official": run_official, "ours": run_ours, "check": cmd_check, "compare": cmd_compare,
     "against-fixture": cmd_against_fixture, "write-fixture": fixture_writer.cmd_write_fixture,
     "make-frames": fixture_writer.cmd_make_frames,
     "machine": lambda a: print(json.dumps(machine.machine_record(int(os.environ.get("OMP_NUM_THREADS", 2))),
                                           indent=1))}[args.cmd](args)


if __name__ == "__main__":
    main()
