"""TIFF inputs (`.tif`, `.tiff`).

* `.tif`/`.tiff` were refused as an unsupported input, single images and the frames of a frame
  folder alike (a folder of TIFF frames had "no frames of the supported types"), though Pillow
  reads TIFF. They are images now, by the one suffix list (IMAGE_EXTENSIONS), and read as shown:
  16-bit grayscale scaled (not clipped to white), 16-bit "min-is-white" inverted as Pillow inverts
  8-bit ones, CMYK, LAB, YCbCr and gray with premultiplied alpha converted; floating-point and
  32-bit or signed integer samples, which have no display range, are refused in one line (they
  were black or white pictures). A multi-page TIFF is a video of its pages, as an animated
  GIF/PNG/WebP is one of its frames; the header's size is checked against the pixel limit.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from PIL import Image

from _cli import run_cli
from _media import scene
from entitysam.errors import SourceError
from entitysam.io.sources import AnimatedImageSource, ImageSource, open_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiff_bytes(arr: np.ndarray, photometric: int, sample_format: int = 1, size: tuple[int, int] | None = None,
               extra_samples: int | None = None) -> bytes:
    """A baseline little-endian TIFF of one uncompressed strip, chunky samples (what Pillow cannot
    write: 16-bit min-is-white, 16-bit RGB, signed samples, associated alpha); `size` (w, h)
    declares another size."""
    arr = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<")))
    h, w = arr.shape[:2] if size is None else size[::-1]
    spp = 1 if arr.ndim == 2 else arr.shape[2]
    bits = arr.dtype.itemsize * 8
    data = arr.tobytes()
    count = 10 + (extra_samples is not None)
    after = 8 + 2 + 12 * count + 4  # where the values that do not fit in an entry go
    per_sample = struct.pack(f"<{spp}H", *[bits] * spp) + struct.pack(f"<{spp}H", *[sample_format] * spp)
    data_at = after + len(per_sample)

    def entry(tag, kind, n, value):
        packed = struct.pack("<HH", value, 0) if kind == 3 and n == 1 else struct.pack("<I", value)
        return struct.pack("<HHI", tag, kind, n) + packed

    def samples(tag, value, offset):
        if spp == 1:
            return entry(tag, 3, 1, value)
        if spp == 2:
            return struct.pack("<HHI", tag, 3, 2) + struct.pack("<HH", value, value)
        return entry(tag, 3, spp, offset)

    entries = [entry(256, 4, 1, w), entry(257, 4, 1, h), samples(258, bits, after), entry(259, 3, 1, 1),
               entry(262, 3, 1, photometric), entry(273, 4, 1, data_at), entry(277, 3, 1, spp),
               entry(278, 4, 1, h), entry(279, 4, 1, len(data))]
    entries += [entry(338, 3, 1, extra_samples)] if extra_samples is not None else []
    entries += [samples(339, sample_format, after + 2 * spp)]
    return (b"II*\x00" + struct.pack("<IH", 8, count) + b"".join(entries) + b"\x00" * 4 + per_sample + data)


def only_frame(path, **kw) -> np.ndarray:
    frames = list(open_source(path, **kw))
    assert len(frames) == 1
    return frames[0].image


@pytest.mark.parametrize("name", ["clip.tif", "clip.tiff", "CLIP.TIF"])
def test_a_tiff_image_is_read_as_it_is(tmp_path, name):
    Image.fromarray(scene(3)).save(tmp_path / name, format="TIFF", compression="tiff_lzw")
    source = open_source(tmp_path / name)
    assert isinstance(source, ImageSource) and source.name == name.split(".")[0]
    assert np.array_equal(only_frame(tmp_path / name), scene(3))


def test_a_folder_of_tiff_frames_is_a_video(tmp_path):
    (tmp_path / "v").mkdir()
    for t, suffix in enumerate([".tif", ".tiff", ".TIF", ".png"]):
        Image.fromarray(scene(3 * t)).save(tmp_path / "v" / f"{t}{suffix}")
    frames = list(open_source(tmp_path / "v"))
    assert [f.name for f in frames] == ["0", "1", "2", "3"]
    assert all(np.array_equal(f.image, scene(3 * t)) for t, f in enumerate(frames))


def test_a_tiff_is_segmented_from_the_command_line(tmp_path):
    Image.fromarray(scene(0)).save(tmp_path / "still.tiff")
    proc = run_cli(tmp_path / "still.tiff", "--model", "demo", "-o", tmp_path / "out", "--save", "panoptic", "-q",
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (tmp_path / "out" / "still" / "panoptic").iterdir()] == ["still.png"]


def _ramp(dtype=np.uint16, top=65535):
    return np.linspace(0, top, 8 * 16).reshape(8, 16).astype(dtype)


@pytest.mark.parametrize("case", ["16-bit", "16-bit big-endian", "16-bit min-is-white", "16-bit rgb", "8-bit min-is-white"])
def test_tiff_samples_are_shown_with_their_full_range(tmp_path, case):
    """16-bit samples through a plain conversion clip at 255: a white picture. A 16-bit min-is-white
    TIFF (0 is white) was shown inverted: Pillow inverts only 1- to 8-bit ones."""
    ramp = _ramp()
    expected = np.repeat(np.round(ramp / 257.0).astype(np.uint8)[..., None], 3, axis=2)
    path = tmp_path / "x.tif"
    if case == "16-bit":
        Image.fromarray(ramp).save(path)
    elif case == "16-bit big-endian":
        Image.fromarray(ramp.astype(">u2")).save(path)
    elif case == "16-bit min-is-white":
        path.write_bytes(tiff_bytes(ramp, photometric=0))
        expected = 255 - expected
    elif case == "16-bit rgb":
        path.write_bytes(tiff_bytes(np.stack([ramp, ramp // 2, 65535 - ramp], axis=2), photometric=2))
        expected = np.stack([ramp >> 8, ramp // 2 >> 8, (65535 - ramp) >> 8], axis=2).astype(np.uint8)
    else:
        path.write_bytes(tiff_bytes(_ramp(np.uint8, 255), photometric=0))
        expected = np.repeat(255 - _ramp(np.uint8, 255)[..., None], 3, axis=2)
    assert np.abs(only_frame(path).astype(int) - expected).max() <= 1


@pytest.mark.parametrize("mode, value, rgb", [("CMYK", (0, 255, 0, 0), (255, 0, 255)), ("LAB", (128, 128, 128), (119, 119, 119)),
                                              ("1", 1, (255, 255, 255)), ("LA", (100, 7), (100, 100, 100)),
                                              ("YCbCr", (100, 128, 128), (100, 100, 100))])
def test_other_tiff_modes_are_converted(tmp_path, mode, value, rgb):
    Image.new(mode, (16, 8), value).save(tmp_path / "x.tif")
    assert np.abs(only_frame(tmp_path / "x.tif").astype(int) - rgb).max() <= 1


def test_gray_with_premultiplied_alpha_is_read(tmp_path):
    """Pillow's mode La (a TIFF's gray with associated alpha) converts only to LA: it was refused as
    'corrupt, truncated or not an image' (Pillow's 'conversion from La to L not supported')."""
    path = tmp_path / "x.tif"
    path.write_bytes(tiff_bytes(np.full((8, 16, 2), (25, 128), np.uint8), photometric=1, extra_samples=1))
    with Image.open(path) as im:
        assert im.mode == "La"
    assert np.abs(only_frame(path).astype(int) - 50).max() <= 1  # the colour under the alpha: 25 * 255 / 128


@pytest.mark.parametrize("dtype, sample_format, words", [(np.float32, 3, "floating-point numbers"),
                                                         (np.uint32, 1, "32-bit integers"),
                                                         (np.int32, 2, "32-bit signed integers"),
                                                         (np.int16, 2, "16-bit signed integers")])
def test_samples_without_a_display_range_are_refused(tmp_path, dtype, sample_format, words):
    """A float TIFF of 0..1 was a black picture, a 32-bit one white (clipped at 255), a signed one
    had its negative half black: each is refused in one line naming it, before any decoding."""
    path = tmp_path / "x.tif"
    path.write_bytes(tiff_bytes(np.arange(128).reshape(8, 16).astype(dtype), photometric=1, sample_format=sample_format))
    with pytest.raises(SourceError, match=rf"cannot read image \S*x\.tif: its pixels are {words}, which have no "
                                          "standard display range"):
        open_source(path)
    (tmp_path / "v").mkdir()
    path.rename(tmp_path / "v" / "1.tif")
    with pytest.raises(SourceError, match=rf"cannot read frame \S*1\.tif: its pixels are {words}"):
        open_source(tmp_path / "v")  # the first frame: from its header, before the model is loaded


def test_a_multi_page_tiff_is_a_video_of_its_pages(tmp_path):
    """As an animated GIF/PNG/WebP: not its first page alone. Pages have no durations: 25 fps."""
    pages = [Image.fromarray(scene(3 * t)) for t in range(3)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    source = open_source(tmp_path / "stack.tif")
    assert isinstance(source, AnimatedImageSource) and source.fps == 25
    frames = list(source)
    assert [f.name for f in frames] == ["000000", "000001", "000002"]
    assert all(np.array_equal(f.image, scene(3 * t)) for t, f in enumerate(frames))
    with pytest.raises(SourceError, match="over the limit of 100 pixels"):
        open_source(tmp_path / "stack.tif", max_pixels=100)


def _tiff_pages(path, pages: list[tuple[np.ndarray, int]]) -> None:
    """A TIFF of `pages`, each (pixels, NewSubfileType: 1 a reduced-resolution copy, 4 a mask)."""
    from PIL import TiffImagePlugin

    with TiffImagePlugin.AppendingTiffWriter(path, True) as tf:
        for arr, subfile_type in pages:
            Image.fromarray(arr).save(tf, format="TIFF", tiffinfo={254: subfile_type})
            tf.newFrame()


def test_a_tiffs_thumbnails_and_masks_are_no_frames(tmp_path):
    """A scan or a camera's TIFF carries reduced-resolution copies of its pages (thumbnails,
    previews) and may carry masks: read as frames, such an image was refused as a video of frames of
    two sizes, and so was a frame folder holding one."""
    small, mask = scene(7)[:12, :16], np.zeros((48, 64), np.uint8)
    _tiff_pages(tmp_path / "scan.tif", [(scene(0), 0), (small, 1)])
    source = open_source(tmp_path / "scan.tif")
    assert isinstance(source, ImageSource) and np.array_equal(only_frame(tmp_path / "scan.tif"), scene(0))
    _tiff_pages(tmp_path / "stack.tif", [(scene(0), 0), (small, 1), (scene(3), 0), (mask, 4), (scene(6), 0)])
    source = open_source(tmp_path / "stack.tif")
    assert isinstance(source, AnimatedImageSource) and source.count_hint() == 3
    frames = list(source)
    assert [f.name for f in frames] == ["000000", "000001", "000002"]
    assert all(np.array_equal(f.image, scene(3 * t)) for t, f in enumerate(frames))
    # its thumbnail first, a float one (no display range: only the picture's pixels count)
    _tiff_pages(tmp_path / "first.tif", [(small[..., 0].astype(np.float32), 1), (scene(0), 0)])
    source = open_source(tmp_path / "first.tif")
    assert isinstance(source, ImageSource) and np.array_equal(only_frame(tmp_path / "first.tif"), scene(0))
    folder = tmp_path / "frames"
    folder.mkdir()
    _tiff_pages(folder / "0001.tif", [(small, 1), (scene(0), 0)])  # (its thumbnail first)
    _tiff_pages(folder / "0002.tif", [(scene(3), 0), (small, 1)])
    frames = list(open_source(folder))
    assert [f.image.shape for f in frames] == [(48, 64, 3)] * 2
    assert np.array_equal(frames[0].image, scene(0)) and np.array_equal(frames[1].image, scene(3))


def test_a_tiff_declaring_a_huge_picture_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.tif"
    path.write_bytes(tiff_bytes(np.zeros((2, 2), np.uint8), photometric=1, size=(100_000, 100_000)))
    assert path.stat().st_size < 300
    with pytest.raises(SourceError, match="over the limit of 50 megapixels"):
        open_source(path)


def _tiff_whose_second_page_has_no_width(path) -> None:
    pages = [Image.fromarray(np.full((12, 16, 3), v, np.uint8)) for v in (50, 150)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    data = bytearray(path.read_bytes())
    assert data[:2] == b"II"
    ifd = struct.unpack_from("<I", data, 4)[0]
    ifd = struct.unpack_from("<I", data, ifd + 2 + 12 * struct.unpack_from("<H", data, ifd)[0])[0]  # the second
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        if struct.unpack_from("<H", data, ifd + 2 + 12 * k)[0] == 256:  # ImageWidth, made an unknown tag
            struct.pack_into("<H", data, ifd + 2 + 12 * k, 0xFFF0)
    path.write_bytes(bytes(data))


def test_a_tiff_with_a_page_without_its_size_is_one_error(tmp_path):
    """Pillow counts the pages with a TypeError ("Missing dimensions") for a page without its size: a
    traceback, for the image and for a frame folder holding it."""
    path = tmp_path / "v" / "2.tif"
    path.parent.mkdir()
    Image.fromarray(np.full((12, 16, 3), 9, np.uint8)).save(tmp_path / "v" / "1.tif")
    _tiff_whose_second_page_has_no_width(path)
    with pytest.raises(SourceError, match=r"cannot read image \S*2\.tif: one of its pages is damaged \(Missing"):
        open_source(path)
    frames = iter(open_source(tmp_path / "v"))
    assert next(frames).name == "1"
    with pytest.raises(SourceError, match=r"cannot read frame \S*2\.tif: one of its pages is damaged"):
        next(frames)


def test_training_refuses_such_an_image_naming_it(tmp_path):
    """Training reads images as inference does (train.samples.load_rgb)."""
    from entitysam.train.samples import DatasetError, load_rgb

    path = tmp_path / "x.tif"
    path.write_bytes(tiff_bytes(np.zeros((8, 16), np.float32), photometric=1, sample_format=3))
    with pytest.raises(DatasetError, match=r"cannot read \S*x\.tif: its pixels are floating-point numbers"):
        load_rgb(str(path))
    Image.fromarray(_ramp()).save(path)
    assert abs(int(load_rgb(str(path))[4, 8, 0]) - round(_ramp()[4, 8] / 257)) <= 1  # scaled, not clipped


@pytest.mark.parametrize("suffix", [".jfif", ".jpe", ".JFIF", ".PNG", ".JPG", ".TIFF"])
def test_other_names_of_the_same_formats_are_images(tmp_path, suffix):
    """`.jfif` (what browsers on Windows save JPEGs as) and `.jpe` were refused as unsupported
    inputs and skipped in frame folders; upper-case suffixes were already read (one rule:
    IMAGE_EXTENSIONS, compared in lower case)."""
    fmt = {".jfif": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".jpg": "JPEG", ".tiff": "TIFF"}[suffix.lower()]
    Image.fromarray(scene(3)).save(tmp_path / f"photo{suffix}", format=fmt, quality=95)
    assert isinstance(open_source(tmp_path / f"photo{suffix}"), ImageSource)
    (tmp_path / "v").mkdir()
    for t in range(2):
        Image.fromarray(scene(3 * t)).save(tmp_path / "v" / f"{t}{suffix}", format=fmt, quality=95)
    assert [f.name for f in open_source(tmp_path / "v")] == ["0", "1"]


def test_a_pil_image_in_memory_without_a_display_range_is_named(tmp_path):
    """Frames given as PIL images: a float one is refused naming the frame, not with a bare
    'cannot show this image'."""
    frames = [Image.fromarray(scene(0)), Image.fromarray(np.zeros((48, 64), np.float32))]
    with pytest.raises(SourceError, match=r"^clip: frame 000001 \(a PIL image\): its pixels are floating-point"):
        list(open_source(frames, name="clip"))
