"""Peak memory of reading one large frame: decoding (entitysam.io.sources) + preprocessing
(resize to the model's input, normalisation), per megapixel of the frame.

    PYTHONPATH=src python3 benchmarks/decode_memory.py [--mp 24] [--video-mp 8.3]

Each case runs in a fresh process (Linux): after the imports and a warm-up on a tiny frame (so
that libraries and lazy imports are already loaded), the peak resident set size (VmHWM) is reset
to the current one (``/proc/self/clear_refs``) and the current RSS noted, one large frame is read through ``open_source`` and preprocessed with
``preprocess_frame(image, 1024)``, and the new peak (VmHWM) is read. The difference, divided by the frame's
megapixels, is the peak memory per megapixel. The model itself, the masks at full resolution and
the writers come on top (see benchmarks/segment_memory.py for whole runs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

MIB = 1 << 20


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset VmHWM (the peak RSS) to the current RSS (Linux >= 4.0): the import of torch leaves a
    high-water mark that a single frame would not exceed."""
    Path("/proc/self/clear_refs").write_text("5")


def _image(w: int, h: int) -> np.ndarray:
    """Smooth gradients plus noise: compresses like a photo, not like a flat image."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    base = np.stack([(x * 255 // max(1, w - 1)), (y * 255 // max(1, h - 1)), ((x + y) % 256)], -1)
    return np.clip(base + rng.integers(-20, 21, (h, w, 1)), 0, 255).astype(np.uint8)


def make_inputs(folder: Path, mp: float, video_mp: float) -> dict[str, Path]:
    import av
    from PIL import Image

    w = int(round((mp * 1e6 * 4 / 3) ** 0.5))
    h = int(round(mp * 1e6 / w))
    paths = {"jpeg": folder / "big.jpg", "png": folder / "big.png", "tiny": folder / "tiny.png"}
    image = _image(w, h)
    Image.fromarray(image).save(paths["jpeg"], quality=90)
    Image.fromarray(image).save(paths["png"], compress_level=1)
    Image.fromarray(image[:32, :32]).save(paths["tiny"])
    del image
    vw = int(round((video_mp * 1e6 * 16 / 9) ** 0.5)) // 2 * 2
    vh = int(round(video_mp * 1e6 / vw)) // 2 * 2
    paths["mp4"] = folder / "big.mp4"
    frame = _image(vw, vh)
    with av.open(str(paths["mp4"]), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(1))
        s.width, s.height, s.pix_fmt = vw, vh, "yuv420p"
        s.options = {"preset": "ultrafast"}
        for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    return paths


def measure(path: str, tiny: str) -> dict:
    """In this process: peak RSS increase of reading + preprocessing the first frame of `path`."""
    from entitysam.inference.preprocess import preprocess_frame
    from entitysam.io.sources import open_source

    for frame in open_source(tiny, max_pixels=None):  # warm-up: libraries loaded, lazy imports done
        preprocess_frame(frame.image, 1024)
    _reset_peak()
    before = _status_bytes("VmRSS")
    source = open_source(path, max_pixels=None)
    frame = next(iter(source))
    h, w = frame.size
    x = preprocess_frame(frame.image, 1024)
    peak = _status_bytes("VmHWM")
    del x, frame
    mp = w * h / 1e6
    return {"input": Path(path).name, "size": f"{w}x{h}", "megapixels": round(mp, 2),
            "peak_increase_mib": round((peak - before) / MIB, 1),
            "mib_per_megapixel": round((peak - before) / MIB / mp, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mp", type=float, default=24.0, help="megapixels of the test images (default 24)")
    p.add_argument("--video-mp", type=float, default=8.3, help="megapixels of the test video (default 8.3, 4K)")
    p.add_argument("--measure", nargs=2, metavar=("PATH", "TINY"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_inputs(Path(tmp), args.mp, args.video_mp)
        for kind in ("jpeg", "png", "mp4"):
            out = subprocess.run([sys.executable, __file__, "--measure", str(paths[kind]), str(paths["tiny"])],
                                 capture_output=True, text=True, check=True)
            print(out.stdout.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
