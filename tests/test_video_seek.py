"""Random access to a video's frames by keyframe seek (io.sources.video_seek) and its use by the
viewer's SourceFrames: exact frames (compared to a sequential decode), about one GOP decoded per
far jump, and the pass from the start when the pts cannot be trusted."""

from __future__ import annotations

import os
import random
from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")

from _blocking import release_readers, swap_for_a_pipe, within  # noqa: E402
from entitysam.io.sources import FrameSelection, open_source  # noqa: E402

N = 150
GOP = 12
W, H = 64, 48


def indexed_image(i: int) -> np.ndarray:
    """Frame i: 8 vertical bars, bar b white when bit b of i is set (robust to compression)."""
    a = np.zeros((H, W, 3), np.uint8)
    for b in range(8):
        if i >> b & 1:
            a[:, b * 8:(b + 1) * 8] = 255
    return a


def index_of(image: np.ndarray) -> int:
    return sum(1 << b for b in range(8) if image[:, b * 8 + 2:(b + 1) * 8 - 2].mean() > 128)


def write_indexed(path, codec="libx264", n=N, gop=GOP, fmt=None):
    """An n-frame video whose frame i shows i as bars (`fmt`: container format, default by suffix)."""
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=Fraction(10))
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.gop_size = gop
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(indexed_image(i), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_indexed(tmp_path_factory.mktemp("seek") / "indexed.mp4")


@pytest.fixture(scope="module")
def sequential(video):
    frames = list(open_source(str(video), fps=10))
    assert [index_of(f.image) for f in frames] == list(range(N))  # the test video is what it says
    with av.open(str(video)) as c:
        keys = [f.key_frame for f in c.decode(video=0)]
    at = [i for i, key in enumerate(keys) if key]
    assert at[0] == 0 and max(np.diff(at + [N])) <= GOP and len(at) < N // 4  # a keyframe every <= GOP frames
    return frames


class DecodeCount:
    """Counts the frames decoded through av.open, whoever opens the file."""

    def __init__(self, monkeypatch):
        self.n = 0
        real_open = av.open
        counter = self

        class Container:
            def __init__(self, c):
                self._c = c

            def __getattr__(self, name):
                return getattr(self._c, name)

            def __enter__(self):
                self._c.__enter__()
                return self

            def __exit__(self, *exc):
                return self._c.__exit__(*exc)

            def decode(self, *args, **kwargs):
                for frame in self._c.decode(*args, **kwargs):
                    counter.n += 1
                    yield frame

        monkeypatch.setattr(av, "open", lambda *a, **k: Container(real_open(*a, **k)))


def same(frame, expected):
    assert frame is not None
    assert (frame.index, frame.name, frame.time) == (expected.index, expected.name, expected.time)
    assert np.array_equal(frame.image, expected.image), frame.index


def test_random_access_is_exact_and_far_jumps_decode_one_gop(video, sequential, monkeypatch):
    from entitysam.io.sources.video_seek import VideoSeek

    seek = VideoSeek(video, fps=10)
    same(seek.frame(N - 1), sequential[N - 1])  # nothing recorded yet: from the start, recording
    count = DecodeCount(monkeypatch)
    order = [140, 3, 77, 76, 120, 12, 11, 13, N - 1, 0, 60, 59, 100, 101, 25]
    rng = random.Random(1)
    order += rng.sample(range(N), 40)
    for i in order:
        before = count.n
        same(seek.frame(i), sequential[i])
        assert count.n - before <= GOP + 1, (i, count.n - before)  # from the keyframe before i
    assert seek.fallbacks == 0 and seek.exact


def test_unknown_territory_decodes_forward_from_the_furthest_keyframe(video, sequential, monkeypatch):
    from entitysam.io.sources.video_seek import VideoSeek

    seek = VideoSeek(video, fps=10)
    count = DecodeCount(monkeypatch)
    same(seek.frame(40), sequential[40])
    assert count.n == 41  # first read: from the start
    same(seek.frame(100), sequential[100])
    assert count.n - 41 <= 100 - 36 + 1  # from keyframe 36 (recorded), not from 0
    before = count.n
    same(seek.frame(50), sequential[50])
    assert count.n - before <= GOP + 1
    frames = list(seek.frames(FrameSelection(start=95, stride=7)))  # a selection: the same frames
    assert [f.index for f in frames] == list(range(95, N, 7))
    for f in frames:
        same(f, sequential[f.index])


def test_viewer_far_jumps_do_not_decode_from_the_start(video, sequential, monkeypatch):
    from entitysam.review.source_frames import SourceFrames

    frames = SourceFrames(str(video), fps=10)
    frames.keep_bytes = 4 * W * H * 3  # keeps 4 frames, as 64 MB keep ~10 at 1080p: a pass starts 3 before
    assert np.array_equal(frames.frame(N - 1, f"{N - 1:06d}"), sequential[N - 1].image)  # records the keyframes
    count = DecodeCount(monkeypatch)
    for i in [130, 20, 90, 5, 145, 60]:
        before = count.n
        assert np.array_equal(frames.frame(i, f"{i:06d}"), sequential[i].image), i
        assert count.n - before <= GOP + 4, (i, count.n - before)
        assert index_of(frames.frame(i, f"{i:06d}")) == i
    for i in range(60, 70):  # playing forward continues the pass
        assert np.array_equal(frames.frame(i, f"{i:06d}"), sequential[i].image), i


def test_untrusted_pts_fall_back_to_the_pass_from_the_start(video, sequential, monkeypatch):
    from entitysam.io.sources.video_seek import VideoSeek

    seek = VideoSeek(video, fps=10)
    same(seek.frame(N - 1), sequential[N - 1])
    seek.pts[GOP * 5:] = [p + 1 for p in seek.pts[GOP * 5:]]  # the recorded pts no longer match the file
    for i in [100, 61, 30, 140]:
        same(seek.frame(i), sequential[i])
    assert seek.fallbacks == 1 and not seek.exact  # then always from the start


@pytest.mark.parametrize("name,codec", [("indexed.avi", "mpeg4"), ("indexed.mkv", "libx264")])
def test_other_containers_give_the_same_frames(tmp_path, name, codec, monkeypatch):
    from entitysam.io.sources.video_seek import VideoSeek

    path = write_indexed(tmp_path / name, codec=codec, n=80)
    expected = list(open_source(str(path), fps=10))
    seek = VideoSeek(path, fps=10)
    same(seek.frame(79), expected[79])
    for i in [50, 3, 70, 69, 20, 79, 0]:
        f = seek.frame(i)
        same(f, expected[i])
        assert index_of(f.image) == i


@pytest.mark.parametrize("name,fmt", [("raw.h264", "h264"), ("clip.ts", "mpegts")])
def test_missing_or_unseekable_pts_give_the_frames_of_the_pass_from_the_start(tmp_path, name, fmt):
    """A raw H.264 stream has no pts (never seeks); in MPEG-TS the seek may land elsewhere
    (then the pass from the start): either way the frames are exact."""
    from entitysam.io.sources.video_file import VideoFileSource
    from entitysam.io.sources.video_seek import VideoSeek

    path = write_indexed(tmp_path / name, n=80, fmt=fmt)
    expected = list(VideoFileSource(path, fps=10))
    assert [index_of(f.image) for f in expected] == list(range(80))
    seek = VideoSeek(path, fps=10)
    for i in [79, 50, 3, 70, 69, 20, 0]:
        f = seek.frame(i)
        same(f, expected[i])
    if fmt == "h264":
        assert not seek.exact and seek.seeks == 0  # no pts: every read from the start


def test_a_seek_that_lands_past_the_recorded_frames_falls_back(tmp_path):
    """In MPEG-TS a seek to the last group of pictures may give no frame at all: that pass ended
    without a word and the read was refused ("selects no frames"); it now falls back."""
    from entitysam.io.sources.video_file import VideoFileSource
    from entitysam.io.sources.video_seek import VideoSeek

    path = write_indexed(tmp_path / "clip.ts", n=60, gop=5, fmt="mpegts")
    expected = list(VideoFileSource(path, fps=10))
    seek = VideoSeek(path, fps=10)
    assert [f.index for f in seek.frames(FrameSelection(start=30))] == list(range(30, 60))
    for start in (55, 58, 41):
        frames = list(seek.frames(FrameSelection(start=start, max_frames=3)))
        assert [f.index for f in frames] == list(range(start, min(start + 3, 60)))
        for f in frames:
            same(f, expected[f.index])


def test_a_corrupt_keyframe_gives_what_the_pass_from_the_start_gives(tmp_path):
    """The file damaged after its keyframes were recorded: the seek pass meets a corrupt frame (or a
    decoding error), falls back, and the result is VideoFileSource's (a concealed frame or its refusal)."""
    from entitysam.errors import SourceError
    from entitysam.io.sources.video_file import VideoFileSource
    from entitysam.io.sources.video_seek import VideoSeek

    path = write_indexed(tmp_path / "damaged.mp4")
    seek = VideoSeek(path, fps=10)
    seek.frame(N - 1)
    k = seek.keyframe_before(100)
    assert k > 0
    with av.open(str(path)) as c:
        where = {p.pts: (p.pos, p.size) for p in c.demux(video=0) if p.size}
    pos, size = where[seek.pts[k]]
    data = bytearray(path.read_bytes())
    data[pos + size // 3:pos + size] = b"\x55" * (size - size // 3)
    path.write_bytes(bytes(data))

    def outcome(read):
        try:
            f = read()
            return f.index, f.name, f.time, f.image.tobytes()
        except SourceError as err:
            return str(err)

    for i in [100, k]:
        expected = outcome(lambda: next(iter(VideoFileSource(path, FrameSelection(start=i, max_frames=1), fps=10))))
        assert outcome(lambda: seek.frame(i)) == expected, i
    assert seek.fallbacks == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_video_swapped_for_a_pipe_before_a_seek_pass_is_refused_not_waited_on(tmp_path, monkeypatch):
    """A seek pass opened the path by name, unchecked: a named pipe put there since the last pass
    made that open wait for a writer for ever. Now it opens the file once, without waiting, and
    falls back to the pass from the start, which refuses the pipe in words."""
    from entitysam.errors import SourceError
    from entitysam.io.sources.video_seek import VideoSeek

    path = write_indexed(tmp_path / "swapped.mp4", n=40)
    seek = VideoSeek(path, fps=10)
    seek.frame(39)  # records the keyframes: the next read starts with a seek pass
    assert seek.keyframe_before(30) > 0
    recorded = VideoSeek.keyframe_before

    def then_swapped(self, index):  # the pass is about to open the file: it becomes a pipe
        if path.is_file():
            swap_for_a_pipe(path)
        return recorded(self, index)
    monkeypatch.setattr(VideoSeek, "keyframe_before", then_swapped)
    try:
        with pytest.raises(SourceError, match=rf"^video {path} is a named pipe \(FIFO\), not a regular file"):
            within(20, seek.frame, 30)
    finally:
        release_readers(path)
    assert seek.fallbacks == 1
