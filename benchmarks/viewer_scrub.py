"""Scrubbing speed of `entitysam view` in headless Chromium (frames shown per second).

    PYTHONPATH=src python3 benchmarks/viewer_scrub.py [RESULT_DIR] [--frames 30] [--synthetic mp4|jpeg]
                                                      [--json out.json]

RESULT_DIR: a result folder (default: made here by the bundled demo model, ``--frames`` frames of
1920x1080, in a temporary folder: ~10 min of CPU on 2 shared cores). ``--synthetic``: instead, the
demo scene's ground truth written as the result (seconds, no model), its input an H.264 mp4 or a
folder of JPEGs (quality 90). Starts `entitysam view
--port 0`, opens it in the system Chromium (/usr/bin/chromium, Playwright; no browser download)
and measures, each over every frame of the result:

* ``cold``: frames shown one after the other (showFrame(i) awaited), nothing cached yet: the
  server reads and encodes each source frame, the browser fetches, decodes and tints it;
* ``warm``: the same again (the frames are decoded in the player's cache, up to 40 frames);
* ``fetched``: the same again with only the compressed frames cached (as for a video longer than
  the decoded cache): each frame's JPEG and id PNG are decoded again;
* ``drag``: the scrubber moved by input events at 60 Hz, as a mouse drag does, over a cold
  session (a fresh page): frames actually drawn per second (the player draws the latest frame
  asked for, skipping those the drag has passed);
* ``drag_fetched``: the same drag on a fresh page once the player has fetched every frame in
  the background (what scrubbing is like a few seconds after opening);
* ``overlay_ms``: the time of one tint pass (id lookup, colours, contours) on the current frame.

Each pass also records ``cpu_ms_per_frame``: the CPU time (user + system) that the server and
the browser (every process started by this script) spent per frame shown. On a shared machine the
wall-clock rates depend on the other load (the load average is recorded); the CPU time does not,
and ``2 * 1000 / cpu_ms_per_frame`` bounds what two idle cores could show.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _viewer import browser_page, open_viewer, view_server  # noqa: E402

def _descendants_cpu_seconds() -> float:
    """User + system CPU seconds of the live processes below this one (server, browser)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    me, total = os.getpid(), 0.0
    for pid in times:
        p = parents.get(pid)
        while p and p != me:
            p = parents.get(p)
        if p == me:
            total += times[pid]
    return total


def timed(page, script: str) -> dict:
    cpu0, load0 = _descendants_cpu_seconds(), os.getloadavg()[0]
    out = page.evaluate(script)
    out["cpu_ms_per_frame"] = round(1000 * (_descendants_cpu_seconds() - cpu0) / max(out["frames"], 1), 1)
    out["load_average"] = round((load0 + os.getloadavg()[0]) / 2, 1)
    return out


SEQUENTIAL = """async () => {
    const n = viewer.info.num_frames, t0 = performance.now();
    for (let i = 0; i < n; i++) await viewer.showFrame(i);
    return {frames: n, seconds: (performance.now() - t0) / 1000};
}"""

DRAG = """async () => {
    const n = viewer.info.num_frames, s = document.getElementById('scrubber');
    const drawn0 = viewer.renderCount, t0 = performance.now();
    for (let i = 0; i < n; i++) {
        s.value = i; s.dispatchEvent(new Event('input'));
        await new Promise((r) => setTimeout(r, 1000 / 60));
    }
    await viewer.showFrame(n - 1);
    return {frames: viewer.renderCount - drawn0, requested: n, seconds: (performance.now() - t0) / 1000};
}"""

OVERLAY = """() => {
    const t0 = performance.now(), k = 10;
    for (let i = 0; i < k; i++) viewer.redrawNow();
    return (performance.now() - t0) / k;
}"""


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def make_result(root: Path, frames: int) -> Path:
    from entitysam.pipeline.demo import run_demo

    run_demo(root / "demo-1080p", num_frames=frames, width=1920, height=1080, formats=("panoptic", "entities"))
    return root / "demo-1080p" / "demo"


def make_synthetic_result(root: Path, frames: int, source: str) -> Path:
    """A 1920x1080 result without a model: the demo scene's ground-truth ids as the entities,
    written by the writers `entitysam segment` uses; its input an mp4 (H.264, keyframe every 50
    frames) or a folder of JPEGs."""
    import av
    import numpy as np
    from PIL import Image

    from _review_result import write_result
    from entitysam.data.synthetic.scenes import render_demo_scene

    height, width, fps = 1080, 1920, 25
    images, ids = render_demo_scene(np.random.default_rng(5), frames, height, width)
    if source == "jpeg":
        src = root / "input"
        src.mkdir(parents=True)
        for t, image in enumerate(images):
            Image.fromarray(image).save(src / f"{t:05d}.jpg", quality=90)
        names = [f"{t:05d}" for t in range(frames)]
    else:
        src = root / "input.mp4"
        with av.open(str(src), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt, stream.options = width, height, "yuv420p", {"g": "50"}
            for image in images:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())
        names = [f"{t:06d}" for t in range(frames)]
    entities = [{"id": int(i), "score": 0.8, "query_index": k} for k, i in enumerate(np.unique(ids).tolist())]
    return write_result(root / "synthetic", src, names, [m.astype(np.uint32) for m in ids], entities, fps)


def measure(result: Path) -> dict:
    out: dict = {}
    with view_server(result) as (url, _token):
        with browser_page(1600, 1000) as page:
            open_viewer(page, url, timeout_ms=120000)
            out["size"] = page.evaluate("[viewer.info.width, viewer.info.height]")
            out["cold"] = timed(page, SEQUENTIAL)
            out["warm"] = timed(page, SEQUENTIAL)
            page.evaluate("viewer.dropDecoded()")
            out["fetched"] = timed(page, SEQUENTIAL)
            out["overlay_ms"] = page.evaluate(OVERLAY)
            out["page_errors"] = list(page.errors)
        with browser_page(1600, 1000) as page:  # a fresh browser: nothing cached client-side
            open_viewer(page, url, timeout_ms=120000)
            out["drag"] = timed(page, DRAG)
        with browser_page(1600, 1000) as page:  # a fresh browser, scrubbed once the frames are fetched
            open_viewer(page, url, timeout_ms=120000)
            page.wait_for_function("viewer.fetchedAll === true", timeout=300000)
            out["drag_fetched"] = timed(page, DRAG)
    for key in ("cold", "warm", "fetched", "drag", "drag_fetched"):
        out[key]["fps"] = round(out[key]["frames"] / out[key]["seconds"], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", nargs="?", help="result folder (default: a 1080p demo result made here)")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--synthetic", choices=("mp4", "jpeg"),
                        help="a model-less result of the demo scene (its input: mp4 or JPEG folder)")
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.result:
            result = Path(args.result)
        elif args.synthetic:
            result = make_synthetic_result(Path(tmp), args.frames, args.synthetic)
        else:
            result = make_result(Path(tmp), args.frames)
        numbers = measure(result)
    numbers["machine"] = {"cpu": cpu_name(), "threads": os.cpu_count()}
    for key in ("cold", "warm", "fetched", "drag", "drag_fetched"):
        r = numbers[key]
        print(f"{key:7s}: {r['frames']} frames in {r['seconds']:.2f} s = {r['fps']} frames/s "
              f"({r['cpu_ms_per_frame']} ms CPU per frame, load average {r['load_average']})")
    print(f"tint pass: {numbers['overlay_ms']:.1f} ms/frame at {numbers['size'][0]}x{numbers['size'][1]}")
    print(f"machine: {numbers['machine']['cpu']}, {numbers['machine']['threads']} threads")
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=1))


if __name__ == "__main__":
    main()
