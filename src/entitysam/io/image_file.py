"""An image file read by the tools that take folders of files from users (training data, the
metrics' PNGs): opened once without waiting, and refused from its header when it declares more
pixels than a limit, before anything is decoded.

Both steps close a way to hang or exhaust a run. A path checked to be a file and then opened by
name may have become a named pipe in between (the open would wait for a writer for ever); and a
few hundred bytes of PNG can declare a picture of gigabytes, which Pillow decodes in full after a
two-line warning. Callers word the two refusals in their own errors.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

from PIL import Image, UnidentifiedImageError

from ..errors import EntitySAMError
from ..regular_file import open_regular

__all__ = ["NotRegularFileError", "TooManyPixelsError", "open_image_file"]


class NotRegularFileError(EntitySAMError):
    """The path names a named pipe, a device, a socket or a folder: nothing was read."""


class TooManyPixelsError(EntitySAMError):
    """The header declares more pixels than the limit; ``str()`` says so, with the sizes."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, limit: int):
        super().__init__(f"{path} is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit of "
                         f"{limit / 1e6:g} megapixels: refused before decoding it")
        self.width, self.height, self.limit = width, height, limit


@contextlib.contextmanager
def open_image_file(path: str | os.PathLike, max_pixels: int) -> Iterator[Image.Image]:
    """The image at `path`, opened lazily (decoded on first access) through one descriptor.

    Raises NotRegularFileError, TooManyPixelsError, OSError when the path cannot be opened (gone,
    no permission, a link loop) and UnidentifiedImageError naming the path (Pillow's own message
    would name the descriptor) when the file is no image Pillow reads.
    """
    f = open_regular(path)
    if f is None:
        raise NotRegularFileError(f"{path}: not a regular file")
    with f:
        with warnings.catch_warnings():  # the limit below is lower than the one Pillow warns about
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                im = Image.open(f)
            except UnidentifiedImageError:
                raise UnidentifiedImageError(f"cannot identify image file {os.fspath(path)!r}") from None
        with im:
            width, height = im.size
            if width * height > max_pixels:
                raise TooManyPixelsError(path, width, height, max_pixels)
            yield im
