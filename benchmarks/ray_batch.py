"""Batch segmentation on a local Ray cluster: videos/hour with 1, 2, ... actors.

    PYTHONPATH=src python3 benchmarks/ray_batch.py [--videos 6] [--frames 4] [--size 64x48]
        [--actors 1,2] [--cpus N] [--model demo] [--json out.json]

Generates ``--videos`` demo-scene frame folders of ``--frames`` frames, starts one local Ray
instance (``--cpus`` CPUs, default all), and runs :func:`entitysam.distributed.segment_many`
once per ``--actors`` value (one torch thread per actor) into a fresh output folder. Prints per
setting the wall time of the whole batch (actors starting and loading the model included, Ray
start-up excluded), videos/hour, frames/s and the speed-up over the first setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path


def make_videos(root: Path, count: int, frames: int, width: int, height: int) -> list[Path]:
    from entitysam.data.synthetic.demo import make_demo_video

    for i in range(count):
        make_demo_video(root, num_frames=frames, width=width, height=height, seed=i, name=f"video{i}")
    return sorted((root / "images").iterdir())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--size", default="64x48", help="WxH of the generated frames")
    ap.add_argument("--actors", default="1,2", help="comma-separated actor counts")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    ap.add_argument("--model", default="demo")
    ap.add_argument("--json", default=None, help="also write the measurements here")
    args = ap.parse_args()
    width, height = (int(x) for x in args.size.lower().split("x"))
    counts = [int(x) for x in args.actors.split(",")]

    import ray

    from entitysam.distributed import SegmentOptions, segment_many

    work = Path(tempfile.mkdtemp(prefix="ray-batch-"))
    rows = []
    try:
        videos = make_videos(work / "videos", args.videos, args.frames, width, height)
        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t0
        print(f"{cpu_model()}, {os.cpu_count()} threads; Ray {ray.__version__} started in {startup:.1f}s "
              f"({ray.cluster_resources().get('CPU', 0):g} CPUs); {args.videos} videos x {args.frames} frames "
              f"{width}x{height}, model {args.model}")
        print(f"{'actors':>6} {'seconds':>8} {'videos/h':>9} {'frames/s':>9} {'speed-up':>8}")
        for k, n in enumerate(counts):
            out = work / f"out-{k}-actors-{n}"  # a setting may repeat (--actors 1,2,1)
            t = time.perf_counter()
            summary = segment_many(videos, out, num_actors=n, model=args.model, device="cpu",
                                   options=SegmentOptions(), progress=False)
            seconds = time.perf_counter() - t
            assert summary.ok, summary.to_json()
            rows.append({"actors": n, "seconds": round(seconds, 2),
                         "videos_per_hour": round(args.videos * 3600 / seconds, 1),
                         "frames_per_second": round(summary.frames / seconds, 3)})
            speedup = rows[0]["seconds"] / seconds
            print(f"{n:>6} {seconds:>8.1f} {rows[-1]['videos_per_hour']:>9.1f} "
                  f"{rows[-1]['frames_per_second']:>9.3f} {speedup:>7.2f}x")
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "threads": os.cpu_count(),
                                               "ray_startup_seconds": round(startup, 2), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
