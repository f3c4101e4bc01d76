"""Video files whose timestamps do not start at 0 or do not always increase: recordings cut from a
longer stream keep their timestamps, recordings joined into one file restart theirs. Frame times
count from the first frame and go on where the stamps restart, so that seconds select the frames a
player shows there, and such a file is not taken for a truncated one; stamps merely out of order
keep their own times."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from _cli import run_cli
from _media import scene, write_stamped_mkv, write_video
from entitysam.errors import SourceError
from entitysam.io.sources import FrameSelection, open_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_stamped(path: Path, stamps: list[int]) -> Path:
    """A Matroska video of intra-coded frames shown at `stamps` (tenths of a second), in this order,
    frame i decoded at i (stamps[i] >= i)."""
    assert all(s >= i for i, s in enumerate(stamps))
    return write_stamped_mkv(path, stamps, decoded_at=range(len(stamps)))


def test_a_matroska_file_whose_timestamps_start_late_is_read_whole(tmp_path):
    """Frames at 10.0-10.7 s: FFmpeg's duration of a Matroska file runs from 0 to its end (10.8 s),
    the frame count estimated from it was 108, and the complete file was refused as truncated."""
    video = _write_stamped(tmp_path / "cut.mkv", list(range(100, 108)))
    source = open_source(video)
    assert source.total_frames() == 8
    assert [round(f.time, 6) for f in source] == [i / 10 for i in range(8)]
    # Cut short after its fourth frame, it still is truncated: 4 frames over the 0.8 s it declares.
    import av

    with av.open(str(video)) as c:
        fifth = [p.pos for p in c.demux(video=0) if p.size][4]
    short = tmp_path / "short.mkv"
    short.write_bytes(video.read_bytes()[:fifth])
    with pytest.raises(SourceError, match=r"short.mkv: truncated or corrupt video: its header announces 8 frames "
                                          r"but only 4 could be decoded"):
        list(open_source(short))


def test_recordings_joined_into_one_file_go_on_in_time(tmp_path, tiny_checkpoint):
    """Two 0.5 s recordings joined: the second's timestamps restart (1.0-1.4 s, then 1.0-1.4 s
    again). Times went back to 0, and --end 0.45s took the whole second recording too, --start
    0.25s the end of each, without a word."""
    video = _write_stamped(tmp_path / "joined.mkv", [10, 11, 12, 13, 14] * 2)
    assert [round(f.time, 6) for f in open_source(video)] == [i / 10 for i in range(10)]
    assert [f.index for f in open_source(video, FrameSelection(end="0.45s"))] == [0, 1, 2, 3, 4]
    assert [f.index for f in open_source(video, FrameSelection(start="0.25s"))] == list(range(3, 10))
    # Gone back further than a second (a recording of 4 s, then one of 1 s): the times go on from there.
    longer = _write_stamped(tmp_path / "longer.mkv", [40, 41, 42, 43, 44, 10, 11])
    assert [round(f.time, 6) for f in open_source(longer)] == [i / 10 for i in range(7)]

    out = tmp_path / "out"
    r = run_cli(video, "-o", out, "--checkpoint", tiny_checkpoint, "-q", "--end", "0.45s", "--save", "entities")
    assert r.returncode == 0, r.stderr
    frames = json.loads((out / "joined" / "entities.json").read_text())["frames"]
    assert [(f["source_frame"], f["time"]) for f in frames] == [(i, i / 10) for i in range(5)]


def test_frames_of_a_file_without_timestamps_are_a_period_apart():
    """In a file, a frame without a timestamp is one period after the one before (read as fast as it
    decodes, the wall clock says nothing of it); stamps that come back go on from there."""
    from entitysam.io.sources.clock import FrameClock

    clock = FrameClock(0.1, wall_clock=False)
    assert [round(clock.time(s), 6) for s in (None, None, 5.0, 5.1, float("nan"), 5.3, 2.0)] == [
        0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def test_stamps_out_of_order_neither_drift_nor_go_back(tmp_path, tiny_checkpoint):
    """AVI holding H.264 with B-frames: FFmpeg gives the frames in display order with stamps out of
    order (0.0, 0.2, 0.3, 0.1, ...). Counted a period after the frame before, each such frame pushed
    every later time further (60 frames at 10 frames/s ran to 10 s; with --fps 2 to 9.6 s of 6, and
    --end 10s kept 24 of the 60 frames); kept at their own times, the times went back and a --start in
    seconds dropped a frame inside the selection. Now a millisecond after the latest: in order, late by
    at most the reordering's depth."""
    import av

    video = write_video(tmp_path / "bframes.avi", 60, fps=10)
    with av.open(str(video)) as c:
        stamps = [f.time for f in c.decode(video=0)]
    assert stamps != sorted(stamps), "the test needs stamps out of order"
    times = [f.time for f in open_source(video)]
    assert all(b > a for a, b in zip(times, times[1:]))
    assert max(abs(t - i / 10) for i, t in enumerate(times)) < 0.35 and times[-1] < 5.95
    assert [f.time for f in open_source(video, fps=2)] == times  # stamps there: --fps does not move them
    assert [f.index for f in open_source(video, FrameSelection(start="0.15s", end="0.65s"))] == [1, 2, 3, 4]  # in a row
    assert len(list(open_source(video, FrameSelection(end="10s"), fps=2))) == 60
    out = tmp_path / "out"
    r = run_cli(video, "-o", out, "--checkpoint", tiny_checkpoint, "-q", "--fps", "2", "--end", "10s",
                "--save", "entities")
    assert r.returncode == 0, r.stderr
    assert len(json.loads((out / "bframes" / "entities.json").read_text())["frames"]) == 60


def test_a_late_video_beside_an_early_audio_track_is_read_whole(tmp_path):
    """Video from 10 s, audio from 0 s: the late start was taken from the container (the audio's 0),
    so the Matroska duration (to 13.9 s) announced 140 frames and the complete 40 were refused."""
    import av
    import numpy as np

    path = tmp_path / "late.mkv"
    with av.open(str(path), "w") as c:
        v = c.add_stream("mjpeg", rate=Fraction(10))
        v.width, v.height, v.pix_fmt, v.time_base = 64, 48, "yuvj420p", Fraction(1, 10)
        a = c.add_stream("pcm_s16le", rate=8000)
        a.layout = "mono"
        for t in range(40):
            for p in v.encode(av.VideoFrame.from_ndarray(scene(t), format="rgb24")):
                p.pts = p.dts = 100 + t
                c.mux(p)
            if t < 10:
                f = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
                f.sample_rate, f.pts, f.time_base = 8000, t * 800, Fraction(1, 8000)
                for p in a.encode(f):
                    c.mux(p)
        for stream in (v, a):
            for p in stream.encode():
                c.mux(p)
    assert [round(f.time, 6) for f in open_source(path)] == [i / 10 for i in range(40)]


def test_a_video_shorter_than_its_audio_track_is_read_whole(tmp_path):
    """Video for 2 s, audio for 6 s: Matroska states no duration per stream, the file's (the audio's
    end) announced 60 frames, and the complete 20 were refused as a truncated video. The same file cut
    short still is one: every stream ends early."""
    path = _noise_video(tmp_path / "long_audio.mkv", "mjpeg", "yuvj420p", 20, rate=10, audio_frames=60)
    assert [round(f.time, 6) for f in open_source(path)] == [i / 10 for i in range(20)]
    data = path.read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"cut.mkv: truncated or corrupt video"):
        list(open_source(tmp_path / "cut.mkv"))


def _noise_video(path: Path, codec: str, pix_fmt: str, n: int, rate: int = 25, audio_frames: int = 0) -> Path:
    """`n` frames of noise (bytes spread evenly over the file), with a silent audio track as long as
    `audio_frames` frames (none for 0)."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=rate)
        v.width, v.height, v.pix_fmt = 64, 48, pix_fmt
        a = c.add_stream("pcm_s16le", rate=8000) if audio_frames else None
        if a is not None:
            a.layout = "mono"
        for t in range(max(n, audio_frames)):
            if t < n:
                image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = t
                for p in v.encode(frame):
                    c.mux(p)
            if t < audio_frames:
                f = av.AudioFrame.from_ndarray(np.zeros((1, 8000 // rate), np.int16), format="s16", layout="mono")
                f.sample_rate, f.pts, f.time_base = 8000, t * (8000 // rate), Fraction(1, 8000)
                for p in a.encode(f):
                    c.mux(p)
        for stream in (v, a) if a is not None else (v,):
            for p in stream.encode():
                c.mux(p)
    return path


def test_an_avi_cut_short_is_still_refused(tmp_path):
    """An AVI recording stopped mid-write loses its index: FFmpeg then estimates the stream's duration
    from the bytes left, which the relaxations for edit lists (MP4 only) and for AVI's skipped frames
    took as the length to reach: 80 of 100 frames were read without a word."""
    import av

    path = _noise_video(tmp_path / "r.avi", "mpeg4", "yuv420p", 100)
    with av.open(str(path)) as c:
        offsets = [p.pos for p in c.demux(video=0) if p.size]
    (tmp_path / "cut.avi").write_bytes(path.read_bytes()[: offsets[80] - 8])  # before frame 80's chunk
    assert len(list(open_source(path))) == 100
    with pytest.raises(SourceError, match=r"cut.avi: truncated or corrupt video: its header announces 100 frames"):
        list(open_source(tmp_path / "cut.avi"))


def test_a_matroska_file_with_audio_cut_near_its_end_is_still_refused(tmp_path):
    """The audio track's end, where the file's duration is the audio's, allows one frame of slack, not
    the count check's 5% again: a file cut before its 95th frame (6 of 100 lost, one more than the
    count's tolerance) was read without a word."""
    import av

    path = _noise_video(tmp_path / "a.mkv", "mjpeg", "yuvj420p", 100, audio_frames=100)
    assert len(list(open_source(path))) == 100
    with av.open(str(path)) as c:
        offsets = [p.pos for p in c.demux(video=0) if p.size]
    (tmp_path / "cut.mkv").write_bytes(path.read_bytes()[: offsets[94]])
    with pytest.raises(SourceError, match=r"cut.mkv: truncated or corrupt video"):
        list(open_source(tmp_path / "cut.mkv"))
