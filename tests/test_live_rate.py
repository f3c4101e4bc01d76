"""A live stream's frame rate in an online result: FFmpeg's guess at opening is wrong for streams
whose codec declares no rate (millisecond timestamps: 29.83 for 30 frames/s; a burst of first
frames: 1000 or 2000 frames/s), and the viewer played such a result 30-60 times too fast. The
final manifest now takes the rate the frames written had (their own times)."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
from fractions import Fraction

import pytest

from _blocking import within
from _cli import run_cli
from _media import scene
from entitysam.io.overlay import frames_rate
from entitysam.io.sources import LiveSource
from entitysam.io.stream_files import read_jsonl

BURST_MS = [0, 1, 2, 3] + [33 * k for k in range(1, 61)]  # 64 frames over 1.98 s
BURST_RATE = 63 / 1.98
# The command-line test runs the (slower) demo model: 24 frames of the burst, over 0.66 s
CLI_BURST_MS = BURST_MS[:24]
CLI_BURST_RATE = 23 / 0.66
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


@pytest.mark.parametrize("times, expected", [(BURST_MS, BURST_RATE), (MS_30, 30.0)], ids=["burst", "ms-30"])
def test_online_result_of_a_stream_without_a_declared_rate_has_its_frames_rate(tiny_model, tmp_path, times,
                                                                                expected):
    """It said 1000 (burst) or 29.83 (ms timestamps): FFmpeg's guess at opening."""
    from entitysam.pipeline.stream import stream

    out = tmp_path / "out"
    with _serve(_ts(times)) as url:
        source = LiveSource(url)
        assert source.native_fps != pytest.approx(expected, abs=0.01)  # the guess is wrong (the premise)

        def run():
            with stream(tiny_model, source, output=out, live=False) as s:
                for _ in s:
                    if s.emitted == 1:
                        running.append(json.loads((out / "manifest.json").read_text()))
            return s.manifest

        running = []
        manifest = within(300, run)
    assert manifest["status"] == "complete" and manifest["num_frames"] == len(times)
    assert manifest["fps"] == pytest.approx(expected, rel=1e-4)
    assert "fps_provisional" not in manifest
    # the manifest written while it runs has the guess, and says it is one
    assert running[0]["status"] == "running" and running[0]["fps"] == source.native_fps
    assert running[0]["fps_provisional"] is True


def test_a_given_rate_and_an_offline_like_input_are_kept(tiny_model, tmp_path):
    """--fps (fps=) is the user's word; a video file's container rate is right: neither changes."""
    from _media import write_video

    from entitysam.pipeline.stream import stream

    with _serve(_ts(BURST_MS[:12])) as url:
        with stream(tiny_model, url, fps=12.5, output=tmp_path / "given", live=False) as s:
            for _ in s:
                pass
    assert s.manifest["fps"] == 12.5 and "fps_provisional" not in s.manifest
    video = write_video(tmp_path / "v.mp4", 6, fps=7)
    with stream(tiny_model, video, output=tmp_path / "file", live=True) as s:
        for _ in s:
            pass
    assert s.manifest["fps"] == 7.0


def test_cli_online_run_of_a_burst_stream_plays_at_its_rate_in_the_viewer(tmp_path):
    """End to end: `segment --online` of a stream FFmpeg guesses at 1000 frames/s; the manifest and
    the viewer's /api/video (the player's period is 1000 / fps ms) said 1000."""
    pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
    pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")
    from starlette.testclient import TestClient

    from entitysam.review.result import ResultFolder
    from entitysam.review.server import Viewer, create_app

    out = tmp_path / "out"
    with _serve(_ts(CLI_BURST_MS)) as url:
        # --no-live: no frame dropped, however slow this machine is (the frames arrive at once)
        done = run_cli(url, "--online", "--no-live", "--model", "demo", "--device", "cpu", "-o", out, "-q",
                       timeout=600)
        assert done.returncode == 0, done.stderr
        (out,) = out.iterdir()  # DIR/<video-name>/
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["num_frames"] == len(CLI_BURST_MS) and manifest["dropped_frames"] == 0
        assert 30 < manifest["fps"] < 36 and manifest["fps"] == pytest.approx(CLI_BURST_RATE, rel=1e-4)
        assert manifest["fps"] == _written_rate(out)

        live = tmp_path / "live"  # live (the default): frames may be dropped, the rate is of those kept
        done = run_cli(url, "--online", "--model", "demo", "--device", "cpu", "-o", live, "-q", timeout=600)
        assert done.returncode == 0, done.stderr
        (live,) = live.iterdir()
        live_fps = json.loads((live / "manifest.json").read_text())["fps"]
        assert 0 < live_fps < 36 and live_fps == _written_rate(live)
    assert ResultFolder.open(out).fps == manifest["fps"]
    with TestClient(create_app(Viewer(out, token="t"), loopback_only=True)) as client:
        assert client.get("/api/video").json()["fps"] == manifest["fps"]
