"""Frame sources: videos, frame folders, images; selection; bad inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from _media import FPS, H, W, scene, write_frames, write_video
from entitysam.errors import SourceError
from entitysam.io.sources import (ArraySource, FrameSelection, list_batch_inputs, natural_key, open_source,
                                  parse_position)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    write_video(d / "clip.mp4", 12)
    write_frames(d / "frames", ["10", "2", "1"])
    Image.fromarray(scene(0)).save(d / "still.png")
    return d


def test_natural_order_and_names(media):
    src = open_source(media / "frames")
    frames = list(src)
    assert [f.name for f in frames] == ["1", "2", "10"]
    assert [f.index for f in frames] == [0, 1, 2]
    assert src.name == "frames" and src.kind == "folder" and src.count_hint() == 3
    assert sorted(["10.jpg", "2.jpg", "1.jpg", "01a.jpg"], key=natural_key) == ["1.jpg", "01a.jpg", "2.jpg", "10.jpg"]
    # Zero-padded names: natural order == the official lexicographic order.
    padded = [f"{i:05d}.jpg" for i in (10, 2, 1, 100)]
    assert sorted(padded, key=natural_key) == sorted(padded)


def test_video_decoding_lazily(media):
    src = open_source(media / "clip.mp4")
    assert src.kind == "video" and src.fps == FPS and src.total_frames() == 12 and src.name == "clip"
    it = iter(src)
    first = next(it)
    assert first.image.shape == (H, W, 3) and first.image.dtype == np.uint8 and first.name == "000000"
    assert np.abs(first.image.astype(int) - scene(0)).mean() < 12  # lossy codec
    rest = list(it)
    assert [f.index for f in rest] == list(range(1, 12))
    assert rest[-1].time == pytest.approx(11 / FPS)
    assert len(list(src)) == 12  # re-iterable


def test_single_image(media):
    src = open_source(media / "still.png")
    frames = list(src)
    assert src.kind == "image" and src.name == "still" and len(frames) == 1 and frames[0].name == "still"


@pytest.mark.parametrize("sel, expected", [
    (FrameSelection(start=3), list(range(3, 12))),
    (FrameSelection(start=3, end=7), [3, 4, 5, 6]),
    (FrameSelection(stride=4), [0, 4, 8]),
    (FrameSelection(start=1, stride=5), [1, 6, 11]),
    (FrameSelection(max_frames=2, start=5), [5, 6]),
    (FrameSelection(start="0.25s", end="0.6s"), [3, 4, 5]),  # 10 fps: t = 0.3, 0.4, 0.5
    (FrameSelection(start=0.5, stride=2, max_frames=2), [5, 7]),
])
def test_selection_on_video(media, sel, expected):
    src = open_source(media / "clip.mp4", sel)
    assert [f.index for f in src] == expected
    assert src.count_hint() == len(expected)


def test_selection_on_folder_uses_fps(media):
    assert [f.name for f in open_source(media / "frames", FrameSelection(start="0.1s"), fps=10)] == ["2", "10"]
    assert [f.name for f in open_source(media / "frames", FrameSelection(end="1s"), fps=2)] == ["1", "2"]


def test_array_source():
    frames = np.stack([scene(t) for t in range(4)])
    src = open_source(frames, FrameSelection(stride=2), fps=5)
    assert isinstance(src, ArraySource) and [f.index for f in src] == [0, 2] and src.fps == 5


def test_parse_position():
    assert parse_position("12") == 12 and isinstance(parse_position("12"), int)
    assert parse_position("2.5s") == 2.5 and isinstance(parse_position("2.5s"), float)
    for bad in ("2.5", "-1", "abc", "s", "-2s"):
        with pytest.raises(SourceError, match="invalid frame position"):
            parse_position(bad)
    with pytest.raises(SourceError, match="stride must be a positive integer"):
        FrameSelection(stride=0)
    with pytest.raises(SourceError, match="max_frames must be a positive integer"):
        FrameSelection(max_frames=0)


def test_selection_past_the_end(media):
    with pytest.raises(SourceError, match=r"selection \(start=50\) selects no frames \(it has 12 frames\)"):
        list(open_source(media / "clip.mp4", FrameSelection(start=50)))


def test_selection_past_the_end_of_one_image_says_one_frame(tmp_path):
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / "one.png")
    with pytest.raises(SourceError, match=r"selects no frames \(it has 1 frame\)$"):
        list(open_source(tmp_path / "one.png", FrameSelection(start=5)))


def test_a_pattern_the_shell_left_unexpanded_is_named_as_one(tmp_path):
    from entitysam.io.sources.selection import input_problem

    assert "a pattern that matches no file" in input_problem(tmp_path / "frames" / "*.jpg")
    assert input_problem(tmp_path / "clip.mp4") == f"input not found: {tmp_path / 'clip.mp4'}"


def test_bad_inputs(tmp_path, media):
    with pytest.raises(SourceError, match="input not found: .*nothing.mp4"):
        open_source(tmp_path / "nothing.mp4")
    # `-`, standard input's usual name, was "input not found: -" without a word of why
    with pytest.raises(SourceError, match=r"input not found: - \(standard input is not read: .* save it to a file"):
        open_source("-")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match=r"no frames of the supported types .* holds 1 other entry: notes.txt"):
        open_source(tmp_path / "empty")
    (tmp_path / "empty" / "notes.txt").unlink()
    with pytest.raises(SourceError, match="empty folder, no frames"):
        open_source(tmp_path / "empty")
    (tmp_path / "a.xcf").write_bytes(b"gimp xcf v011")
    with pytest.raises(SourceError, match="unsupported input .*a.xcf"):
        open_source(tmp_path / "a.xcf")
    (tmp_path / "a.tif").write_bytes(b"II*\x00")  # a TIFF header cut short: read, and said to be unreadable
    with pytest.raises(SourceError, match="cannot read frame .*a.tif: not an image format Pillow can read"):
        open_source(tmp_path / "a.tif")
    (tmp_path / "a.gif").write_bytes(b"GIF89a")  # read as an animation or image: truncated
    with pytest.raises(SourceError, match="cannot read frame .*a.gif: not an image format"):
        open_source(tmp_path / "a.gif")
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(SourceError, match="cannot read video .*text.mp4"):
        open_source(tmp_path / "text.mp4")
    (tmp_path / "zero.mp4").write_bytes(b"")
    with pytest.raises(SourceError, match="zero.mp4: empty file"):
        open_source(tmp_path / "zero.mp4")
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(SourceError, match="cannot read frame .*a.jpg"):
        list(open_source(tmp_path / "a.jpg"))


def test_header_only_video(tmp_path):
    import av

    c = av.open(str(tmp_path / "none.mkv"), "w")
    s = c.add_stream("libx264", rate=10)
    s.width, s.height, s.pix_fmt = W, H, "yuv420p"
    c.start_encoding()
    c.close()
    with pytest.raises(SourceError, match="none.mkv"):
        list(open_source(tmp_path / "none.mkv"))


def test_truncated_video(tmp_path):
    full = write_video(tmp_path / "full.mkv", 20, noise=True)
    data = full.read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) * 6 // 10])
    src = open_source(tmp_path / "cut.mkv")
    with pytest.raises(SourceError, match=r"cut.mkv: truncated or corrupt video: its header announces 20 frames"):
        list(src)
    # The frames before the cut are still usable with a selection that stops there.
    assert len(list(open_source(tmp_path / "cut.mkv", FrameSelection(end=2)))) == 2


def test_corrupt_frame_in_the_middle(tmp_path):
    folder = write_frames(tmp_path / "v", ["0", "1", "2", "3"])
    data = (folder / "2.jpg").read_bytes()
    (folder / "2.jpg").write_bytes(data[: len(data) // 3])
    it = iter(open_source(folder))
    assert next(it).name == "0" and next(it).name == "1"
    with pytest.raises(SourceError, match=r"cannot read frame .*2.jpg"):
        next(it)


def test_frames_of_different_sizes(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    Image.new("RGB", (64, 48)).save(folder / "1.png")
    Image.new("RGB", (60, 48)).save(folder / "2.png")
    with pytest.raises(SourceError, match=r"frame 2 is 60x48 but the first frame is 64x48"):
        list(open_source(folder))


def test_duplicate_stems(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "1.png")
    Image.new("RGB", (8, 8)).save(folder / "1.jpg")
    with pytest.raises(SourceError, match="same name '1'"):
        open_source(folder)


@pytest.mark.parametrize("ext, codec", [(".webm", "libvpx"), (".avi", "mpeg4"), (".mov", "libx264"),
                                        # camcorder / broadcast / iTunes / DVD files were refused as unsupported
                                        (".ts", "libx264"), (".mts", "libx264"), (".m2ts", "libx264"),
                                        (".m4v", "libx264"), (".mpg", "mpeg2video"), (".mpeg", "mpeg2video")])
def test_other_containers(tmp_path, ext, codec):
    src = open_source(write_video(tmp_path / f"v{ext}", 3, codec=codec))
    frames = list(src)
    assert len(frames) == 3 and src.fps == FPS
    assert [round(f.time, 6) for f in frames] == [round(t / FPS, 6) for t in range(3)]  # from 0, whatever the stream's start


def test_batch_listing(tmp_path, media):
    batch = tmp_path / "batch"
    batch.mkdir()
    os.symlink(media / "clip.mp4", batch / "b10.mp4")
    os.symlink(media / "clip.mp4", batch / "b2.mp4")
    os.symlink(media / "frames", batch / "c")
    (batch / "notes.txt").write_text("x")
    assert [p.name for p in list_batch_inputs(batch)] == ["b2.mp4", "b10.mp4", "c"]
    with pytest.raises(SourceError, match="holds frames, not videos: segment it as one video, not as a batch"):
        list_batch_inputs(media / "frames")
