"""Hostile inputs read as users see them, safely: special files refused before anything blocks or is
created, images and videos in their displayed orientation and full range, a frame size limit checked
from headers, and messages that say what is wrong (symlink loops, folders without frames, streams)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from _media import scene, write_frames, write_video
from entitysam.cli.options import DEFAULT_MAX_PIXELS_TEXT, pixel_count
from entitysam.errors import SourceError
from entitysam.io.idpng import read_id_png
from entitysam.io.manifest import MANIFEST
from entitysam.io.overlay import render_overlay
from entitysam.io.sources import (DEFAULT_MAX_PIXELS, ArraySource, FrameFolderSource, FrameSelection, LiveSource,
                                  list_batch_inputs, open_source)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_cli(*args, timeout=120):
    """`python -m entitysam segment ...` in a subprocess: a hang fails the test instead of blocking it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "entitysam", "segment", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def within(seconds, fn, *args, **kwargs):
    """fn(...) on a daemon thread; fails if it has not returned or raised within `seconds`."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"{fn.__name__} blocked for more than {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def listing(path):
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


# ----------------------------------------------------------------------------- special files


@pytest.mark.parametrize("name", ["pipe.mp4", "pipe.png", "pipe"])
def test_fifo_input_refused_without_blocking(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with pytest.raises(SourceError, match=r"is a named pipe \(FIFO\), not a regular file or folder"):
        within(10, open_source, fifo)


@pytest.mark.parametrize("online", [False, True])
def test_fifo_input_cli_offline_and_online(tmp_path, tiny_checkpoint, online):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    r = run_cli(fifo, "-o", out, "--checkpoint", tiny_checkpoint, "-q", *(["--online"] if online else []), timeout=60)
    assert r.returncode == 1, r.stderr
    assert "pipe: input" in r.stderr and "is a named pipe (FIFO)" in r.stderr
    assert not out.exists()  # refused before anything was created: no partial folder


def test_socket_and_devices_refused(tmp_path):
    sock_path = tmp_path / "cam.mp4"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        with pytest.raises(SourceError, match="is a socket, not a regular file"):
            within(10, open_source, sock_path)
    for dev in ("/dev/zero", "/dev/null"):  # reading /dev/zero as a video would never end
        with pytest.raises(SourceError, match=f"{dev} is a character device"):
            within(10, open_source, dev)


def test_fifo_inside_frame_folder_and_batch(tmp_path, tiny_checkpoint):
    folder = write_frames(tmp_path / "v", ["0", "2"])
    os.mkfifo(folder / "1.jpg")
    with pytest.raises(SourceError, match=r"v: frame .*1.jpg is a named pipe"):
        within(10, open_source, folder)
    # A frame replaced by a pipe after the folder was listed is refused when it is read, not waited on.
    src = FrameFolderSource(tmp_path / "v", files=[folder / "0.jpg", folder / "2.jpg"])
    (folder / "2.jpg").unlink()
    os.mkfifo(folder / "2.jpg")
    with pytest.raises(SourceError, match=r"frame .*2.jpg is a named pipe"):
        within(10, list, src)

    batch = tmp_path / "batch"
    batch.mkdir()
    write_video(batch / "good.mp4", 2)
    os.mkfifo(batch / "pipe.mp4")
    assert [p.name for p in list_batch_inputs(batch)] == ["good.mp4", "pipe.mp4"]
    out = tmp_path / "out"
    r = run_cli("--batch", batch, "-o", out, "--checkpoint", tiny_checkpoint, "-q", "--save", "panoptic")
    assert r.returncode == 1, r.stderr
    assert "pipe: input" in r.stderr and "named pipe" in r.stderr and "1 of 2 videos failed: pipe" in r.stderr
    assert listing(out) == ["good"]


# ----------------------------------------------------------------------------- links and messages


def test_symlink_loops_and_broken_links(tmp_path, tiny_checkpoint):
    os.symlink("loop.mp4", tmp_path / "loop.mp4")
    with pytest.raises(SourceError, match=r"loop.mp4 is a symbolic link loop"):
        open_source(tmp_path / "loop.mp4")
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    with pytest.raises(SourceError, match=r"a is a symbolic link loop"):
        open_source(tmp_path / "a")
    os.symlink(tmp_path / "gone.mp4", tmp_path / "dangling.mp4")
    with pytest.raises(SourceError, match=r"dangling.mp4 is a symbolic link to .*gone.mp4, which does not exist"):
        open_source(tmp_path / "dangling.mp4")
    folder = write_frames(tmp_path / "v", ["0", "1"])
    os.symlink("2.jpg", folder / "2.jpg")
    with pytest.raises(SourceError, match=r"frame .*2.jpg is a symbolic link loop"):
        open_source(folder)
    r = run_cli(tmp_path / "loop.mp4", "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "-q")
    assert r.returncode == 1 and "is a symbolic link loop" in r.stderr and "not found" not in r.stderr


def test_folder_without_frames_says_what_it_holds(tmp_path, tiny_checkpoint):
    folder = tmp_path / "stuff"
    folder.mkdir()
    for name in ("notes.txt", "a.gif", "b.bmp"):
        (folder / name).write_bytes(b"x")
    with pytest.raises(SourceError, match=r"stuff: no frames of the supported types \(.jpg .jpeg .png\) in this "
                                          r"folder; it holds 3 other entries: a.gif, b.bmp, notes.txt$"):
        open_source(folder)
    write_video(folder / "clip.mp4", 2)
    with pytest.raises(SourceError, match=r"4 other entries: .*clip.mp4.*; each video or sub-folder in it can be segmented as a batch"):
        open_source(folder)
    for i in range(6):
        (folder / f"x{i}.txt").write_bytes(b"x")
    with pytest.raises(SourceError, match=r"10 other entries: .* and 5 more"):
        open_source(folder)
    r = run_cli(folder, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "-q")
    assert r.returncode == 1 and "no frames of the supported types" in r.stderr and "empty" not in r.stderr
    empty = tmp_path / "batch"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match=r"no videos .* in it; it holds readme.txt"):
        list_batch_inputs(empty)


def test_output_is_an_existing_file(tmp_path, tiny_checkpoint):
    write_frames(tmp_path / "v", ["0"])
    (tmp_path / "file").write_text("x")
    for out, msg in ((tmp_path / "file", "is an existing file, not a folder"),
                     (tmp_path / "file" / "sub", "file is a file, not a folder")):
        r = run_cli(tmp_path / "v", "-o", out, "--checkpoint", tiny_checkpoint, "-q")
        assert r.returncode == 2 and msg in r.stderr and "File exists" not in r.stderr
        assert "Traceback" not in r.stderr
    assert (tmp_path / "file").read_text() == "x"


# ----------------------------------------------------------------------------- streams


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stream_closed_port_message(tmp_path, tiny_checkpoint):
    url = f"http://127.0.0.1:{_free_port()}/live.mp4"
    with pytest.raises(SourceError, match=rf"cannot open stream {url}: connection refused .*the stream could not "
                                          r"be opened \(check the address"):
        within(20, LiveSource, url)
    r = run_cli(url, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "--online", "-q", timeout=60)
    assert r.returncode == 1 and f"cannot open stream {url}: connection refused" in r.stderr
    assert "Input/output error" not in r.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("scheme", ["http", "tcp"])
def test_stream_that_never_answers_times_out(scheme):
    with socket.socket() as server:  # accepts connections, never sends a byte
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        url = f"{scheme}://127.0.0.1:{server.getsockname()[1]}/live"
        t0 = time.monotonic()
        with pytest.raises(SourceError, match=rf"cannot open stream {url}: no answer within 1 s \(timed out\)"):
            within(20, LiveSource, url, timeout=(1.0, 1.0))
        assert time.monotonic() - t0 < 10


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


def _read_one(path, **kw) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's warnings (palette transparency, bombs) must not surface
        frames = list(open_source(path, **kw))
    assert len(frames) == 1
    return frames[0].image


def test_sixteen_bit_pngs_keep_their_range(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 65536, (12, 16)).astype(np.uint16)
    gray[0, :3] = (0, 32768, 65535)
    expected = np.clip(np.floor(gray / 257.0 + 0.5), 0, 255).astype(np.uint8)
    with Image.open(_png(tmp_path / "g16.png", gray, 0)) as im:
        assert im.mode in ("I;16", "I;16B", "I")  # what made it ~100% white before
    image = _read_one(tmp_path / "g16.png")
    np.testing.assert_array_equal(image, np.repeat(expected[..., None], 3, axis=2))
    assert image[0, :3, 0].tolist() == [0, 128, 255]
    assert (image == 255).mean() < 0.01

    rgb = rng.integers(0, 65536, (12, 16, 3)).astype(np.uint16)
    np.testing.assert_array_equal(_read_one(_png(tmp_path / "rgb16.png", rgb, 2)), (rgb >> 8).astype(np.uint8))
    rgba = rng.integers(0, 65536, (12, 16, 4)).astype(np.uint16)
    np.testing.assert_array_equal(_read_one(_png(tmp_path / "rgba16.png", rgba, 6)),
                                  (rgba[..., :3] >> 8).astype(np.uint8))
    la = rng.integers(0, 65536, (12, 16, 2)).astype(np.uint16)
    np.testing.assert_array_equal(_read_one(_png(tmp_path / "la16.png", la, 4)),
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
        np.testing.assert_array_equal(_read_one(path), np.asarray(im.convert("RGB")), err_msg=mode)
    p_transparent.save(tmp_path / "pt.png", transparency=0)
    with Image.open(tmp_path / "pt.png") as im:
        expected = np.asarray(im.convert("RGBA").convert("RGB"))
    np.testing.assert_array_equal(_read_one(tmp_path / "pt.png"), expected)  # no Pillow warning either
    cmyk = Image.fromarray(base).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as im:
        assert im.mode == "CMYK"
        expected = np.asarray(im.convert("RGB"))
    image = _read_one(tmp_path / "cmyk.jpg")
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
    image = _read_one(path)
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


# ----------------------------------------------------------------------------- size limit


def _bomb_png(path: Path, w=60000, h=60000) -> Path:
    """A PNG whose header claims w x h, with (almost) no pixel data: decoding it would fail, so a
    size message proves the header alone was read."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)))
    return path


def _bomb_jpeg(path: Path, w=60000, h=60000) -> Path:
    buf = path.with_suffix(".tmp.jpg")
    Image.new("RGB", (16, 16), (10, 20, 30)).save(buf, quality=90)
    data = bytearray(buf.read_bytes())
    buf.unlink()
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    path.write_bytes(bytes(data))
    return path


def test_decompression_bombs_refused_from_the_header(tmp_path, tiny_checkpoint):
    for path in (_bomb_png(tmp_path / "bomb.png"), _bomb_jpeg(tmp_path / "bomb.jpg")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(SourceError, match=r"60000x60000 = 3600.0 megapixels, over the limit of 50 "
                                                  r"megapixels: refused before decoding"):
                open_source(path)
        r = run_cli(path, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "-q")
        assert r.returncode == 1 and "3600.0 megapixels" in r.stderr
        assert "Traceback" not in r.stderr and "DecompressionBomb" not in r.stderr
    folder = tmp_path / "frames"
    write_frames(folder, ["0", "1"])
    _bomb_png(folder / "2.png")
    frames = iter(open_source(folder))
    assert next(frames).name == "0" and next(frames).name == "1"
    with pytest.raises(SourceError, match=r"frames: frame 2.png is 60000x60000"):
        next(frames)
    assert not (tmp_path / "out").exists()


def test_max_pixels_option(tmp_path, tiny_checkpoint, monkeypatch):
    assert DEFAULT_MAX_PIXELS == 50_000_000 == pixel_count(DEFAULT_MAX_PIXELS_TEXT)
    Image.fromarray(scene(0)).save(tmp_path / "still.png")  # 64x48 = 3072 pixels
    write_video(tmp_path / "clip.mp4", 2)
    with pytest.raises(SourceError, match=r"still.png: frame still.png is 64x48 = 0.0 megapixels, over the limit"):
        open_source(tmp_path / "still.png", max_pixels=3000)
    with pytest.raises(SourceError, match=r"clip.mp4: its video stream is 64x48"):
        open_source(tmp_path / "clip.mp4", max_pixels=3000)
    assert len(list(open_source(tmp_path / "clip.mp4", max_pixels=3072))) == 2
    with pytest.raises(SourceError, match="max_pixels must be a positive number"):
        open_source(tmp_path / "still.png", max_pixels=0)
    # Above Pillow's own limits (lowered here to stand for a huge image): no warning, no error, when allowed.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert _read_one(tmp_path / "still.png", max_pixels=None).shape == (48, 64, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 3072 is between 1x and 2x: Pillow would only warn
    assert _read_one(tmp_path / "still.png").shape == (48, 64, 3)

    out = tmp_path / "out"
    r = run_cli(tmp_path / "still.png", "-o", out, "--checkpoint", tiny_checkpoint, "-q", "--max-pixels", "3k")
    assert r.returncode == 1 and "over the limit of 0.003 megapixels" in r.stderr and "--max-pixels" in r.stderr
    assert "corrupt" not in r.stderr  # a readable frame over the limit is not "corrupt"
    r = run_cli(tmp_path / "still.png", "-o", out, "--checkpoint", tiny_checkpoint, "-q", "--max-pixels", "none",
                "--save", "panoptic")
    assert r.returncode == 0, r.stderr
    for bad in ("0", "-5", "abc", "nan"):
        r = run_cli(tmp_path / "still.png", "-o", out, "--checkpoint", tiny_checkpoint, "--max-pixels", bad)
        assert r.returncode == 2 and "--max-pixels" in r.stderr


# ----------------------------------------------------------------------------- corrupt frames


def _corrupt_video(tmp_path: Path) -> tuple[Path, int | None]:
    """An mp4 with 20 bytes in the middle overwritten so that the decoder conceals the damage in a
    frame and flags it as corrupt; returns (path, that frame) (None if no tried offset gives one)."""
    import av

    full = write_video(tmp_path / "full.mp4", 20, noise=True)
    original = full.read_bytes()
    path = tmp_path / "bad.mp4"
    for fraction in np.linspace(0.3, 0.8, 8):
        data = bytearray(original)
        p = int(len(data) * fraction)
        data[p:p + 20] = np.random.default_rng(p).integers(0, 256, 20, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
        try:
            with av.open(str(path)) as c:
                flagged = [i for i, f in enumerate(c.decode(video=0)) if f.is_corrupt]
        except av.error.FFmpegError:
            continue
        if flagged:
            return path, flagged[0]
    return path, None


def test_corrupt_video_frame_named(tmp_path, tiny_checkpoint):
    path, bad = _corrupt_video(tmp_path)
    if bad is None:
        pytest.skip("this FFmpeg build flags none of the damaged frames")
    with pytest.raises(SourceError, match=rf"bad.mp4: frame {bad:06d} is corrupt .*: pass end={bad} to stop before it"):
        list(open_source(path))
    assert len(list(open_source(path, FrameSelection(end=bad)))) == bad  # the frames before it are usable
    for online in (False, True):
        out = tmp_path / f"out{online}"
        r = run_cli(path, "-o", out, "--checkpoint", tiny_checkpoint, "-q", "--save", "panoptic",
                    *(["--online"] if online else []))
        assert r.returncode == 1 and f"frame {bad:06d} is corrupt" in r.stderr
        manifests = list(out.rglob(MANIFEST))
        if not online:
            assert listing(out) == []  # nothing half-written
        else:  # online keeps the frames done, marked as failed, never as complete
            assert len(manifests) == 1
            m = json.loads(manifests[0].read_text())
            assert m["complete"] is False and m["status"] == "failed"


def test_corrupt_image_in_folder_offline_leaves_nothing(tmp_path, tiny_checkpoint):
    folder = write_frames(tmp_path / "v", ["0", "1", "2", "3"])
    data = (folder / "2.jpg").read_bytes()
    (folder / "2.jpg").write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    r = run_cli(folder, "-o", out, "--checkpoint", tiny_checkpoint, "-q")
    assert r.returncode == 1 and "cannot read frame" in r.stderr and "2.jpg" in r.stderr
    assert listing(out) == []


def test_api_max_pixels(tmp_path, tiny_model):
    from entitysam import segment, stream

    Image.fromarray(scene(0)).save(tmp_path / "still.png")
    for fn in (segment, stream):
        with pytest.raises(SourceError, match=r"still.png is 64x48 = 0.0 megapixels, over the limit of 0.001"):
            fn(tiny_model, tmp_path / "still.png", max_pixels=1000)
    with segment(tiny_model, tmp_path / "still.png", max_pixels=None) as result:
        assert len(result) == 1
