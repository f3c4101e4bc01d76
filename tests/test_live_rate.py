"""A live stream's frame rate in an online result: FFmpeg's guess at opening is wrong for streams
whose codec declares no rate (millisecond timestamps: 29.83 for 30 frames/s; a burst of first
frames: 1000 or 2000 frames/s), and the viewer played such a result 30-60 times too fast. The
final manifest now takes the rate the frames written had (their own times)."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from fractions import Fraction

import pytest

from _media import scene
from entitysam.io.overlay import frames_rate
from entitysam.io.stream_files import read_jsonl

BURST_MS = [0, 1, 2, 3] + [33 * k for k in range(1, 61)]  # 64 frames over 1.98 s
BURST_RATE = 63 / 1.98
MS_30 = [round(1000 * k / 30) for k in range(40)]  # 30 frames/s, timestamps rounded to ms (RTMP/FLV)


def _ts(times_ms: list[int], codec: str = "mpeg4") -> bytes:
    """An MPEG-TS whose codec declares no rate (time base 1/1000), frames at `times_ms`."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        video = out.add_stream(codec, rate=30)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(scene(i), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for p in video.encode(frame):
                out.mux(p)
        for p in video.encode(None):
            out.mux(p)
    return buf.getvalue()


@contextlib.contextmanager
def _serve(data: bytes):
    """`data` as an HTTP response to every connection; yields the URL. All of it is sent at once:
    how fast frames arrive depends on nothing but the reader."""
    head = f"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nContent-Length: {len(data)}\r\n\r\n".encode()

    def answer(conn):
        with conn, contextlib.suppress(OSError):
            conn.recv(4096)
            conn.sendall(head + data)

    def accept(server):
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        threading.Thread(target=accept, args=(server,), daemon=True).start()
        yield f"http://127.0.0.1:{server.getsockname()[1]}/live.ts"


def _written_rate(out) -> float:
    times = [rec["time"] for rec in read_jsonl(out / "entities.jsonl")]
    return frames_rate(times[0], times[-1], len(times))


def test_frames_rate():
    assert frames_rate(0, MS_30[-1] / 1000, len(MS_30)) == 30.0  # 29.998: the span is 1 ms off at most
    ntsc = [round(1000 * k * 1001 / 30000) / 1000 for k in range(300)]
    assert frames_rate(ntsc[0], ntsc[-1], 300) == 30000 / 1001
    assert frames_rate(0, 1.98, 64) == pytest.approx(BURST_RATE, rel=1e-4)
    assert frames_rate(0, 0.4, 5) == 10.0
    assert frames_rate(0, 1e6, 3) == 0.001  # within what the overlay's time base represents
    assert frames_rate(0, 0.0001, 3) == 1000.0
    for first, last, n in ((0, 1, 1), (0, 1, 0), (1, 1, 5), (2, 1, 5), (0, float("nan"), 5), (0, float("inf"), 5)):
        assert frames_rate(first, last, n) is None
