"""How many frames a live source holds back: a sender that waits for the reader's frames before
sending more (a camera's frames arrive one at a time, each only after the previous ones) must
never wait on frames the reader already received. Counts, not speeds: nothing here depends on
how fast this machine is, only the read timeout bounds a wait."""

from __future__ import annotations

import contextlib
import socket
import threading
from fractions import Fraction

import numpy as np
import pytest

from _blocking import within
from _media import scene
from entitysam.io.sources import LiveSource


pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAMES = 40
# Frames the sender hands over without waiting, before the lockstep: enough for any open (FFmpeg's
# frame rate probe read 20 before LiveSource asked for 3), so that the lockstep measures the decoding.
OPENING = 25


class _Collect:
    def __init__(self):
        self.data = bytearray()

    def write(self, data) -> int:
        self.data += bytes(data)
        return len(data)

    def flush(self) -> None:
        pass


def _ts_packets(codec: str, frames: int) -> list[bytes]:
    """An MPEG-TS, cut after each video packet (in decode order; the first piece also holds the
    stream's header). codec: mpeg2video (intra-only), libx264 (zerolatency: no B-frames, as a
    camera sends) or libx264-bframes (x264's defaults: B-frames, reordered by the decoder)."""
    import av

    sink = _Collect()
    # flush_packets: each packet is written out when muxed, so a cut falls between two packets.
    out = av.open(sink, "w", format="mpegts", options={"flush_packets": "1"})
    video = out.add_stream(codec.split("-")[0], rate=Fraction(10))
    video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
    if codec == "libx264":
        video.options = {"tune": "zerolatency"}
    elif codec == "mpeg2video":
        video.gop_size = 1
    pieces, cut = [], 0
    for t in range(frames + 1):
        for packet in video.encode(av.VideoFrame.from_ndarray(scene(t), format="rgb24") if t < frames else None):
            out.mux(packet)
            pieces.append(bytes(sink.data[cut:]))
            cut = len(sink.data)
    out.close()
    pieces[-1] += bytes(sink.data[cut:])
    assert len(pieces) == frames
    return pieces


@contextlib.contextmanager
def _lockstep_server(pieces: list[bytes], held: int, frames_out):
    """An HTTP stream server sending piece j only once `frames_out()` >= j - held: at most `held`
    frames sent are not out of the reader when the next is sent. A wait that ends without the
    reader's frame (it held more) is recorded in the yielded list and ends the sending."""
    stalls, stop = [], threading.Event()

    def serve(server):
        conn, _ = server.accept()
        with conn, contextlib.suppress(OSError):
            conn.recv(4096)
            length = sum(map(len, pieces))  # the stream ends after the last piece, not in an error
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nContent-Length: {length}\r\n\r\n".encode())
            for j, piece in enumerate(pieces):
                if j >= OPENING and not frames_out.wait_for(j - held, stop):
                    stalls.append((j, frames_out.count))
                    return
                conn.sendall(piece)

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        threading.Thread(target=serve, args=(server,), daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.getsockname()[1]}/live.ts", stalls
        finally:
            stop.set()


class _Counter:
    def __init__(self):
        self.count = 0
        self._cond = threading.Condition()

    def add(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait_for(self, n: int, stop: threading.Event) -> bool:
        with self._cond:
            # Generous: the reader's read timeout (10 s) fails it long before.
            return self._cond.wait_for(lambda: self.count >= n or stop.is_set(), 60) and not stop.is_set()

    def __call__(self) -> int:
        return self.count


# Frames held back by the reader on a live MPEG-TS: the demuxer ends a video packet only when the
# next one starts and the parser a frame only when the next begins (2), plus the decoder's own
# delay: none for zerolatency H.264, 1 for MPEG-2 (a picture waits for the next reference picture
# unless the stream says it has no B-frames), 2 for x264's B-frames (the reordering). Frame
# threading held one more frame per thread (2 more on 2 cores, 16 on a big machine).
@pytest.mark.parametrize("codec, held", [("mpeg2video", 3), ("libx264", 2), ("libx264-bframes", 4)])
def test_a_live_stream_holds_back_only_the_frames_its_format_needs(codec, held):
    pieces = _ts_packets(codec, FRAMES)
    out = _Counter()
    frames = []

    def read():
        for frame in LiveSource(url, timeout=(10.0, 10.0)):
            frames.append(frame)
            out.add()

    with _lockstep_server(pieces, held, out) as (url, stalls):
        within(120, read)
    assert stalls == []
    assert [f.index for f in frames] == list(range(FRAMES))
    for t in (0, FRAMES // 2, FRAMES - 1):  # in display order, with their pictures
        errors = [np.abs(frames[t].image.astype(int) - scene(k)).mean() for k in range(FRAMES)]
        assert int(np.argmin(errors)) == t


def test_frames_sent_before_a_stall_come_out_while_the_stream_is_being_opened():
    """The open read 20 frames to estimate the frame rate: a stream that stalled after 8 (a camera
    whose encoder hiccups as the connection starts, a congested network) kept those in the open
    until its timeout (60 s here), and only then handed them on. Now all but the two the MPEG-TS
    demuxer and parser hold come out at once, with the rate still found."""
    pieces = _ts_packets("libx264", 8)
    stop = threading.Event()

    def serve(server):
        conn, _ = server.accept()
        with conn, contextlib.suppress(OSError):
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n\r\n" + b"".join(pieces))
            stop.wait()

    def first_six():
        source = LiveSource(url, timeout=(60.0, 60.0))
        frames = []
        for frame in source:
            frames.append(frame)
            if len(frames) == 6:
                return source, frames

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        threading.Thread(target=serve, args=(server,), daemon=True).start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/live.ts"
        try:
            source, frames = within(30, first_six)  # well before either timeout
        finally:
            stop.set()
    assert source.fps == 10
    assert [f.index for f in frames] == list(range(6))
    assert [round(f.time, 6) for f in frames] == [i / 10 for i in range(6)]
