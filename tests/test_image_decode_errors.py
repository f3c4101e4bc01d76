"""An image whose pixel data cannot be decoded is an error, never an image of zeros."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

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
