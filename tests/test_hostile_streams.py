"""Live streams that stall or break while their frames are read: each ends with one clear error
within the read timeout, never a hang, and online mode keeps the frames done. Streams that cannot
be opened: test_hostile_inputs.py."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from fractions import Fraction

import numpy as np
import pytest

from _blocking import within
from _media import scene
from entitysam.errors import SourceError
from entitysam.io.sources import LiveSource


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _SocketFile:
    """The write side of a connection, as PyAV's muxer wants it."""

    def __init__(self, conn: socket.socket):
        self.conn = conn

    def write(self, data) -> int:
        self.conn.sendall(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def _send_video_then_audio_only(conn: socket.socket, frames: int, stop: threading.Event,
                                codec: str = "mpeg2video") -> None:
    """An MPEG-TS over HTTP whose video stops after `frames` frames while its audio goes on (a
    camera whose video encoder died, a broadcast that lost its picture): packets keep coming, so
    FFmpeg's read timeout, which needs silence, never fires. codec: mpeg2video (intra-only) or
    libx264 (a camera's)."""
    import av

    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n\r\n")
    # Packets are written as they come (no interleaving queue holding the audio back).
    out = av.open(_SocketFile(conn), "w", format="mpegts", options={"max_interleave_delta": "1"})
    video = out.add_stream(codec, rate=Fraction(10))
    video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
    if codec == "libx264":
        video.options = {"tune": "zerolatency"}  # each frame is sent at once
    else:
        video.gop_size = 1
    audio = out.add_stream("mp2", rate=44100)
    silence = np.zeros((1, 1152), np.int16)
    t = 0
    while not stop.is_set():
        if t <= frames:  # the frames, then the encoder's last ones: `frames` in all are sent
            for p in video.encode(av.VideoFrame.from_ndarray(scene(t), format="rgb24") if t < frames else None):
                out.mux(p)
        chunk = av.AudioFrame.from_ndarray(silence, format="s16", layout="mono")
        chunk.sample_rate, chunk.pts = 44100, t * 1152
        for p in audio.encode(chunk):
            out.mux(p)
        t += 1
        time.sleep(0.02)


def _clip_ts(frames: int) -> bytes:
    """An MPEG-TS of `frames` intra-only frames (mpeg2video)."""
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        video = out.add_stream("mpeg2video", rate=Fraction(10))
        video.width, video.height, video.pix_fmt, video.gop_size = 64, 48, "yuv420p", 1
        for t in range(frames):
            for p in video.encode(av.VideoFrame.from_ndarray(scene(t), format="rgb24")):
                out.mux(p)
        for p in video.encode():
            out.mux(p)
    return buf.getvalue()


def _send_then(conn: socket.socket, data: bytes, then: str, stop: threading.Event) -> None:
    """A stream over HTTP/1.1 (no length: it could go on), then `then`: "stall" (nothing more,
    the connection kept open) or "close" (the connection closed without ending the response)."""
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n\r\n" + data)
    if then == "stall":
        stop.wait()


@contextlib.contextmanager
def _server(send, *args, **kwargs):
    """An HTTP stream server on 127.0.0.1 running `send(conn, *args, stop, **kwargs)` for each
    connection; yields its URL; stops sending when the block ends."""
    stop = threading.Event()

    def serve(conn):
        with conn, contextlib.suppress(OSError):
            send(conn, *args, stop, **kwargs)

    def accept(server):
        with contextlib.suppress(OSError):
            while not stop.is_set():
                conn, _ = server.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        threading.Thread(target=accept, args=(server,), daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.getsockname()[1]}/live.ts"
        finally:
            stop.set()


@pytest.mark.parametrize("codec", ["mpeg2video", "libx264"])
def test_a_stream_whose_video_stops_while_its_audio_goes_on_times_out(codec):
    """It used to wait for ever: FFmpeg's read timeout only fires when nothing at all arrives.
    Every frame sent comes out before the error: the last two were lost, held by the MPEG-TS
    demuxer (a video packet ends when the next one starts) and the parser."""
    with _server(_send_video_then_audio_only, 8, codec=codec) as url:
        source = LiveSource(url, timeout=(10.0, 1.0))
        frames = []
        with pytest.raises(SourceError) as caught:
            within(60, lambda: frames.extend(source))
    assert [f.index for f in frames] == list(range(8))
    assert [round(f.time, 6) for f in frames] == [i / 10 for i in range(8)]  # the last ones' too (not NaN)
    errors = [np.abs(frames[-1].image.astype(int) - scene(t)).mean() for t in range(8)]
    assert int(np.argmin(errors)) == 7  # the last frame's picture
    assert str(caught.value) == (f"the stream {url} could not be read after frame 7: no video frame "
                                 "within 1 s (timed out: data came, but no video frame it can decode)")


@pytest.mark.parametrize("then, cause", [
    ("stall", "no answer within 1 s (timed out)"),
    # It said "... closed before a stream was received", after frames had been received.
    ("close", "input/output error (the connection failed or was closed while the stream was being received)")])
def test_a_stream_that_stalls_or_closes_mid_stream(then, cause):
    """Every frame received comes out before the error: the decoder's frame threads held the last
    ones back, and they were lost with the stream."""
    with _server(_send_then, _clip_ts(20), then) as url:
        source = LiveSource(url, timeout=(10.0, 1.0))
        frames = []
        with pytest.raises(SourceError) as caught:
            within(60, lambda: frames.extend(source))
    assert [f.index for f in frames] == list(range(20))
    assert [round(f.time, 6) for f in frames] == [i / 10 for i in range(20)]  # the last ones' too (not NaN)
    assert str(caught.value) == f"the stream {url} could not be read after frame 19: {cause}"


def test_online_run_on_such_a_stream_fails_and_keeps_the_frames_done(tiny_model, tmp_path):
    from entitysam.pipeline.stream import stream

    out = tmp_path / "out"
    with _server(_send_video_then_audio_only, 6) as url:
        source = LiveSource(url, timeout=(10.0, 1.0))

        def run():
            with stream(tiny_model, source, output=out, live=False) as s:
                return [r.frame.index for r in s]

        with pytest.raises(SourceError, match="no video frame within 1 s"):
            within(120, run)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "no video frame within 1 s" in manifest["error"]
    assert manifest["complete"] is False and manifest["frames_processed"] >= 1
    lines = (out / "entities.jsonl").read_text().splitlines()
    assert len(lines) == manifest["frames_emitted"] == manifest["frames_processed"]
