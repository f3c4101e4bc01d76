"""Anamorphic input (pixels that are not square: PAL DV is 720x576 with 16:15 or 64:45 pixels):
the overlay video carries the input's sample aspect ratio, so players stretch it as they stretch
the input, and the manifests record it beside the frame size."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from _media import scene
from entitysam.io.sources import open_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_anamorphic(path, sar: Fraction, n: int = 3, rotation: int = 0):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(10))
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.sample_aspect_ratio = sar
        if rotation:
            s.set_display_rotation(rotation)
        for t in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(scene(t), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def sar_of(path) -> Fraction:
    """The sample aspect ratio a player uses: the container's, else the codec's (as FFmpeg guesses it)."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return Fraction(s.sample_aspect_ratio or s.codec_context.sample_aspect_ratio or 1)


@pytest.mark.parametrize("sar", [Fraction(16, 15), Fraction(64, 45)])
def test_segment_overlay_and_manifest_carry_the_inputs_sample_aspect_ratio(tiny_model, tmp_path, sar):
    """overlay.mp4 had no sample aspect ratio: it played squeezed beside the input."""
    from entitysam.pipeline.segment import segment

    video = write_anamorphic(tmp_path / "pal.mp4", sar)
    with segment(tiny_model, video) as result:
        out = result.save(tmp_path / "out", formats=("overlay",))
    assert sar_of(out / "overlay.mp4") == sar
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["size"] == [48, 64] and manifest["sample_aspect_ratio"] == [sar.numerator, sar.denominator]
    assert open_source(video).sample_aspect_ratio == sar


def test_online_overlay_and_manifest_carry_it_too(tiny_model, tmp_path):
    from entitysam.pipeline.stream import stream

    video = write_anamorphic(tmp_path / "pal.mkv", Fraction(16, 15))
    with stream(tiny_model, video, output=tmp_path / "out", formats=("overlay",)) as s:
        assert len(list(s)) == 3
    assert sar_of(tmp_path / "out" / "overlay.ts") == Fraction(16, 15)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["sample_aspect_ratio"] == [16, 15]


def test_square_pixels_stay_square_and_a_quarter_turn_inverts_it(tmp_path):
    from _media import write_video

    square = open_source(write_video(tmp_path / "square.mp4", 2))
    assert square.sample_aspect_ratio == 1
    # Turned a quarter turn by its display matrix, the frames come out transposed: so do their pixels.
    turned = open_source(write_anamorphic(tmp_path / "turned.mp4", Fraction(16, 15), rotation=90))
    frames = list(turned)
    assert frames[0].image.shape[:2] == (64, 48) and turned.sample_aspect_ratio == Fraction(15, 16)


def test_the_viewer_is_told_the_pixel_shape(tiny_model, tmp_path):
    """The viewer scaled the canvases by one factor: an anamorphic result showed squeezed. It is
    given the pixel shape (and widens the canvases by it, app.js fitStage)."""
    pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
    pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")
    from starlette.testclient import TestClient

    from entitysam.pipeline.segment import segment
    from entitysam.review.result import pixel_shape
    from entitysam.review.server import Viewer, create_app

    video = write_anamorphic(tmp_path / "pal.mp4", Fraction(64, 45))
    with segment(tiny_model, video) as result:
        out = result.save(tmp_path / "out", formats=("panoptic",))
    with TestClient(create_app(Viewer(out, token="t"), loopback_only=True)) as client:
        info = client.get("/api/video").json()
    assert (info["width"], info["height"], info["sample_aspect_ratio"]) == (64, 48, [64, 45])
    # what a manifest written before, by hand or by someone else says: square unless plausible
    for value in (None, "16:15", [16], [0, 1], [1, 0], [True, 1], [16.0, 15], [1000, 1], [1, 70000]):
        assert pixel_shape(value) == [1, 1]


def anamorphic_result(root, sar):
    """A result of the review tests' id maps (entity 2: a 6x6 square) recorded as anamorphic."""
    from _review_result import FPS, N, images, id_maps, write_result
    from PIL import Image

    src = root / "input"
    src.mkdir(parents=True)
    for t, im in enumerate(images()):
        Image.fromarray(im).save(src / f"f{t:03d}.png")
    entities = [{"id": i, "score": 0.5, "query_index": k} for k, i in enumerate((1, 2, 3, 1005))]
    return write_result(root / "clip", src, [f"f{t:03d}" for t in range(N)], id_maps(), entities, FPS,
                        sample_aspect_ratio=sar)


def test_entities_json_records_the_pixel_shape_and_a_revision_keeps_it(tmp_path):
    """entities.json had no sample_aspect_ratio: a program reading it alone showed the masks squeezed."""
    from entitysam.review.edits import EditSession
    from entitysam.review.result import ResultFolder
    from entitysam.review.revision import save_revision

    out = anamorphic_result(tmp_path, Fraction(64, 45))
    head = json.loads((out / "entities.json").read_text())
    assert head["size"] == [24, 32] and head["sample_aspect_ratio"] == [64, 45]
    session = EditSession(ResultFolder.open(out))
    session.apply({"op": "delete", "ids": [3]})
    revision = save_revision(session)
    assert json.loads((revision / "entities.json").read_text())["sample_aspect_ratio"] == [64, 45]
    assert json.loads((revision / "manifest.json").read_text())["sample_aspect_ratio"] == [64, 45]
    # a result of before (no field anywhere) is square, and its revision says so
    old = anamorphic_result(tmp_path / "old", None)
    assert json.loads((old / "entities.json").read_text())["sample_aspect_ratio"] == [1, 1]


@pytest.mark.parametrize("sar, ratio", [(None, 1), (Fraction(64, 45), Fraction(64, 45)), (Fraction(2, 3), Fraction(2, 3))])
def test_the_viewers_entity_thumbnails_are_widened_as_the_player_is(tmp_path, sar, ratio):
    """The thumbnails were cut at the stored pixels: an anamorphic video's entities looked
    squeezed in the list beside the player, which widens the frame."""
    pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
    pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")
    import io

    from PIL import Image
    from starlette.testclient import TestClient

    from entitysam.review.server import Viewer, create_app

    out = anamorphic_result(tmp_path, sar)
    with TestClient(create_app(Viewer(out, token="t"), loopback_only=True)) as client:
        res = client.get("/api/thumbs/2.png")
    assert res.status_code == 200
    thumb = Image.open(io.BytesIO(res.content))
    # entity 2 is 6x6 stored pixels: its crop (a margin of 1 + 15% each side) is 8x8
    assert thumb.size == (round(8 * ratio), 8)
