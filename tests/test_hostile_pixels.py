"""Images and videos read as they are displayed: 16-bit and other PNG/colour modes in their full range,
EXIF orientation, and video display rotation and flips, through the sources and end to end."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from _cli import run_cli
from _media import read_only_frame, scene
from entitysam.io.idpng import read_id_png
from entitysam.io.manifest import MANIFEST
from entitysam.io.overlay import render_overlay
from entitysam.io.sources import ArraySource, open_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- pixels


def _png(path: Path, array: np.ndarray, color_type: int, bit_depth: int = 16) -> Path:
    """A PNG written by hand (Pillow cannot write 16-bit colour): gray 0, RGB 2, gray+alpha 4, RGBA 6."""
    h, w = array.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = array.astype(dtype).reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def test_sixteen_bit_pngs_keep_their_range(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 65536, (12, 16)).astype(np.uint16)
    gray[0, :3] = (0, 32768, 65535)
    expected = np.clip(np.floor(gray / 257.0 + 0.5), 0, 255).astype(np.uint8)
    with Image.open(_png(tmp_path / "g16.png", gray, 0)) as im:
        assert im.mode in ("I;16", "I;16B", "I")  # what made it ~100% white before
    image = read_only_frame(tmp_path / "g16.png")
    np.testing.assert_array_equal(image, np.repeat(expected[..., None], 3, axis=2))
    assert image[0, :3, 0].tolist() == [0, 128, 255]
    assert (image == 255).mean() < 0.01

    rgb = rng.integers(0, 65536, (12, 16, 3)).astype(np.uint16)
    np.testing.assert_array_equal(read_only_frame(_png(tmp_path / "rgb16.png", rgb, 2)), (rgb >> 8).astype(np.uint8))
    rgba = rng.integers(0, 65536, (12, 16, 4)).astype(np.uint16)
    np.testing.assert_array_equal(read_only_frame(_png(tmp_path / "rgba16.png", rgba, 6)),
                                  (rgba[..., :3] >> 8).astype(np.uint8))
    la = rng.integers(0, 65536, (12, 16, 2)).astype(np.uint16)
    np.testing.assert_array_equal(read_only_frame(_png(tmp_path / "la16.png", la, 4)),
                                  np.repeat((la[..., :1] >> 8).astype(np.uint8), 3, axis=2))
    # 16-bit frames in memory (PIL images in mode I;16 and I) too.
    for dtype, mode in ((np.uint16, "I;16"), (np.int32, "I")):
        im = Image.fromarray(gray.astype(dtype))
        assert im.mode == mode
        frame = next(iter(ArraySource([im])))
        np.testing.assert_array_equal(frame.image[..., 0], expected)


def test_other_modes_to_rgb(tmp_path):
    base = scene(3)
    cases = {
        "L": Image.fromarray(base).convert("L"),
        "LA": Image.fromarray(base).convert("LA"),
        "RGBA": Image.fromarray(base).convert("RGBA"),
        "P": Image.fromarray(base).convert("P"),
        "1": Image.fromarray(base).convert("1"),
    }
    p_transparent = Image.fromarray(base).convert("P")
    p_transparent.info["transparency"] = 0
    for mode, im in cases.items():
        path = tmp_path / f"{mode}.png"
        im.save(path)
        np.testing.assert_array_equal(read_only_frame(path), np.asarray(im.convert("RGB")), err_msg=mode)
    p_transparent.save(tmp_path / "pt.png", transparency=0)
    with Image.open(tmp_path / "pt.png") as im:
        expected = np.asarray(im.convert("RGBA").convert("RGB"))
    np.testing.assert_array_equal(read_only_frame(tmp_path / "pt.png"), expected)  # no Pillow warning either
    cmyk = Image.fromarray(base).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as im:
        assert im.mode == "CMYK"
        expected = np.asarray(im.convert("RGB"))
    image = read_only_frame(tmp_path / "cmyk.jpg")
    np.testing.assert_array_equal(image, expected)
    assert np.abs(image.astype(int) - base).mean() < 8  # close to the original colours, not inverted


def _marked(w=40, h=30) -> np.ndarray:
    """A frame whose top-left corner is red and top-right green: each orientation is distinct."""
    a = np.full((h, w, 3), 90, np.uint8)
    a[h // 2:, : w // 3] = (200, 200, 40)  # a large asymmetric patch
    a[:8, :10] = (255, 0, 0)
    a[:8, -6:] = (0, 255, 0)
    return a


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(tmp_path, orientation):
    stored = _marked()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"
    Image.fromarray(stored).save(path, exif=exif)
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    image = read_only_frame(path)
    np.testing.assert_array_equal(image, expected)
    # Orientation 6 ("rotate 90 CW to view") and 8 (90 CCW) stated independently of Pillow.
    if orientation == 6:
        np.testing.assert_array_equal(image, np.rot90(stored, -1))
    if orientation == 8:
        np.testing.assert_array_equal(image, np.rot90(stored, 1))


def test_exif_orientation_end_to_end(tmp_path, tiny_checkpoint):
    """A folder of portrait photos stored landscape with orientation 6: results are portrait."""
    folder = tmp_path / "photos"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    for t in range(2):
        Image.fromarray(scene(t)).save(folder / f"img{t}.jpg", exif=exif, quality=95)  # stored 64x48
    out = tmp_path / "out"
    r = run_cli(folder, "-o", out, "--checkpoint", tiny_checkpoint, "-q")
    assert r.returncode == 0, r.stderr
    d = out / "photos"
    assert json.loads((d / MANIFEST).read_text())["size"] == [64, 48]  # [H, W] as displayed
    assert read_id_png(d / "panoptic" / "img0.png").shape == (64, 48)
    assert json.loads((d / "entities.json").read_text())["size"] == [64, 48]
    import av

    with av.open(str(d / "overlay.mp4")) as c:
        frame = next(c.decode(video=0))
        assert (frame.width, frame.height) == (48, 64) and frame.rotation == 0


def test_photos_whose_exif_block_is_damaged_are_read_without_a_word(tmp_path, tiny_checkpoint):
    """Orientation 6, and a camera make whose text lies past the end of the block (as apps that edit
    EXIF leave it): Pillow warns of it each time it reads the block, with its own source lines. A
    run under -q printed 4 lines a frame (4000 for a folder of 1000 such photos); the photos are
    read, turned by their orientation, as viewers show them."""
    ifd = (struct.pack(">H", 2) + struct.pack(">HHII", 0x010F, 2, 100, 0x1000)  # Make: 100 bytes at 4096
           + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack(">I", 0))  # Orientation: 6
    exif = b"Exif\x00\x00MM\x00*" + struct.pack(">I", 8) + ifd
    folder = tmp_path / "photos"
    folder.mkdir()
    for t in range(2):
        Image.fromarray(scene(t)).save(folder / f"img{t}.jpg", exif=exif, quality=95)  # stored 64x48
    out = tmp_path / "out"
    r = run_cli(folder, "-o", out, "--checkpoint", tiny_checkpoint, "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert json.loads((out / "photos" / MANIFEST).read_text())["size"] == [64, 48]  # [H, W] as displayed


def _rotated_video(path: Path, degrees: int, hflip=False, vflip=False, n=2) -> np.ndarray:
    """A 128x96 (stored) mp4 with a display matrix; returns the stored first frame."""
    import av

    stored = _marked(128, 96)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(10))
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        s.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        for _ in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return stored


def _corner_colours(image: np.ndarray) -> tuple:
    """Which corner is red and which green (the colours are exact away from the edges of the squares)."""
    h, w = image.shape[:2]
    corners = {"tl": image[2, 2], "tr": image[2, w - 3], "bl": image[h - 3, 2], "br": image[h - 3, w - 3]}
    red = [k for k, v in corners.items() if v[0] > 200 and v[1] < 60]
    green = [k for k, v in corners.items() if v[1] > 200 and v[0] < 60]
    return image.shape[:2], red, green


# display rotation -> (displayed [H, W], red corner, green corner). ffprobe reports these files with
# "rotation=<degrees>" and ffmpeg (5.1, autorotate) shows them exactly so: a positive rotation is a
# quarter turn counterclockwise, np.rot90(stored, degrees // 90). Checked with the ffmpeg binary below
# when it is installed.
ROTATIONS = {90: ((128, 96), ["bl"], ["tl"]), 270: ((128, 96), ["tr"], ["br"]), -90: ((128, 96), ["tr"], ["br"]),
             180: ((96, 128), ["br"], ["bl"]), 0: ((96, 128), ["tl"], ["tr"])}


@pytest.mark.parametrize("degrees", sorted(ROTATIONS))
def test_video_display_rotation(tmp_path, degrees):
    path = tmp_path / f"rot{degrees}.mp4"
    stored = _rotated_video(path, degrees)
    frames = list(open_source(path))
    assert len(frames) == 2
    image = frames[0].image
    assert _corner_colours(image) == ROTATIONS[degrees]
    expected = np.rot90(stored, (degrees // 90) % 4)
    assert np.abs(image.astype(int) - expected).mean() < 3  # lossy codec: close, not equal
    if shutil.which("ffmpeg"):
        png = tmp_path / "ffmpeg.png"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(path), "-frames:v", "1", str(png)], check=True)
        with Image.open(png) as im:
            shown = np.asarray(im.convert("RGB"))
        assert shown.shape == image.shape and np.abs(shown.astype(int) - image).mean() < 3


@pytest.mark.parametrize("hflip, vflip, corners", [(True, False, ["tr", "tl"]), (False, True, ["bl", "br"])])
def test_video_display_flips(tmp_path, hflip, vflip, corners):
    path = tmp_path / "flip.mp4"
    _rotated_video(path, 0, hflip=hflip, vflip=vflip)
    shape, red, green = _corner_colours(next(iter(open_source(path))).image)
    assert shape == (96, 128) and [red[0], green[0]] == corners


@pytest.mark.parametrize("online", [False, True])
def test_rotated_video_end_to_end(tmp_path, tiny_checkpoint, online):
    """A portrait phone video (stored 128x96, displayed 96x128): every output is portrait, and
    overlay.mp4 plays upright (its frames are stored upright, with no display rotation)."""
    import av

    stored = _rotated_video(tmp_path / "phone.mp4", 90, n=3)
    out = tmp_path / "out"
    r = run_cli(tmp_path / "phone.mp4", "-o", out, "--checkpoint", tiny_checkpoint, "-q", *(["--online"] if online else []))
    assert r.returncode == 0, r.stderr
    d = out / "phone"
    assert read_id_png(d / "panoptic" / "000000.png").shape == (128, 96)
    if not online:  # online mode writes entities.jsonl and overlay.ts instead
        assert json.loads((d / "entities.json").read_text())["size"] == [128, 96]
    with av.open(str(d / ("overlay.ts" if online else "overlay.mp4"))) as c:
        frame = next(c.decode(video=0))
        assert (frame.width, frame.height) == (96, 128) and frame.rotation == 0
        image = frame.to_ndarray(format="rgb24").astype(int)
    # The overlay is the frame as played (a quarter turn counterclockwise) tinted by the id map,
    # not the frame turned the other way.
    ids = read_id_png(d / "panoptic" / "000000.png")
    as_played = np.abs(image - render_overlay(np.rot90(stored, 1).copy(), ids)).mean()
    turned_wrong = np.abs(image - render_overlay(np.rot90(stored, -1).copy(), ids)).mean()
    assert as_played < 3 < 10 < turned_wrong
