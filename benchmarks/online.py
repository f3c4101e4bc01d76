"""Online mode against offline: agreement and per-frame latency, for several look-ahead delays.

    python benchmarks/online.py --model tiny --frames 40
    python benchmarks/online.py --model demo --frames 40                        # bundled trained demo model
    python benchmarks/online.py --model vit-s --frames 20 --dtype bfloat16      # make_weights.py weights
    python benchmarks/online.py --model vit-s --checkpoint model_0009999.pth    # a trained model

The tracker runs ONCE over a generated clip (moving textured ellipses, 640x360, as
benchmarks/inference.py; for the demo model its own synthetic scene, 320x240, with ground truth,
as `entitysam demo`): the model steps do not depend on the delay, so the per-step eIoU and
low-res logits are kept and replayed through the offline merge and through the online merge for
each delay (default 0, 4, 16). Per delay it prints:

* VEQ of the online id maps with the offline ones as ground truth (entitysam.eval.veq, windows of
  1, 2, 4, 6, 8 frames); undefined when offline keeps no segment;
* the fraction of pixels with the same id, and with the same query behind the id (ids are
  numbered differently when online gives ids in another order);
* segments: entities in the online output / in the offline output;
* agreement of the per-query masks BEFORE the overlap test (each pixel's argmax query where its
  own probability >= 0.5): fraction of identical pixels and mean IoU over queries. This stays
  informative when the panoptic output is empty, which happens with random weights (no query
  wins 70% of its own foreground; see ../shared/reference/README.md);
* the mean absolute error of the running eIoU score at emission against the final one;
* with ground truth (demo scene): VEQ of online and of offline against it;
* per frame: model step time (frame 0 includes the three warm-up steps; the median is over the
  other frames), online merge time of a frame while the stream runs (median over the emissions
  of one frame, wall and process CPU: on a shared machine wall time includes waiting for the
  cores; the end-of-stream flush only counts in the mean), and the resulting latency of a
  result: (delay + 1) model steps + merge, in wall seconds and in CPU seconds (the README's
  "latency CPU s": on a shared machine the wall figure includes waiting for the cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _inference_module():
    spec = importlib.util.spec_from_file_location("bench_inference", ROOT / "benchmarks" / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_model(name: str, checkpoint: str | None, seed: int):
    from entitysam.checkpoints import load_entitysam

    if checkpoint:
        return load_entitysam(checkpoint, config=None if name == "auto" else name)
    if name == "demo":
        from entitysam.pipeline.loading import from_pretrained

        return from_pretrained("demo")
    return _inference_module().build_model(name, seed)  # tiny: seeded; vit-s/vit-l: make_weights.py


def track(model, frames: list[np.ndarray], dtype: str = "float32"):
    """Run the tracker once. Returns per-step eIoU [S, Q], per-frame logits [Q, n, h, w] and
    per-frame model seconds, wall and CPU (frame 0 includes the warm-up steps)."""
    from entitysam.inference.precision import precision_plan
    from entitysam.inference.preprocess import preprocess_frame
    from entitysam.inference.tracker import EntityTracker

    compute_dtype = getattr(torch, dtype)
    tracker = EntityTracker(model, attention_dtype=precision_plan(model, compute_dtype)[1])
    scores, logits, seconds, cpu = [], [], [], []
    for t, image in enumerate(frames):
        t0, c0 = time.perf_counter(), time.process_time()
        # a fresh context per frame, as pipeline/online_tracking.py: the plan's context is single-use
        with precision_plan(model, compute_dtype)[0]:
            for step in tracker.track([(t, preprocess_frame(image, model.cfg.image_size))]):
                scores.append(step.scores.float())
                if not step.is_warmup:
                    logits.append(step.mask_logits[:, 0].float())
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        print(f"frame {t}: {seconds[-1]:.2f} s wall, {cpu[-1]:.2f} s CPU", file=sys.stderr, flush=True)
    return torch.stack(scores), torch.stack(logits, 1), seconds, cpu


def offline_merge(scores_steps: torch.Tensor, logits: torch.Tensor, out_size):
    """The offline answer: id maps, id -> query, and the pre-overlap-test winner query per pixel."""
    from entitysam.inference.offline_merge import iter_video_panoptic, plan_video_panoptic

    scores = scores_steps.mean(0)  # as segment_video in float32 (mean_step_scores rounds only under autocast)
    n = logits.shape[1]
    winners = np.full((n, *out_size), -1, np.int16)
    slots: list[np.ndarray] = []
    t0 = time.perf_counter()
    plan = plan_video_panoptic(scores, logits, out_size, frame_chunk=1,
                               winners_out=lambda t, w: slots.append((t, w.numpy().copy())))
    maps = np.stack([m for _, m in iter_video_panoptic(plan, logits, frame_chunk=1)])
    seconds = time.perf_counter() - t0
    lut = np.concatenate([[-1], plan.kept.numpy()]).astype(np.int16)
    for t, codes in slots:  # winners_out gives codes: kept slot + 1, 0 = no segment (since 910c43e)
        winners[t:t + codes.shape[0]] = lut[codes.astype(np.int64)]
    owner = dict(zip(plan.segment_ids, plan.query_index))
    return maps, owner, winners, scores, seconds


def online_merge(scores_steps, logits, out_size, delay, warmup):
    from entitysam.inference.online_merge import OnlineMerger

    q, n = logits.shape[:2]
    merger = OnlineMerger(q, out_size, delay, warmup_steps=warmup, keep_winners=True)
    maps, winners = [None] * n, [None] * n
    calls: list[tuple[int, float, float]] = []  # (frames emitted, wall s, CPU s) per emitting call
    owner: dict[int, int] = {}
    score_at = [None] * n  # running eIoU mean when frame t was emitted

    def take(out, seconds, cpu):
        if out:
            calls.append((len(out), seconds, cpu))
        for e in out:
            maps[e.t], winners[e.t] = e.id_map, e.winners
            score_at[e.t] = merger.current_scores().clone()
            owner.update({sid: qi for sid, (qi, _) in e.segments.items()})

    for p in range(warmup):
        merger.add_scores(scores_steps[p])
    for t in range(n):
        merger.add_scores(scores_steps[warmup + t])
        t0, c0 = time.perf_counter(), time.process_time()
        out = merger.add_frame(logits[:, t])
        take(out, time.perf_counter() - t0, time.process_time() - c0)
    t0, c0 = time.perf_counter(), time.process_time()
    out = merger.finish()
    take(out, time.perf_counter() - t0, time.process_time() - c0)
    # Steady cost: emissions of one frame (while the stream runs); the end-of-stream flush emits
    # the whole window at once and is reported through the mean only.
    single = [c for c in calls if c[0] == 1] or calls
    timing = {"merge_s_per_frame": statistics.median(c[1] / c[0] for c in single),
              "merge_cpu_s_per_frame": statistics.median(c[2] / c[0] for c in single),
              "merge_s_mean": sum(c[1] for c in calls) / n,
              "merge_s_max_call": max(c[1] for c in calls)}
    return np.stack(maps), owner, np.stack(winners), torch.stack(score_at), timing


def veq(gt_maps: np.ndarray, pred_maps: np.ndarray) -> float | None:
    """VEQ (percent) of pred against gt as ground truth, None if gt has no segment."""
    from entitysam.eval.panoptic_io import pair_counts
    from entitysam.eval.veq import FrameVEQInput, veq_aggregate, veq_video_stats
    from entitysam.io.panoptic import frame_segments

    if not gt_maps.any():
        return None
    frames = []
    for t, (g, p) in enumerate(zip(gt_maps, pred_maps)):
        gi, pi, c = pair_counts(g.astype(np.uint32), p.astype(np.uint32))
        frames.append(FrameVEQInput(str(t), gi, pi, c,
                                    [{"id": s["id"], "area": s["area"], "iscrowd": 0} for s in frame_segments(g)],
                                    [{"id": s["id"], "area": s["area"]} for s in frame_segments(p)]))
    return veq_aggregate([veq_video_stats(frames)])["final"]["vpq"]


def mask_agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float | None]:
    """Pixels with the same winner query, and mean IoU over queries of their winner masks."""
    same = float((a == b).mean())
    ious = []
    for qi in sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {-1}):
        ma, mb = a == qi, b == qi
        union = np.count_nonzero(ma | mb)
        if union:
            ious.append(np.count_nonzero(ma & mb) / union)
    return same, (float(np.mean(ious)) if ious else None)


def query_maps(maps: np.ndarray, owner: dict[int, int]) -> np.ndarray:
    lut = np.full(int(maps.max(initial=0)) + 1, -1, np.int32)
    for sid, qi in owner.items():
        if sid < lut.size:
            lut[sid] = qi
    return lut[maps]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-s", choices=("tiny", "demo", "vit-s", "vit-l", "auto"),
                    help="configuration (with --checkpoint: 'auto' infers it from the file); demo: the bundled "
                         "demo model")
    ap.add_argument("--clip", default="auto", choices=("auto", "ellipses", "demo"),
                    help="ellipses (640x360) or the demo scene (320x240, with ground truth); auto: demo for the "
                         "demo configuration")
    ap.add_argument("--checkpoint", default=None, help="a checkpoint file instead of generated weights")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--delays", type=int, nargs="+", default=[0, 4, 16])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="model precision (inference.precision.precision_plan: on CPU bfloat16 = memory attention only)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = build_model(args.model, args.checkpoint, args.seed)
    gt = None
    if args.clip == "demo" or (args.clip == "auto" and model.cfg.name == "demo"):
        from entitysam.data.synthetic.demo import DEMO_DEFAULTS
        from entitysam.data.synthetic.scenes import render_demo_scene

        rng = np.random.default_rng([DEMO_DEFAULTS["seed"], 9])  # the scene `entitysam demo` segments
        images, gt = render_demo_scene(rng, args.frames, DEMO_DEFAULTS["height"], DEMO_DEFAULTS["width"])
        clip = list(images)
    else:
        clip = list(_inference_module().make_clip(args.frames))
    out_size = clip[0].shape[:2]
    n, q = len(clip), model.cfg.num_queries
    step_scores, logits, model_s, model_cpu = track(model, clip, args.dtype)
    warmup = step_scores.shape[0] - n
    off_maps, off_owner, off_win, off_scores, off_s = offline_merge(step_scores, logits, out_size)
    off_q = query_maps(off_maps, off_owner)

    steady = statistics.median(model_s[1:]) if n > 1 else model_s[0]
    steady_cpu = statistics.median(model_cpu[1:]) if n > 1 else model_cpu[0]
    rows = []
    for delay in args.delays:
        maps, owner, win, score_at, timing = online_merge(step_scores, logits, out_size, delay, warmup)
        same_win, win_iou = mask_agreement(win, off_win)
        rows.append({
            "delay": delay,
            "veq": veq(off_maps, maps),
            "same_id_pixels": float((maps == off_maps).mean()),
            "same_query_pixels": float((query_maps(maps, owner) == off_q).mean()),
            "segments_online": len(owner),
            "segments_offline": len(off_owner),
            "winner_pixels_agree": same_win,
            "winner_mask_miou": win_iou,
            "score_abs_err": float((score_at - off_scores).abs().mean()),
            "model_s_per_frame": steady,
            "model_cpu_s_per_frame": steady_cpu,
            **timing,
            "latency_s": (min(delay, n - 1) + 1) * steady + timing["merge_s_per_frame"],
            "latency_cpu_s": (min(delay, n - 1) + 1) * steady_cpu + timing["merge_cpu_s_per_frame"],
            "veq_vs_gt": None if gt is None else veq(gt, maps),
        })
    result = {"model": args.checkpoint or args.model, "config": model.cfg.name, "frames": n,
              "model_cpu_s_per_frame": steady_cpu,
              "size": list(out_size), "queries": q, "threads": args.threads, "dtype": args.dtype,
              "offline_segments": len(off_owner),
              "offline_merge_s": off_s, "offline_veq_vs_gt": None if gt is None else veq(gt, off_maps), "model_s_frame0": model_s[0], "rows": rows}

    print(f"\n{result['model']} ({model.cfg.name}), {n} frames {out_size[1]}x{out_size[0]}, Q={q}, "
          f"{args.threads} threads, {args.dtype}; offline: {len(off_owner)} segments, merge {off_s:.2f} s for the whole clip; "
          f"model: {steady:.2f} s/frame wall, {steady_cpu:.2f} s CPU (median; frame 0 with warm-up "
          f"{model_s[0]:.2f} s wall)")
    if gt is not None:
        print(f"ground truth: offline VEQ {result['offline_veq_vs_gt']:.2f}; online VEQ per delay: "
              + ", ".join(f"{r['delay']}: {r['veq_vs_gt']:.2f}" for r in rows))
    if not off_owner:
        print("offline keeps NO segment (random weights: no query wins 70% of its own foreground), so VEQ is "
              "undefined; the per-query mask agreement (before the overlap test) is the informative column.")
    head = (f"{'delay':>5} {'VEQ':>7} {'same id':>8} {'same q':>8} {'segs on/off':>11} {'win px':>7} "
            f"{'win mIoU':>8} {'score err':>9} {'merge s':>8} {'merge CPU':>9} {'latency s':>9} {'latency CPU':>11}")
    print(head)
    for r in rows:
        veq_s = "n/a" if r["veq"] is None else f"{r['veq']:.2f}"
        miou = "n/a" if r["winner_mask_miou"] is None else f"{r['winner_mask_miou']:.4f}"
        print(f"{r['delay']:>5} {veq_s:>7} {r['same_id_pixels']:>8.4f} {r['same_query_pixels']:>8.4f} "
              f"{r['segments_online']:>5}/{r['segments_offline']:<5} {r['winner_pixels_agree']:>7.4f} {miou:>8} "
              f"{r['score_abs_err']:>9.5f} {r['merge_s_per_frame']:>8.3f} {r['merge_cpu_s_per_frame']:>9.3f} "
              f"{r['latency_s']:>9.2f} {r['latency_cpu_s']:>11.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
