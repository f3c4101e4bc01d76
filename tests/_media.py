"""Generated inputs for the segment tests: a tiny mp4, frame folders, images, a tiny checkpoint."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

W, H = 64, 48
FPS = 10


def scene(t: int, w: int = W, h: int = H) -> np.ndarray:
    """Two squares moving over a flat background (entities the tiny model separates)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = (30, 60, 90)
    a[5:25, 5 + t:25 + t] = (250, 40, 40)
    a[25:45, max(0, 35 - t):60 - t] = (40, 250, 40)
    return a


def write_video(path: Path, n: int, fps: int = FPS, codec: str = "libx264", size=(W, H), options=None,
                noise: bool = False) -> Path:
    """noise=True: random pixels, so that every frame takes about the same number of bytes."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height = size
        s.pix_fmt = "yuv420p"
        for t in range(n):
            image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) if noise else scene(t, *size)
            for p in s.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_frames(folder: Path, names, ext: str = ".jpg") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t, name in enumerate(names):
        Image.fromarray(scene(t)).save(folder / f"{name}{ext}", quality=95)
    return folder


def tiny_state_dict() -> dict:
    """The tiny config with weights that give a couple of entities on `scene` videos."""
    from entitysam.config import get_config
    from entitysam.modeling.entitysam import EntitySAM

    torch.manual_seed(4)
    model = EntitySAM(get_config("tiny")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("queries.weight", "offset_embedding.weight", "point_embeddings.1.weight")):
                p.normal_().mul_(3)
    return model.state_dict()


def link_into(folder: Path, path: Path) -> Path:
    """`folder/<path.name>` as a symbolic link to `path` (a session-wide test file, see
    conftest.py): a module's media folder keeps the names its tests use without writing the file again."""
    link = folder / path.name
    link.symlink_to(path)
    return link


def read_only_frame(path, **kw) -> np.ndarray:
    """The one frame of an image source, read with Pillow's warnings (palette transparency, bombs)
    turned into errors: none of them may surface."""
    import warnings

    from entitysam.io.sources import open_source

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frames = list(open_source(path, **kw))
    assert len(frames) == 1
    return frames[0].image


def write_stamped_mkv(path: Path, stamps, decoded_at=None) -> Path:
    """A Matroska video of intra-coded 64x48 frames shown at `stamps` (tenths of a second), in this
    order; decoded at `decoded_at` (default: the stamps). The muxer wants increasing decoding stamps."""
    import av

    stamps = list(stamps)
    decoded_at = stamps if decoded_at is None else list(decoded_at)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=Fraction(10))
        s.width, s.height, s.pix_fmt = 64, 48, "yuvj420p"
        s.time_base = Fraction(1, 10)
        packets = [p for t in range(len(stamps)) for p in s.encode(av.VideoFrame.from_ndarray(scene(t), format="rgb24"))]
        packets += list(s.encode())
        for p, stamp, dts in zip(packets, stamps, decoded_at):
            p.pts, p.dts = stamp, dts
            c.mux(p)
    return path


_REFUSING: list[socket.socket] = []


def refusing_port() -> int:
    """A port of 127.0.0.1 that refuses connections for the rest of the session: bound, never
    listening. (A port bound and closed again may be taken meanwhile by another test or worker,
    which then answers.)"""
    if not _REFUSING:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        _REFUSING.append(s)
    return _REFUSING[0].getsockname()[1]


@contextlib.contextmanager
def serving(data: bytes) -> Iterator[int]:
    """A local HTTP server that answers every GET with `data` (with its length) while the block
    runs; yields its port on 127.0.0.1."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
