"""The offline video-level merge as `entitysam segment` runs it: seconds per frame.

    PYTHONPATH=src python3 benchmarks/video_merge.py [--frames 30] [--size 1280x720] [--queries 50]
        [--device cpu|cuda] [--repeat 2] [--json out.json]

Generates low-res logits of ``--queries`` moving blobs (most of them survive the merge, as the
entities of a real video do), appends them to a disk-backed ``LogitStore`` as tracking does, and
times :func:`entitysam.inference.offline_merge.merge_video_panoptic` streaming its id maps into
an ``IdMapFile`` and ``EntityStats`` (what ``entitysam.segment`` does after tracking; the merge's
per-pixel assignment on ``--device``). Prints the best of ``--repeat`` runs and checks the
streamed maps against the in-memory merge (bit for bit).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from entitysam.inference.offline_merge import merge_video_panoptic
from entitysam.inference.video import LogitStore
from entitysam.io.entities import EntityStats
from entitysam.pipeline.result import IdMapFile

LOWRES = 256


def blob_logits(frames: int, queries: int, seed: int = 0) -> np.ndarray:
    """[n, Q, 256, 256] float32 logits: each query a disc of random radius moving in a straight line."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:LOWRES, 0:LOWRES].astype(np.float32)
    start = rng.uniform(30, LOWRES - 30, (queries, 2))
    velocity = rng.uniform(-2, 2, (queries, 2))
    radius = rng.uniform(6, 28, queries)
    out = np.empty((frames, queries, LOWRES, LOWRES), np.float32)
    for t in range(frames):
        cy, cx = (start + t * velocity).T
        dist = np.sqrt((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2)
        out[t] = (radius[:, None, None] - dist) / 4
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    device = None if args.device == "cpu" else torch.device(args.device)
    logits = blob_logits(args.frames, args.queries)
    scores = torch.from_numpy(np.random.default_rng(1).uniform(0.3, 0.9, args.queries).astype(np.float32))

    with tempfile.TemporaryDirectory() as tmp:
        store = LogitStore(tmp, args.queries, LOWRES)
        for frame in logits:
            store.append(torch.from_numpy(frame))
        store.close()
        best, streamed = float("inf"), None
        for _ in range(args.repeat):
            maps = IdMapFile(Path(tmp) / "id_maps.bin", (height, width), args.queries)
            stats = EntityStats()

            def frames_out(t: int, id_map: np.ndarray) -> None:
                maps.append(id_map)
                stats.add_id_map(t, id_map)

            t0 = time.perf_counter()
            result = merge_video_panoptic(scores, store, (height, width), frames_out=frames_out, frame_chunk=1,
                                          device=device)
            best = min(best, time.perf_counter() - t0)
            maps.finish()
            streamed = np.stack(list(maps))
        whole = merge_video_panoptic(scores, store, (height, width), device=device)
        identical = bool(np.array_equal(streamed, whole.id_maps))

    out = {"frames": args.frames, "size": [height, width], "queries": args.queries, "device": args.device,
           "entities": len(result.segment_ids), "seconds": round(best, 3),
           "ms_per_frame": round(1000 * best / args.frames, 1), "streamed_equals_in_memory": identical,
           "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    print(f"merge of {args.frames} frames at {width}x{height}, {args.queries} queries, {out['entities']} entities, "
          f"on {args.device}: {out['seconds']} s = {out['ms_per_frame']} ms/frame "
          f"(streamed maps equal the in-memory merge: {identical})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
