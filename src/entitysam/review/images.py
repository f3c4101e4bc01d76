"""The images the viewer encodes: source frames as JPEG (a source JPEG that shows exactly the
frame is served as it is), entity thumbnails as small PNG crops (the id maps are served as the
result's own PNGs or as runs, `entitysam.review.idruns`)."""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..io.overlay import entity_color

__all__ = ["jpeg_bytes", "shown_as_is", "jpeg_at_least", "scale_to_width", "thumbnail_png", "THUMB_SIZE"]

THUMB_SIZE = 64  # pixels, the longer side of an entity's thumbnail


def jpeg_bytes(image: np.ndarray, quality: int = 80) -> bytes:
    """[H, W, 3] uint8 RGB -> JPEG bytes (a frame of the player)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def shown_as_is(f: BinaryIO, size: tuple[int, int]) -> bool:
    """Whether the open file `f` is a JPEG that a browser shows exactly as the frame the source
    reader decodes from it: (H, W) `size`, RGB or grey, no EXIF rotation (which the reader applies
    and which would change the size). Only the header is read (from the start of `f`)."""
    try:
        f.seek(0)
        with Image.open(f) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "L") or (im.height, im.width) != tuple(size):
                return False
            return im.getexif().get(0x0112) in (None, 1)  # Orientation
    except Exception:  # noqa: BLE001 - unreadable or odd: decode and encode it as any other frame
        return False


def jpeg_at_least(f: BinaryIO, width: int) -> np.ndarray:
    """[h, w, 3] uint8 RGB of the JPEG open as `f` (one `shown_as_is` accepts), decoded by libjpeg at
    the smallest of 1, 1/2, 1/4 or 1/8 of its size that keeps w >= `width` (a 1080p frame asked
    960 wide decodes a quarter of the pixels). Raises OSError when it cannot be read."""
    f.seek(0)
    with Image.open(f) as im:
        height = max(1, round(im.height * width / im.width))
        im.draft("RGB", (width, height))  # libjpeg's DCT scaling: never below the size asked
        return np.asarray(im.convert("RGB"))


def scale_to_width(image: np.ndarray, width: int) -> np.ndarray:
    """[H, W, 3] uint8 -> [round(H * width / W), width, 3], smoothly (a frame for a smaller screen):
    as it is at its own size, averaged over f x f blocks when both sides shrink by a whole factor f
    (the sizes the player asks for; 4x faster than resampling), else resampled bilinearly."""
    h, w = image.shape[:2]
    height = max(1, round(h * width / w))
    if (height, width) == (h, w):
        return image
    picture = Image.fromarray(np.ascontiguousarray(image))
    factor = w // width
    if factor >= 2 and (w, h) == (factor * width, factor * height):
        return np.asarray(picture.reduce(factor))
    return np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0))


def _crop_box(mask: np.ndarray, margin: float = 0.15) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of a [H, W] bool mask's bounding box grown by `margin` of its size."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dy, dx = int((y1 - y0) * margin) + 1, int((x1 - x0) * margin) + 1
    h, w = mask.shape
    return max(0, y0 - dy), min(h, y1 + dy), max(0, x0 - dx), min(w, x1 + dx)


def thumbnail_png(id_map: np.ndarray, entity_id: int, image: np.ndarray | None,
                  pixel: tuple[int, int] | list[int] = (1, 1)) -> bytes:
    """A PNG crop around entity `entity_id` in one frame: the source pixels inside the entity,
    dimmed outside (the entity's colour on grey when the source is gone). [H, W] ids, [H, W, 3] image.
    pixel: [width, height] of a pixel (the manifest's sample_aspect_ratio): the crop is widened by
    it, as the player widens the frame, so that an anamorphic video's entities look as they do there."""
    mask = id_map == entity_id
    if not mask.any():
        mask = np.ones_like(mask)
    y0, y1, x0, x1 = _crop_box(mask)
    # every step-th pixel: under 4x the thumbnail's side goes through the float work below (an
    # entity filling a 1080p frame: ~200x fewer pixels), the reduction to THUMB_SIZE smooths it
    step = max(1, max(y1 - y0, x1 - x0) // (2 * THUMB_SIZE))
    mask = mask[y0:y1:step, x0:x1:step]
    if image is None:
        crop = np.full((*mask.shape, 3), 128, dtype=np.uint8)
        crop[mask] = entity_color(entity_id)
    else:
        crop = image[y0:y1:step, x0:x1:step].astype(np.float32)
        crop[~mask] = crop[~mask] * 0.35 + 40  # the neighbourhood stays readable, the entity stands out
        crop = crop.clip(0, 255).astype(np.uint8)
    thumb = Image.fromarray(crop)
    if pixel[0] != pixel[1]:
        thumb = thumb.resize((max(1, round(thumb.width * pixel[0] / pixel[1])), thumb.height),
                             Image.Resampling.BILINEAR)
    thumb.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    thumb.save(buf, format="PNG")
    return buf.getvalue()
