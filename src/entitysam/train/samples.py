"""One training sample's files: the image and its panoptic PNG, read as inference reads images,
each refused with a DatasetError naming the file when it cannot give true pixels or ids."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import EntitySAMError
from ..io.idpng import decode_ids
from ..io.image_file import NotRegularFileError, TooManyPixelsError, open_image_file
from ..io.sources.pixels import image_to_rgb, pixel_problem
from ..io.sources.selection import DEFAULT_MAX_PIXELS

__all__ = ["DatasetError", "PanopticRecord", "MAX_PIXELS", "load_rgb", "load_pair"]

# Largest image or panoptic PNG decoded (width x height), as inference's default --max-pixels:
# a few hundred bytes of PNG declaring 12000x12000 were decoded (1.8 GB per loader process)
# before anything could refuse them. Clips are resized to a few hundred pixels anyway.
MAX_PIXELS = DEFAULT_MAX_PIXELS


class DatasetError(EntitySAMError, ValueError):
    """The training dataset's json or one of its images / panoptic PNGs is unusable (named in the message)."""


@dataclass(frozen=True)
class PanopticRecord:
    image_path: str
    panoptic_path: str
    segment_ids: tuple[int, ...]  # non-crowd segment ids in segments_info order
    crowd_ids: tuple[int, ...]


@contextmanager
def _open_image(path: str) -> Iterator[Image.Image]:
    """The image at `path` (io.image_file: opened once without waiting, its header checked against
    MAX_PIXELS); a DatasetError naming it otherwise. The start-up check saw a regular file, but the
    path is read again hours later: a named pipe put there since blocked a loader worker's open for
    ever, and with it the whole run."""
    try:
        with open_image_file(path, MAX_PIXELS) as im:
            yield im
    except NotRegularFileError:
        raise DatasetError(f"cannot read {path}: not a regular file any more (it was one when the training "
                           "started: replaced during the run?)") from None
    except TooManyPixelsError as err:
        raise DatasetError(f"{err} (an image this large could exhaust the memory of every data loader "
                           "process); downscale it") from None
    except UnidentifiedImageError as err:
        raise DatasetError(f"cannot read {path}: {err}") from None
    except OSError as err:
        if err.strerror is None:  # Pillow's decoding errors (truncated data): its own words
            raise
        raise DatasetError(f"cannot read {path}: {err.strerror} (it was readable when the training "
                           "started)") from None


def load_rgb(path: str) -> np.ndarray:
    """An image as inference reads it (io.sources): EXIF orientation applied, 16-bit grayscale
    scaled to 8 bits (convert("RGB") clipped it at 255: a white picture, trained on silently).
    DatasetError for an image over MAX_PIXELS (refused from its header)."""
    with _open_image(path) as im:
        problem = pixel_problem(im)  # (floating-point or 32-bit samples: no display range to scale from)
        if problem:
            raise DatasetError(f"cannot read {path}: {problem}")
        return image_to_rgb(im)


def load_pair(rec: PanopticRecord) -> tuple[np.ndarray, np.ndarray]:
    """The image and its panoptic ids as RGB; an unusable file is a DatasetError naming it."""
    path = rec.image_path
    try:
        image = load_rgb(path)
        path = rec.panoptic_path
        with _open_image(path) as im:
            # a JPEG, a gray or a 16-bit PNG (Pillow keeps the high byte) would give made-up ids:
            # the clip's entities would silently be background
            if im.format != "PNG" or im.mode not in ("RGB", "RGBA", "P") or any(";16" in str(t[3]) for t in im.tile):
                raise DatasetError(f"panoptic file {path}: a {im.format} image of mode {im.mode}, not an "
                                   "8-bit RGB PNG of ids (id = R + 256 G + 65536 B)")
            pan = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
        raise DatasetError(f"cannot read {path}: {err}") from None
    if image.shape[:2] != pan.shape[:2]:  # the masks would be stretched onto another picture
        raise DatasetError(f"{rec.panoptic_path} is {pan.shape[1]}x{pan.shape[0]} but its image {rec.image_path} "
                           f"is {image.shape[1]}x{image.shape[0]} (WxH, after EXIF orientation)")
    listed = rec.segment_ids + rec.crowd_ids
    if listed and not np.isin(decode_ids(pan), listed).any():
        # another annotation's PNG, or ids encoded otherwise (BGR): every clip of it was trained
        # on as a picture of nothing, without a word. One absent segment is left alone (the
        # official mapper's empty mask; such instances are dropped from the clip).
        sid = listed[0]
        raise DatasetError(f"panoptic file {rec.panoptic_path} holds none of the {len(listed)} segment ids its "
                           f"segments_info lists (the first, {sid}, is RGB {(sid & 255, sid >> 8 & 255, sid >> 16)}): "
                           "not this annotation's PNG, or not encoded as id = R + 256 G + 65536 B")
    return image, pan
