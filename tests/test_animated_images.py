"""An image file holding several frames (an animated PNG; a GIF or WebP saved under .png) given as
the input: it used to be segmented as its first frame only, silently (Pillow opens a file at its
first frame, as the official loader reads it). It is now a video of all its frames."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _media import scene
from entitysam.errors import SourceError
from entitysam.io.sources import AnimatedImageSource, FrameSelection, ImageSource, open_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_animation(path, n=4, durations=(100, 200, 100, 100), fmt=None):
    frames = [Image.fromarray(scene(3 * t)) for t in range(n)]
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=list(durations[:n]), loop=0)
    return path


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_an_animated_image_is_a_video_of_all_its_frames(tmp_path, fmt):
    path = write_animation(tmp_path / "anim.png", fmt=fmt)  # (a GIF under .png: Pillow reads by content)
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
    client = TestClient(create_app(Viewer(out)))
    assert client.get("/api/video").json()["has_source"] is True
    for t in range(4):
        response = client.get(f"/api/frames/{t}.jpg")
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        shown = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(int)
        errors = [np.abs(shown - scene(3 * u)).mean() for u in range(4)]
        assert int(np.argmin(errors)) == t
