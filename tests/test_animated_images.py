"""An image file holding several frames (an animated PNG; a GIF or WebP saved under .png) given as
the input: it used to be segmented as its first frame only, silently (Pillow opens a file at its
first frame, as the official loader reads it). It is now a video of all its frames. Among the files
of a frame folder such a file was read as its first frame too: it is refused, naming it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _media import scene
from entitysam.errors import SourceError
from entitysam.io.sources import AnimatedImageSource, FrameSelection, ImageSource, open_source
from entitysam.pipeline.segment import open_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_animation(path, n=4, durations=(100, 200, 100, 100), fmt=None):
    frames = [Image.fromarray(scene(3 * t)) for t in range(n)]
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=list(durations[:n]), loop=0)
    return path


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP"])
def test_an_animated_image_is_a_video_of_all_its_frames(tmp_path, fmt):
    """WebP included: Pillow gives a WebP frame's duration only once the frame is decoded, and
    WebP frames were timed at 25 frames/s whatever their durations."""
    path = write_animation(tmp_path / "anim.png", fmt=fmt)  # (under .png: Pillow reads by content)
    source = open_source(path)
    assert isinstance(source, AnimatedImageSource) and source.count_hint() == 4 and source.fps == 10
    frames = list(source)
    assert [f.name for f in frames] == ["000000", "000001", "000002", "000003"]
    assert [round(f.time, 6) for f in frames] == [0.0, 0.1, 0.3, 0.4]  # each frame's display duration
    for t, f in enumerate(frames):  # each frame's own picture (GIF: a 256-colour palette, near enough)
        errors = [np.abs(f.image.astype(int) - scene(3 * u)).mean() for u in range(4)]
        assert int(np.argmin(errors)) == t
    selected = list(open_source(path, FrameSelection(start=1, stride=2)))
    assert [f.name for f in selected] == ["000001", "000003"]


def test_a_still_image_is_still_one_frame(tmp_path):
    for name, fmt in (("still.png", None), ("still-gif.png", "GIF")):
        path = tmp_path / name
        Image.fromarray(scene(0)).save(path, format=fmt)
        source = open_source(path)
        assert isinstance(source, ImageSource)
        assert [f.name for f in source] == [path.stem]


def test_an_animated_image_is_checked_against_the_frame_size_limit(tmp_path):
    path = write_animation(tmp_path / "anim.png")
    with pytest.raises(SourceError, match="over the limit of 100 pixels"):
        open_source(path, max_pixels=100)


def test_segmenting_an_animated_png_gives_every_frame(tiny_model, tmp_path):
    from entitysam.pipeline.segment import segment

    path = write_animation(tmp_path / "anim.png")
    with segment(tiny_model, path) as result:
        assert [f.name for f in result.frames] == ["000000", "000001", "000002", "000003"]
        out = result.save(tmp_path / "out", formats=("panoptic",))
    assert sorted(p.name for p in (out / "panoptic").iterdir()) == [f"00000{i}.png" for i in range(4)]


@pytest.mark.parametrize("suffix, fmt", [(".gif", "GIF"), (".webp", "WEBP")])
def test_gif_and_webp_files_are_read_as_animations(tmp_path, suffix, fmt):
    """What users save animations as: read by their own names (they used to be refused as an
    unsupported input type); a still one is one frame."""
    source = open_source(write_animation(tmp_path / f"anim{suffix}", fmt=fmt))
    assert isinstance(source, AnimatedImageSource)
    assert [f.name for f in source] == ["000000", "000001", "000002", "000003"]
    still = tmp_path / f"still{suffix}"
    Image.fromarray(scene(0)).save(still, format=fmt)
    assert [f.name for f in open_source(still)] == ["still"]


@pytest.mark.parametrize("suffix, fmt", [(".gif", "GIF"), (".png", "PNG")])
def test_the_viewer_shows_the_frames_of_an_animation(tiny_model, tmp_path, suffix, fmt):
    """The viewer decodes an animation's frames as it does a video's (it asked the animation for
    one file per frame, like a folder's, and answered every frame request with a 500)."""
    import io

    from starlette.testclient import TestClient

    from entitysam.pipeline.segment import segment
    from entitysam.review.server import Viewer, create_app

    path = write_animation(tmp_path / f"anim{suffix}", fmt=fmt)
    with segment(tiny_model, path) as result:
        out = result.save(tmp_path / "out", formats=("panoptic", "entities"))
    client = TestClient(create_app(Viewer(out), loopback_only=True))
    assert client.get("/api/video").json()["has_source"] is True
    for t in range(4):
        response = client.get(f"/api/frames/{t}.jpg")
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        shown = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(int)
        errors = [np.abs(shown - scene(3 * u)).mean() for u in range(4)]
        assert int(np.argmin(errors)) == t


def test_frame_times_grow_when_a_frame_has_no_duration(tmp_path):
    """A frame without a display duration (an APNG delay of 0) after timed ones was placed at
    index / fps (5.0 s here) while the frames after it went on from the durations (1.9 s): times
    went back, and --end stopped at the untimed frame."""
    durations = [500] + [100] * 9 + [0, 100, 100]
    path = write_animation(tmp_path / "anim.png", n=13, durations=durations)
    frames = list(open_source(path))
    times = [round(f.time, 6) for f in frames]
    assert times == [0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.9, 2.0]  # untimed: 1 / fps (2 fps)
    assert [f.name for f in open_source(path, FrameSelection(end="1.95s"))][-1] == "000011"


@pytest.mark.parametrize("n", [4, 2])
def test_the_default_image_of_an_animated_png_that_is_no_part_of_it_is_not_a_frame(tmp_path, n):
    """An APNG may carry a picture for viewers that cannot play it, outside its animation: players
    show only the animation. Pillow gives that picture as frame 0, and it was read as one (an extra
    first frame, and, having no duration, a frame rate of 25 instead of the animation's 10)."""
    path = tmp_path / "anim.png"
    fallback = Image.fromarray(np.full_like(scene(0), 200))
    frames = [Image.fromarray(scene(3 * t)) for t in range(n - 1)]
    fallback.save(path, save_all=True, append_images=frames, default_image=True, duration=100, loop=0)
    source = open_source(path)
    assert isinstance(source, AnimatedImageSource) and source.fps == 10 and source.count_hint() == n - 1
    read = list(source)
    assert [f.name for f in read] == [f"{t:06d}" for t in range(n - 1)]
    assert [round(f.time, 6) for f in read] == [t / 10 for t in range(n - 1)]
    for t, f in enumerate(read):
        assert np.abs(f.image.astype(int) - scene(3 * t)).mean() < 1


def _gif_with_a_huge_frame(path, at: int, n: int = 6, side: int = 8000) -> None:
    """An n-frame 32x24 GIF whose frame `at` declares side x side: Pillow widens the canvas to it."""
    import io
    import struct

    small = io.BytesIO()
    frames = [Image.new("RGB", (32, 24), (40 * i, 0, 0)) for i in range(n - 1)]
    frames[0].save(small, "GIF", save_all=True, append_images=frames[1:], duration=100)
    small = small.getvalue()
    big = io.BytesIO()
    Image.new("P", (side, side), 1).save(big, "GIF")
    big = big.getvalue()
    gct = 3 * 2 ** ((big[10] & 7) + 1) if big[10] & 0x80 else 0
    pos = 13 + gct
    while big[pos] == 0x21:  # skip its extensions to its image descriptor
        pos += 2
        while big[pos]:
            pos += big[pos] + 1
        pos += 1
    block = bytearray(big[pos:-1])
    block[9] |= 0x80 | (big[10] & 7)  # its global palette as the frame's own
    block = bytes(block[:10]) + big[13:13 + gct] + bytes(block[10:])
    head = 13 + (3 * 2 ** ((small[10] & 7) + 1) if small[10] & 0x80 else 0)
    parts = small[head:-1].split(b"\x21\xf9\x04")  # graphic control blocks: one per frame
    frames_in = [b"\x21\xf9\x04" + p for p in parts[1:]]
    delay = b"\x21\xf9\x04\x00" + struct.pack("<H", 10) + b"\x00\x00"
    out = small[:head] + parts[0] + b"".join(frames_in[:at]) + delay + block + b"".join(frames_in[at:]) + b"\x3b"
    path.write_bytes(out)


@pytest.mark.parametrize("selection", [FrameSelection(start=3), FrameSelection(stride=3)])
def test_a_huge_frame_left_out_of_the_selection_is_refused_before_it_is_decoded(tmp_path, selection):
    """A GIF frame may declare a larger size than the canvas (Pillow widens it). A frame the
    selection skips was decoded in full when the next one was composed over it (an 8000x8000
    frame: 0.8 GB) and only the next selected frame was refused."""
    import resource

    path = tmp_path / "bomb.gif"
    _gif_with_a_huge_frame(path, at=1)
    with Image.open(path) as im:
        assert im.n_frames == 6 and im.size == (32, 24)
    source = open_source(path, selection, max_pixels=20_000_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SourceError, match="frame 000001 is 8000x8000"):
        list(source)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: under 100 MB


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("GIF", ".png"), ("WEBP", ".png"), ("TIFF", ".tif")])
@pytest.mark.parametrize("where", [0, 2])
def test_a_file_of_several_frames_in_a_frame_folder_is_refused(tmp_path, fmt, suffix, where):
    """It was read as its first frame, silently. The first frame is checked before any work, the
    others when read; either way the file is named."""
    folder = tmp_path / "v"
    folder.mkdir()
    for t in range(3):
        Image.fromarray(scene(3 * t)).save(folder / f"{t}.png")
    anim = [Image.fromarray(scene(3 * t)) for t in range(4)]
    (folder / f"{where}.png").unlink()
    anim[0].save(folder / f"{where}{suffix}", format=fmt, save_all=True, append_images=anim[1:], duration=100)
    message = rf"frame \S*v/{where}\{suffix} holds 4 frames \(an animation or a multi-page TIFF\)"
    with pytest.raises(SourceError, match=message):
        list(open_source(folder))
    with pytest.raises(SourceError, match=message):  # a list of frame paths: the same rule
        list(open_video([folder / "1.png", folder / f"{where}{suffix}"][:: 1 if where == 2 else -1],
                        FrameSelection(), None, None))


def test_a_still_gif_or_webp_among_png_frames_is_still_a_frame(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    Image.fromarray(scene(0)).save(folder / "0.png")
    Image.fromarray(scene(3)).save(folder / "1.png", format="GIF")
    assert [f.name for f in open_source(folder)] == ["0", "1"]


def test_a_jpeg_with_a_preview_image_is_one_picture(tmp_path):
    """Phones and cameras append a large preview, a depth map or a stereo pair's other view to a
    JPEG (MPF, which Pillow opens as MPO, counting its images as frames): a single such photo was
    read as a video of two frames of different sizes and refused. It is one picture, the first,
    alone or in a folder of frames."""
    main = Image.fromarray(scene(3))
    main.save(tmp_path / "photo.jpg", format="MPO", save_all=True, append_images=[Image.new("RGB", (16, 12))],
              quality=95)
    with Image.open(tmp_path / "photo.jpg") as im:
        assert im.format == "MPO" and im.n_frames == 2
        first = np.asarray(im.convert("RGB"))
    source = open_source(tmp_path / "photo.jpg")
    assert isinstance(source, ImageSource)
    frames = list(source)
    assert len(frames) == 1 and np.array_equal(frames[0].image, first) and first.shape == scene(3).shape
    folder = tmp_path / "v"
    folder.mkdir()
    Image.fromarray(scene(0)).save(folder / "0.jpg", quality=95)
    (tmp_path / "photo.jpg").rename(folder / "1.jpg")
    assert [f.name for f in open_source(folder)] == ["0", "1"]
