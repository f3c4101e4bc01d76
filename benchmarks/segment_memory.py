"""Peak RSS of `entitysam segment` against video length: it must stay flat.

    python benchmarks/segment_memory.py [--frames 50 200 800] [--size 320x240] [--threads 1]
    python benchmarks/segment_memory.py --model vit-s --frames 8 32 --threads 2 [--dtype bfloat16]

For each length, a generated mp4 (moving squares) is segmented in a fresh process through the
Python API with every output format (panoptic PNG + JSON, entities.json, overlay.mp4) and the
child's peak resident set size (ru_maxrss) is printed. The run fails (exit 1) when the largest
peak exceeds the smallest by more than 10%. `--model tiny` (default) uses a seeded tiny model,
`--model vit-s|vit-l` the full-size model with `make_weights.py` weights (minutes per frame).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
sys.path.insert(0, sys.argv[6])
from inference import build_model
from entitysam import segment  # build_model gives the plain network: segment() is the API's function
model = build_model(sys.argv[4], 4 if sys.argv[4] == "tiny" else 1234)
t0 = time.perf_counter()
with segment(model, sys.argv[1], work_dir=sys.argv[2], dtype=sys.argv[5], progress=False) as result:
    result.save(sys.argv[2] + "/out", formats=("panoptic", "entities", "overlay"))
    entities = len(result.entities)
print(json.dumps({"frames": len(result), "entities": entities, "seconds": time.perf_counter() - t0,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_video(path: Path, n: int, width: int, height: int) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(25))
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for t in range(n):
            a = np.zeros((height, width, 3), np.uint8)
            a[:] = (30, 60, 90)
            x = (3 * t) % (width // 2)
            a[height // 10:height // 2, x:x + width // 3] = (250, 40, 40)
            y = (2 * t) % (height // 2)
            a[y:y + height // 3, width // 2:width - 10] = (40, 250, 40)
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[50, 200, 800])
    ap.add_argument("--size", default="320x240", help="WxH of the generated video")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="tiny", choices=("tiny", "vit-s", "vit-l"))
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="entitysam-bench-") as tmp:
        for n in args.frames:
            video = Path(tmp) / f"v{n}.mp4"
            write_video(video, n, width, height)
            work = Path(tmp) / f"w{n}"
            work.mkdir()
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", CHILD, str(video), str(work), str(args.threads), args.model,
                                  args.dtype, str(ROOT / "benchmarks")],
                                 capture_output=True, text=True, cwd=ROOT)
            if out.returncode:  # the child's own error, not a bare CalledProcessError
                print(f"the {n}-frame run failed (exit {out.returncode}):\n{out.stderr.strip()}", file=sys.stderr)
                return 1
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["wall_seconds"] = time.perf_counter() - t0
            rows.append(row)
            print(f"{args.model} {args.dtype} {n:5d} frames {width}x{height}: peak RSS {row['peak_rss_mib']:7.1f} MiB, "
                  f"{row['entities']} entities, {row['seconds']:.1f} s ({n / row['seconds']:.1f} frames/s)",
                  flush=True)
    peaks = [r["peak_rss_mib"] for r in rows]
    growth = max(peaks) / min(peaks) - 1
    print(f"growth of peak RSS from the smallest to the largest: {100 * growth:.1f}% (limit 10%)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "growth": growth}, indent=1))
    return 0 if growth <= 0.10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
