"""Video files whose timestamps do not start at 0 or do not always increase: recordings cut from a
longer stream keep their timestamps, recordings joined into one file restart theirs. Frame times
count from the first frame and always increase, so that seconds select the frames a player shows
there, and such a file is not taken for a truncated one."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from _cli import run_cli
from _media import scene
from entitysam.errors import SourceError
from entitysam.io.sources import FrameSelection, open_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_stamped(path: Path, stamps: list[int]) -> Path:
    """A Matroska video of intra-coded frames shown at `stamps` (tenths of a second), in this order.
    The muxer wants increasing decoding stamps: frame i is decoded at i, shown at stamps[i] >= i."""
    import av

    assert all(s >= i for i, s in enumerate(stamps))
    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=Fraction(10))
        s.width, s.height, s.pix_fmt = 64, 48, "yuvj420p"
        s.time_base = Fraction(1, 10)
        packets = [p for t in range(len(stamps)) for p in s.encode(av.VideoFrame.from_ndarray(scene(t), format="rgb24"))]
        packets += list(s.encode())
        for i, (p, stamp) in enumerate(zip(packets, stamps)):
            p.pts, p.dts = stamp, i
            c.mux(p)
    return path


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
