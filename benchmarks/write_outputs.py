"""Writing a result's files: one thread vs the PNG/RLE thread pool + overlay thread.

    PYTHONPATH=src python3 benchmarks/write_outputs.py [--frames 60] [--size 1280x720] [--entities 30]
        [--workers 0,1,2,4] [--formats panoptic,entities,overlay] [--repeat 1] [--json out.json]

Generates ``--frames`` id maps with about ``--entities`` moving entities and random-texture
frames, then writes them with :func:`entitysam.io.result_files.write_result_files` (the body of
``SegmentationResult.write_into``) once per ``--workers`` value (0: everything on the calling
thread, the sequential writer; N: N encoding threads plus the overlay thread), into a temporary
folder, and prints seconds and frames/s per setting (best of ``--repeat``, settings interleaved),
plus the files' agreement with the sequential run (byte for byte). A second table times the id-PNG encoding
alone on 1 and 2 threads, which shows whether Pillow's zlib encoder runs in parallel (it
releases the GIL while compressing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from entitysam.io import idpng
from entitysam.io.result_files import write_result_files
from entitysam.io.sources import ArraySource


class _Info:
    __slots__ = ("t", "index", "name", "time")

    def __init__(self, t: int, fps: float):
        self.t, self.index, self.name, self.time = t, t, f"{t:06d}", t / fps


def make_maps(n: int, h: int, w: int, entities: int, seed: int = 0) -> np.ndarray:
    """[n, h, w] int32: `entities` ellipses drifting across the frame (later ids drawn on top)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0, h, entities), rng.uniform(0, w, entities)
    ry, rx = rng.uniform(h / 20, h / 6, entities), rng.uniform(w / 20, w / 6, entities)
    vy, vx = rng.uniform(-3, 3, entities), rng.uniform(-5, 5, entities)
    maps = np.zeros((n, h, w), np.int32)
    for t in range(n):
        for k in range(entities):
            inside = ((yy - cy[k] - vy[k] * t) / ry[k]) ** 2 + ((xx - cx[k] - vx[k] * t) / rx[k]) ** 2 <= 1
            maps[t][inside] = k + 1
    return maps


def make_images(n: int, h: int, w: int, seed: int = 1) -> np.ndarray:
    """[n, h, w, 3] uint8: smooth gradients plus noise (a camera-like load for the encoder)."""
    rng = np.random.default_rng(seed)
    base = (np.linspace(0, 200, w, dtype=np.float32)[None, :, None]
            + np.linspace(0, 50, h, dtype=np.float32)[:, None, None])
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        out[t] = np.clip(base + rng.normal(0, 12, (h, w, 3)) + t, 0, 255).astype(np.uint8)
    return out


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_once(root: Path, label: str, workers: int, maps, images, formats, fps: float) -> tuple[float, Path]:
    out = root / label
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    frames = [_Info(t, fps) for t in range(len(maps))]
    ents = [{"id": k, "score": 0.5, "query_index": k} for k in range(1, int(maps.max()) + 1)]
    t0 = time.perf_counter()
    write_result_files(out, formats, name="bench", fps=fps, frames=frames, id_maps=iter(maps), entities=ents,
                       images=ArraySource(images, fps=fps), source_label="bench", workers=workers)
    return time.perf_counter() - t0, out


def png_encoding(maps: np.ndarray, threads: int) -> float:
    """Seconds to encode every id map to PNG (in memory) on `threads` threads."""
    import io  # noqa: PLC0415

    def encode(m):
        buf = io.BytesIO()
        idpng.write_id_png(buf, m)
        return len(buf.getvalue())

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(encode, maps))
    return time.perf_counter() - t0


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return f"{model}, {usable} usable CPU threads ({os.cpu_count()} online)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", default="1280x720", help="WxH")
    ap.add_argument("--entities", type=int, default=30)
    ap.add_argument("--workers", default="0,1,2,4")
    ap.add_argument("--formats", default="panoptic,entities,overlay")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    formats = tuple(f for f in args.formats.split(",") if f)
    workers = [int(v) for v in args.workers.split(",")]
    fps = 25.0

    maps = make_maps(args.frames, h, w, args.entities)
    images = make_images(args.frames, h, w)
    present = np.mean([len(np.unique(m)) - 1 for m in maps])
    print(f"machine: {machine()}")
    print(f"{args.frames} frames {w}x{h}, {present:.1f} entities per frame on average, formats {','.join(formats)}")

    with tempfile.TemporaryDirectory(prefix="entitysam-write-bench-") as tmp:
        root = Path(tmp)
        reference = None
        best = {n: float("inf") for n in workers}
        identical = {n: True for n in workers}
        # settings interleaved, repeat after repeat: a shared machine's load drifts over minutes
        for _ in range(args.repeat):
            for n in workers:
                seconds, folder = run_once(root, f"w{n}", n, maps, images, formats, fps)
                best[n] = min(best[n], seconds)
                files = files_of(folder)
                reference = files if reference is None else reference
                identical[n] &= files == reference
                shutil.rmtree(folder, ignore_errors=True)
        rows = [{"workers": n, "seconds": round(best[n], 3), "frames_per_s": round(args.frames / best[n], 2),
                 "identical_to_first": identical[n]} for n in workers]
    print()
    print(f"{'workers':>8} {'seconds':>9} {'frames/s':>9} {'speed-up':>9}  identical files")
    for r in rows:
        label = "0 (seq)" if r["workers"] == 0 else str(r["workers"])
        print(f"{label:>8} {r['seconds']:9.2f} {r['frames_per_s']:9.2f} {rows[0]['seconds'] / r['seconds']:8.2f}x  "
              f"{r['identical_to_first']}")

    png = {threads: png_encoding(maps, threads) for threads in (1, 2)}
    print()
    print(f"id-PNG encoding alone ({args.frames} frames): 1 thread {png[1]:.2f} s, 2 threads {png[2]:.2f} s "
          f"({png[1] / png[2]:.2f}x: Pillow's zlib {'releases' if png[1] / png[2] > 1.3 else 'may not release'} "
          "the GIL)")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "frames": args.frames, "size": [w, h],
                                         "formats": formats, "rows": rows,
                                         "png_seconds": {str(k): round(v, 3) for k, v in png.items()}}, indent=1))


if __name__ == "__main__":
    main()
