"""An image whose pixel data cannot be decoded is an error, never an image of zeros, and one line,
never a traceback."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from entitysam.errors import SourceError
from entitysam.io.sources import open_source
from entitysam.train.samples import load_rgb


def _png_whose_header_lies(path):
    """A 300x200 PNG whose header says 3000x3000: its pixel data does not decode as that."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), np.uint8)).save(path)
    data = path.read_bytes()
    ihdr = struct.pack(">IIBBBBB", 3000, 3000, 8, 2, 0, 0, 0)
    path.write_bytes(data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + data[33:])


def test_a_png_whose_header_lies_is_not_read_as_a_black_image(tmp_path):
    """Was a 3000x3000 image of zeros (trained on, without a word): the decoding error was
    swallowed by the EXIF lookup, which decodes a PNG; now Pillow's decoding error."""
    path = tmp_path / "lie.png"
    _png_whose_header_lies(path)
    with pytest.raises(OSError, match="unrecognized data stream|truncated|broken"):
        load_rgb(str(path))


def _apng_out_of_sequence(path):
    """A 3-frame APNG whose third frame's control chunk has a sequence number out of order (its CRC right)."""
    frames = [Image.fromarray(np.full((12, 16, 3), v, np.uint8)) for v in (50, 100, 150)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    data = bytearray(path.read_bytes())
    pos, seen = 8, 0
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"fcTL":
            seen += 1
            if seen == 3:
                struct.pack_into(">I", data, pos + 8, 99)
                struct.pack_into(">I", data, pos + 8 + length, zlib.crc32(data[pos + 4:pos + 8 + length]))
        pos += 12 + length
    path.write_bytes(bytes(data))


def test_an_animated_png_whose_frames_are_out_of_sequence_is_one_error(tmp_path):
    """Pillow raises a SyntaxError when it reaches the frame: it passed through as a traceback."""
    path = tmp_path / "anim.png"
    _apng_out_of_sequence(path)
    frames = iter(open_source(path))
    assert [next(frames).name for _ in range(2)] == ["000000", "000001"]
    with pytest.raises(SourceError, match=r"anim.png: frame 000002 of its 3 is corrupt or missing \(APNG contains"):
        next(frames)
