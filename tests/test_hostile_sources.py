"""Hostile or unusual video files read without a traceback, a hang or a false error: metadata
that is not UTF-8, headers that declare absurd lengths, variable frame rates. Special files,
size limits and streams: test_hostile_inputs.py."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import pytest

from _cli import run_cli
from _media import scene
from entitysam.io.sources import open_source
from entitysam.io.sources.video_seek import VideoSeek


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def within(seconds, fn, *args):
    """fn(*args) on a daemon thread; fails if it has not returned or raised within `seconds`."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"{fn.__name__} blocked for more than {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _write_with_title(path: Path, n: int = 4) -> Path:
    """A video whose container and stream titles hold a byte that is not UTF-8 (0xff)."""
    import av

    with av.open(str(path), "w") as c:
        c.metadata["title"] = "QQQQQQQQ"
        s = c.add_stream("libx264", rate=Fraction(10))
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.metadata["title"] = "ZZZZZZZZ"
        for t in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(scene(t), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = path.read_bytes()
    assert data.count(b"QQQQQQQQ") == 1 and data.count(b"ZZZZZZZZ") == 1
    path.write_bytes(data.replace(b"QQQQQQQQ", b"Q\xffQQQQQQ").replace(b"ZZZZZZZZ", b"Z\xe9ZZZZZZ"))
    return path


@pytest.mark.parametrize("ext", [".mkv", ".mp4"])
def test_metadata_that_is_not_utf8(tmp_path, tiny_checkpoint, ext):
    """Latin-1 (or hostile) metadata tags: PyAV raised UnicodeDecodeError from the open, a traceback."""
    video = _write_with_title(tmp_path / f"title{ext}")
    assert [f.name for f in open_source(video)] == ["000000", "000001", "000002", "000003"]
    assert len(list(VideoSeek(video).frames())) == 4
    r = run_cli(video, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "-q")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "out" / "title" / "manifest.json").is_file()
