"""Hostile or unusual video files read without a traceback, a hang or a false error: metadata
that is not UTF-8, headers that declare absurd lengths, variable frame rates, a cover picture
listed first; images Pillow cannot identify named in words. Special files,
size limits and streams: test_hostile_inputs.py."""

from __future__ import annotations

import os
import stat
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from _blocking import release_readers, swap_for_a_pipe, within
from _cli import run_cli
from _media import scene, serving, write_frames, write_stamped_mkv, write_video
from entitysam.errors import SourceError
from entitysam.io.sources import FrameSelection, open_source, video_file
from entitysam.io.sources.video_seek import VideoSeek


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def _with_duration(path: Path, ms: float) -> Path:
    """The Matroska file `path` with the Duration of its header (EBML id 0x4489, an 8-byte float, in
    milliseconds: the default TimecodeScale) set to `ms`."""
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")
    assert at > 0 and data.find(b"\x44\x89\x88", at + 1) < 0
    data[at + 3:at + 11] = struct.pack(">d", ms)
    path.write_bytes(bytes(data))
    return path


def test_a_header_declaring_billions_of_frames_does_not_hang(tmp_path, tiny_checkpoint):
    """The frame count estimated from a header (10^9 s at 10 fps) was counted frame by frame
    (FrameSelection.count ran the selection over every index): the run hung before reading a frame."""
    video = _with_duration(write_video(tmp_path / "long.mkv", 10), 1e12)
    assert within(10, open_source(video).count_hint) == 10 ** 10
    assert within(10, FrameSelection(start="2.5s", end=1000, stride=3).count, 10 ** 15, 10.0) == 325
    assert within(10, FrameSelection(max_frames=7).count, 2 ** 62, 30.0) == 7
    r = run_cli(video, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "-q", timeout=90)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "long: " in r.stderr and "truncated or corrupt video" in r.stderr
    assert not (tmp_path / "out" / "long").exists()


def _write_timed(path: Path, times: list[int]) -> Path:
    """A Matroska video of intra-coded frames at `times` (tenths of a second): a variable frame
    rate, as screen recorders write when the screen does not change."""
    return write_stamped_mkv(path, times)


def test_variable_frame_rate_is_not_taken_for_a_truncated_file(tmp_path, tiny_checkpoint):
    """Ten frames over 4.6 s (a pause of 3.7 s after the fourth): Matroska stores no frame count, the
    estimate (4.6 s x 10 fps = 46 frames) made the complete video fail as "truncated or corrupt"."""
    video = _write_timed(tmp_path / "pause.mkv", [0, 1, 2, 3, 40, 41, 42, 43, 44, 45])
    frames = list(open_source(video))
    assert [round(f.time, 3) for f in frames] == [0, 0.1, 0.2, 0.3, 4.0, 4.1, 4.2, 4.3, 4.4, 4.5]
    assert [f.index for f in open_source(video, FrameSelection(start="2.5s"))] == [4, 5, 6, 7, 8, 9]
    r = run_cli(video, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert len(list((tmp_path / "out" / "pause" / "panoptic").iterdir())) == 10
    # The same video cut after its fourth frame still stops short of the declared 4.6 s: truncated.
    import av

    with av.open(str(video)) as c:
        fifth = [p.pos for p in c.demux(video=0) if p.size][4]  # where the fifth frame's packet starts
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(video.read_bytes()[:fifth])
    with pytest.raises(SourceError, match=r"cut.mkv: truncated or corrupt video: its header announces 46 frames "
                                          r"but only 4 could be decoded"):
        list(open_source(cut))


def test_an_avi_of_variable_frame_rate_is_not_taken_for_a_truncated_file(tmp_path):
    """AVI has a constant rate: a frame it skips (a capture program's dropped frame, a pause) is an
    empty chunk, which its header counts and FFmpeg passes over. Ten frames over 2.6 s: the complete
    file failed as "truncated or corrupt: its header announces 26 frames but only 10 could be decoded"."""
    import av

    stamps = [0, 1, 2, 5, 6, 9, 10, 11, 24, 25]  # (tenths of a second)
    video = tmp_path / "gaps.avi"
    with av.open(str(video), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for t in stamps:
            frame = av.VideoFrame.from_ndarray(scene(t), format="rgb24")
            frame.pts = t
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    source = open_source(video)
    assert source.total_frames() == 26
    assert [round(f.time, 3) for f in source] == [t / 10 for t in stamps]
    # Cut after its eighth frame (the index at its end lost too), it still is truncated.
    with av.open(str(video)) as c:
        ninth = [p.pos for p in c.demux(video=0) if p.size][8]
    cut = tmp_path / "cut.avi"
    cut.write_bytes(video.read_bytes()[:ninth - 8])  # (before the chunk's header)
    with pytest.raises(SourceError, match=r"cut.avi: truncated or corrupt video"):
        list(open_source(cut))


def _write_cut_mp4(path: Path, n: int, cut: int) -> Path:
    """An MP4 of `n` frames (10 frames/s, a keyframe every 10) whose edit list starts at frame `cut`,
    as a cut without re-encoding writes it (ffmpeg -ss ... -c copy): the frames before it stay in the
    file, to decode the ones after it, and are not shown."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=10, options={"g": "10", "bf": "0"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for t in range(n):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
            frame.pts = t - cut  # (negative before the cut: the muxer writes the edit list)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_an_mp4_cut_without_reencoding_is_not_taken_for_a_truncated_file(tmp_path):
    """The index of an MP4 counts the frames its edit list leaves out (40, of which 35 are shown):
    the complete file failed as "truncated or corrupt: its header announces 40 frames but only 35
    could be decoded"."""
    video = _write_cut_mp4(tmp_path / "cut.mp4", 40, 5)
    src = open_source(video)
    frames = list(src)
    assert len(frames) == 35 and src.total_frames() == 35
    assert [round(f.time, 3) for f in frames[:3]] == [0, 0.1, 0.2]
    # The same file cut short (its index at the front) still is truncated.
    data = video.read_bytes()
    (tmp_path / "short.mp4").write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(SourceError, match=r"short.mp4: truncated or corrupt video"):
        list(open_source(tmp_path / "short.mp4"))


def test_a_recording_that_starts_inside_a_group_of_pictures_is_not_taken_for_a_truncated_file(tmp_path):
    """An MPEG-TS capture starts wherever the recording began: the frames before its first keyframe
    cannot be decoded, and its duration counts from the first of them. The last frame's time, counted
    from the first decoded one, fell short of that duration, and the complete capture failed as
    "truncated or corrupt: its header announces 26 frames but only 20 could be decoded"."""
    import av

    rng = np.random.default_rng(0)
    whole = tmp_path / "whole.ts"
    with av.open(str(whole), "w") as c:
        s = c.add_stream("libx264", rate=10, options={"g": "10", "bf": "0", "sc_threshold": "0"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for _ in range(40):
            for p in s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
                                                         format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with av.open(str(whole)) as c:
        at = [p.pos for p in c.demux(video=0) if p.size][14]  # the fifth frame of the second group
    data = whole.read_bytes()
    capture = tmp_path / "capture.ts"
    capture.write_bytes(data[at - at % 188:])  # (from a transport packet on)
    with av.open(str(capture)) as c:
        decodable = len(list(c.decode(video=0)))
    source = open_source(capture)
    assert decodable < source.total_frames() - 2  # (frames 14 to 19 come before the first keyframe)
    assert len(list(source)) == decodable


@pytest.mark.parametrize("online", [False, True])
def test_an_unreadable_input_with_a_newline_in_its_name_is_one_error_line(tmp_path, tiny_checkpoint, online):
    """Inputs refused before the model loads (not found, not a video) were printed with the newline
    of their name, on two lines; the failures of a run already showed it as \\n."""
    (tmp_path / "not\na video.mp4").write_bytes(b"not a video")
    r = run_cli(tmp_path / "not\na video.mp4", tmp_path / "gone\nfile.mp4", "-o", tmp_path / "out",
                "--checkpoint", tiny_checkpoint, "-q", *(["--online"] if online else []))
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and len(lines) == 3 and all(line.startswith("error: ") for line in lines), r.stderr
    assert lines[0].startswith("error: not_a video: cannot read video ") and "not\\na video.mp4" in lines[0]
    assert lines[1].startswith("error: gone_file: input not found: ") and lines[1].endswith("gone\\nfile.mp4")
    assert lines[2] == "error: 2 of 2 videos failed: not_a video, gone_file"


def test_several_inputs_that_all_fail_leave_no_output_folder(tmp_path, tiny_checkpoint):
    """The first lock created -o DIR and was released first, while the others' lock files were still
    in it: an empty DIR stayed behind (one failing input left none)."""
    (tmp_path / "a.mp4").write_bytes(b"not a video")
    r = run_cli(tmp_path / "a.mp4", tmp_path / "b.mp4", "-o", tmp_path / "new" / "out", "--checkpoint",
                tiny_checkpoint, "-q")
    assert r.returncode == 1 and "error: 2 of 2 videos failed: a, b" in r.stderr, r.stderr
    assert not (tmp_path / "new").exists()


def test_a_stream_whose_codec_cannot_be_decoded(tmp_path, tiny_checkpoint):
    """A stream (here Matroska over HTTP) whose video codec PyAV has no decoder for: its stream has
    no codec context, and LiveSource read its size from None (AttributeError, a traceback); the
    same file on disk was already refused in words."""
    data = write_video(tmp_path / "v.mkv", 4).read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    with serving(data.replace(b"V_MPEG4/ISO/AVC", b"V_MPEG4/ISO/XYZ")) as port:
        url = f"http://127.0.0.1:{port}/live.mkv"
        with pytest.raises(SourceError, match=rf"cannot read stream {url}: its video stream has no usable codec"):
            within(30, open_source, url)
        r = run_cli(url, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "--online", "-q")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"error: live: cannot read stream {url}: its video stream has no usable codec")
    assert not (tmp_path / "out").exists()


def _mp4_with_cover_first(path: Path, n: int = 8, video: bool = True) -> Path:
    """An MP4 with a cover picture (an attached picture: a one-frame "video stream") whose `udta`
    atom comes before the video track (or, video=False, an audio track), so that FFmpeg lists the
    cover as the first video stream."""
    import av

    with av.open(str(path), "w") as c:
        cover = c.add_stream("mjpeg", rate=Fraction(1))
        cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        track = c.add_stream("libx264" if video else "aac", rate=Fraction(10) if video else 44100)
        if video:
            track.width, track.height, track.pix_fmt = 64, 48, "yuv420p"
        for p in cover.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 200, np.uint8), format="rgb24")):
            c.mux(p)
        for p in cover.encode():
            c.mux(p)
        for t in range(n):
            if video:
                frame = av.VideoFrame.from_ndarray(scene(t), format="rgb24")
            else:
                frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 44100, t * 1024
            for p in track.encode(frame):
                c.mux(p)
        for p in track.encode():
            c.mux(p)
    data = path.read_bytes()

    def boxes(start: int, end: int):
        while start < end:
            size, kind = struct.unpack(">I4s", data[start:start + 8])
            yield kind, data[start:start + size]
            start += size

    moov = data.index(b"moov") - 4
    (moov_size,) = struct.unpack(">I", data[moov:moov + 4])
    children = list(boxes(moov + 8, moov + moov_size))  # mvhd, trak..., udta (sizes and offsets unchanged)
    order = sorted(children, key=lambda box: {b"mvhd": 0, b"udta": 1}.get(box[0], 2))
    path.write_bytes(data[:moov + 8] + b"".join(b for _, b in order) + data[moov + moov_size:])
    with av.open(str(path)) as c:
        assert c.streams.video[0].disposition & av.stream.Disposition.attached_pic
    return path


def test_a_cover_picture_listed_before_the_video_is_not_read_as_the_video(tmp_path):
    """It was: the one-frame cover was decoded as the video, and the file called truncated ("its
    header announces 72000 frames but only 1 could be decoded"; its remedy, end=1, segmented the cover)."""
    path = _mp4_with_cover_first(tmp_path / "cover.mp4")
    frames = list(open_source(path))
    assert [f.index for f in frames] == list(range(8)) and frames[0].size == (48, 64)
    assert np.array_equal(frames[3].image[..., 0] > 128, scene(3)[..., 0] > 128)
    assert VideoSeek(path).frame(5).index == 5
    # Music with its album cover, named .mp4: there is no video to segment (not "a truncated video").
    with pytest.raises(SourceError, match=r"cover_only.mp4: no video stream in the file \(only a cover picture\)$"):
        open_source(_mp4_with_cover_first(tmp_path / "cover_only.mp4", video=False))


def test_a_video_file_without_video_says_what_it_holds(tmp_path):
    """An MP4 cut inside its index (at the end of the file) has no stream at all for FFmpeg, and an
    audio recording has no video: each said only "no video stream in the file"."""
    import av

    whole = write_video(tmp_path / "whole.mp4", 4).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[:whole.index(b"moov") + 16])
    with pytest.raises(SourceError, match=r"cut.mp4: no video stream in the file \(it holds no streams at all: "
                                          r".*a file cut short before its index"):
        open_source(cut)
    sound = tmp_path / "sound.mp4"
    with av.open(str(sound), "w") as c:
        s = c.add_stream("aac", rate=44100)
        for i in range(4):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 44100, i * 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(SourceError, match=r"sound.mp4: no video stream in the file \(only audio\)$"):
        open_source(sound)


def test_an_image_pillow_cannot_identify_is_named_in_words(tmp_path):
    """The message held Pillow's name for the open file, "cannot identify image file
    <_io.BufferedReader name=3>"; an empty file (a copy that failed) is said to be one."""
    first_empty = write_frames(tmp_path / "a", ["0", "1", "2"])
    (first_empty / "0.jpg").write_bytes(b"")
    with pytest.raises(SourceError) as caught:
        open_source(first_empty)  # the first frame's header is read when the folder is opened
    assert str(caught.value) == f"cannot read frame {first_empty / '0.jpg'}: empty file (0 bytes), not an image"
    text_in_the_middle = write_frames(tmp_path / "b", ["0", "1", "2"])
    (text_in_the_middle / "1.jpg").write_text("not a picture\n")
    with pytest.raises(SourceError) as caught:
        list(open_source(text_in_the_middle))
    assert str(caught.value) == (f"cannot read frame {text_in_the_middle / '1.jpg'}: not an image format Pillow can "
                                 "read (corrupt, truncated or not an image)")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
@pytest.mark.parametrize("when", ["opening", "decoding"])
def test_a_video_swapped_for_a_pipe_as_pyav_opens_it_is_read_as_it_was_opened(tmp_path, monkeypatch, when):
    """PyAV opened the path by name after it was checked: a named pipe put there in between (when
    the source is opened to read its header, or when a pass decodes it) made that open wait for a
    writer for ever. PyAV now reads the file the source opened (once, without waiting); a later
    pass opens the path anew, finds the pipe and refuses it."""
    video = write_video(tmp_path / "clip.mp4", 4)
    expected = [f.image for f in open_source(video)]
    opens, real_open = [], video_file.open_container
    swap_at = 1 if when == "opening" else 2

    def swapped_then_opened(url, **kwargs):  # the path becomes a pipe just before PyAV opens it
        opens.append(url)
        if len(opens) == swap_at:
            swap_for_a_pipe(video)
        return real_open(url, **kwargs)
    monkeypatch.setattr(video_file, "open_container", swapped_then_opened)
    try:
        source = within(20, open_source, video)
        if when == "opening":
            assert (source.width, source.height, source.total_frames()) == (64, 48, 4)
            with pytest.raises(SourceError, match=rf"^video {video} is a named pipe \(FIFO\)"):
                within(20, list, source)
        else:
            frames = within(20, lambda: [f.image for f in source])
            assert len(frames) == 4 and all(np.array_equal(a, b) for a, b in zip(frames, expected))
    finally:
        release_readers(video)
    assert stat.S_ISFIFO(os.stat(video).st_mode) and len(opens) == swap_at


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
@pytest.mark.parametrize("when", ["opening", "decoding"])
def test_a_video_swapped_for_a_pipe_after_its_check_is_refused_not_waited_on(tmp_path, monkeypatch, when):
    """A named pipe put in place of the video right after the check that it is a regular file: a
    decoding pass waited for a writer for ever in PyAV's open; opening the source said "empty file
    (0 bytes)" (the pipe's size). Now the open without waiting finds the pipe, and says so."""
    video = write_video(tmp_path / "clip.mp4", 4)
    checks: list[str | None] = []
    checked, swap_at = video_file.input_problem, 1 if when == "opening" else 2

    def then_swapped(path, what="input"):  # the check passes, then the path becomes a pipe
        checks.append(checked(path, what))
        if len(checks) == swap_at:
            swap_for_a_pipe(video)
        return checks[-1]
    monkeypatch.setattr(video_file, "input_problem", then_swapped)
    try:
        with pytest.raises(SourceError) as caught:
            within(20, lambda: list(open_source(video)))
    finally:
        release_readers(video)
    assert stat.S_ISFIFO(os.stat(video).st_mode) and checks[:swap_at] == [None] * swap_at
    assert str(caught.value).startswith(f"video {video} is a named pipe (FIFO), not a regular file"), caught.value


def test_messages_of_a_video_opened_once_name_the_users_path(tmp_path):
    """PyAV reads the open file under another name (/dev/fd/N); messages still name the input."""
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    with pytest.raises(SourceError) as caught:
        open_source(garbage)
    assert str(caught.value).startswith(f"cannot read video {garbage}: ") and "/dev/fd" not in str(caught.value)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match=rf"^{empty}: empty file \(0 bytes\), not a video$"):
        open_source(empty)
