"""Batch throughput of `entitysam segment --batch --shard I/N` with 1, 2, ... worker processes.

    python benchmarks/batch_scaling.py                          # demo model, 8 videos of 6 frames, 1 and 2 workers
    python benchmarks/batch_scaling.py --workers 1 2 4 --videos 16 --frames 10 --threads 1
    python benchmarks/batch_scaling.py --model vit-s --device cuda --workers 1   # any model the CLI takes

Generates `--videos` synthetic demo-scene frame folders (entitysam.data.synthetic), then for each
worker count W starts W processes `entitysam segment --batch DIR -o OUT --shard i/W` at once on
a fresh OUT and times them from launch to the last exit: process start, torch import and model
loading included, as a real batch job pays them. Each worker uses `--threads` torch threads
(default 1: W workers x 1 thread). Prints one row per W: wall time, videos/hour, frames/s
(frames done / wall time), the speedup over the first row, and the parallel efficiency
(speedup / W), and the CPU seconds of all workers (what scaling costs when the cores are free:
equal CPU seconds for W workers means near-linear scaling on W idle cores); checks every video is done exactly once (from the shards' summaries).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_videos(folder: Path, count: int, frames: int, size: tuple[int, int]) -> None:
    from entitysam.data.synthetic.scenes import render_demo_scene

    width, height = size
    for k in range(count):
        images, _ = render_demo_scene(np.random.default_rng(k), frames, height, width)
        video = folder / f"video{k:03d}"
        video.mkdir(parents=True)
        for t, image in enumerate(images):
            Image.fromarray(image).save(video / f"{t:05d}.png")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_workers(workers: int, videos: Path, out: Path, args) -> tuple[float, float, list[dict]]:
    """Wall seconds of `workers` concurrent shards, their CPU seconds (all workers), their summaries."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    base = [sys.executable, "-m", "entitysam", "segment", "--batch", str(videos), "-o", str(out), "--model",
            args.model, "--save", args.save, "--threads", str(args.threads), "--device", args.device, "-q"]
    cpu0 = _children_cpu_seconds()
    t0 = time.perf_counter()
    procs = [subprocess.Popen(base + ["--shard", f"{i}/{workers}"], env=env, stderr=subprocess.PIPE, text=True)
             for i in range(workers)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - t0
    cpu = _children_cpu_seconds() - cpu0
    for p, err in zip(procs, errors):
        if p.returncode != 0:
            raise SystemExit(f"a worker failed (exit {p.returncode}):\n{err}")
    summaries = [json.loads((out / ".entitysam-batch" / f"shard-{i}-of-{workers}.json").read_text())
                 for i in range(workers)]
    return wall, cpu, summaries


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time (default 1 2)")
    ap.add_argument("--videos", type=int, default=8, help="number of generated videos (default 8)")
    ap.add_argument("--frames", type=int, default=6, help="frames per video (default 6)")
    ap.add_argument("--size", default="160x120", help="frame size WxH (default 160x120)")
    ap.add_argument("--model", default="demo", help="--model of the command line (default demo: bundled, offline)")
    ap.add_argument("--device", default="cpu", help="--device (default cpu)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    ap.add_argument("--save", default="panoptic", help="--save formats (default panoptic)")
    ap.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = ap.parse_args(argv)
    size = tuple(int(x) for x in args.size.lower().split("x"))
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="entitysam-batch-bench-") as tmp:
        videos = Path(tmp) / "videos"
        make_videos(videos, args.videos, args.frames, size)
        rows = []
        for workers in args.workers:
            out = Path(tmp) / f"out-{workers}"
            wall, cpu, summaries = run_workers(workers, videos, out, args)
            done = [n for s in summaries for n in s["done"]]
            assert sorted(done) == sorted(os.listdir(videos)), "every video done exactly once"
            frames = sum(s["frames"] for s in summaries)
            rows.append({"workers": workers, "threads_per_worker": args.threads, "videos": len(done),
                         "frames": frames, "wall_s": round(wall, 2), "cpu_s": round(cpu, 1),
                         "videos_per_hour": round(len(done) / wall * 3600, 1),
                         "frames_per_s": round(frames / wall, 3)})
            shutil.rmtree(out)
    first = rows[0]
    print(f"{args.videos} videos x {args.frames} frames ({args.size}), model {args.model} on {args.device}, "
          f"{args.threads} torch thread(s) per worker")
    print(f"cores: {os.cpu_count()}, load average before: {load_before:.1f} (other processes share the cores)")
    print(f"{'workers':>7} {'wall s':>8} {'cpu s':>7} {'videos/h':>9} {'frames/s':>9} {'speedup':>8} {'efficiency':>10}")
    for row in rows:
        speedup = row["videos_per_hour"] / first["videos_per_hour"] * first["workers"]
        row["speedup"] = round(speedup, 2)
        row["efficiency"] = round(speedup / row["workers"], 2)
        print(f"{row['workers']:>7} {row['wall_s']:>8.1f} {row['cpu_s']:>7.1f} {row['videos_per_hour']:>9.0f} {row['frames_per_s']:>9.2f} "
              f"{speedup:>7.2f}x {row['efficiency']:>10.2f}")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
