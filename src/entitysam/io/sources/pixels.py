"""A decoded image as the frame people see: [H, W, 3] uint8 RGB (`image_to_rgb`), and what an
image file must not be for that: pixels without a display range (`pixel_problem`), several
frames where one is expected (`frames_in`).

Every reader of images (single images, frame folders, animations, training images) goes through
these, so that a file is shown the same wherever it is read.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
from PIL import Image, ImageOps

__all__ = ["image_to_rgb", "pixel_problem", "frames_in", "shown_frames"]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_TIFF_BITS, _TIFF_SAMPLE_FORMAT, _TIFF_PHOTOMETRIC = 258, 339, 262
_MIN_IS_WHITE = 0


def _tiff_tag(im: Image.Image, tag: int):
    value = getattr(im, "tag_v2", {}).get(tag)
    return value[0] if isinstance(value, tuple) and value else value


def pixel_problem(im: Image.Image) -> str | None:
    """Why `im`'s pixels cannot be shown as 8-bit RGB without guessing, from its header; None if
    they can. Floating-point samples (mode F) and a TIFF's 32-bit or signed integer samples (mode I;
    Pillow gives a 16-bit PNG that mode too, scaled by `image_to_rgb`) have no standard display
    range: converting them clipped at 255 (a float image in 0..1 was black, a 32-bit one white)."""
    if im.mode == "F":
        return ("its pixels are floating-point numbers, which have no standard display range: save it with 8 or "
                "16 bits per sample first")
    if im.mode == "I" and im.format == "TIFF":
        bits = _tiff_tag(im, _TIFF_BITS)
        signed = "signed " if _tiff_tag(im, _TIFF_SAMPLE_FORMAT) == 2 else ""
        size = f"{bits}-bit " if isinstance(bits, int) else ""
        return (f"its pixels are {size}{signed}integers, which have no standard display range: save it with 8 or "
                "16 bits per sample (unsigned) first")
    return None


def shown_frames(im: Image.Image) -> list[int]:
    """Pillow's indexes of the frames of an opened image file that players show, in order: [0] for
    a still. Pillow gives more frames than that:

    - a JPEG with more images after its own (MPO: a camera's or phone's large preview, a depth map,
      the other view of a stereo pair) is one picture, the first, as every viewer shows it; such a
      photo was read as a video of two frames of different sizes, and refused;
    - an animated PNG may carry a default image outside its animation (its IDAT before any fcTL:
      the picture for viewers that cannot play APNG), given as frame 0: read as a frame, it added
      a frame before the animation and, having no duration, set the frame rate to 25;
    - a TIFF's pages include reduced-resolution copies of another page (thumbnails, previews:
      NewSubfileType bit 0, or the old SubfileType 2) and transparency masks (bit 2), which are no
      pictures of their own: a scan with its thumbnail was refused as two frames of two sizes.

    A frame table that cannot be read gives [0] (decoding it says what is wrong)."""
    if im.format == "MPO":
        return [0]
    try:
        if not getattr(im, "is_animated", False):  # (cheap: the header, or a look for a second frame)
            return [0]
        n = int(getattr(im, "n_frames", 2) or 2)
    except (OSError, EOFError, SyntaxError, ValueError):
        return [0]
    if im.format == "PNG" and getattr(im, "default_image", False):
        return list(range(1, n))
    if im.format == "TIFF":
        return _tiff_pictures(im, n)
    return list(range(n))


def _tiff_pictures(im: Image.Image, n: int) -> list[int]:
    pages, at = [], im.tell()
    try:
        for i in range(n):
            try:
                im.seek(i)
            except (OSError, EOFError, SyntaxError, ValueError, TypeError):
                return pages + list(range(i, n))  # (reading the page says what is wrong with it)
            new_type, old_type = im.tag_v2.get(254, 0), im.tag_v2.get(255, 1)
            if not (isinstance(new_type, int) and new_type & 0b101) and old_type != 2:
                pages.append(i)
    finally:
        with contextlib.suppress(OSError, EOFError, SyntaxError, ValueError, TypeError):
            im.seek(at)
    return pages or [0]


def frames_in(im: Image.Image) -> int:
    """The number of frames players show of an opened image file (`shown_frames`): 1 for a still."""
    return len(shown_frames(im))


def image_to_rgb(im: Image.Image) -> np.ndarray:
    """A PIL image as displayed -> [H, W, 3] uint8 RGB.

    EXIF orientation is applied (ImageOps.exif_transpose), as every viewer does. 16-bit
    grayscale (modes I;16*, and I, which Pillow uses for 16-bit PNGs) is scaled from 0..65535 to
    0..255 (value / 257, rounded) instead of being clipped at 255, which turns it white; a 16-bit
    TIFF stored "min-is-white" is inverted as its 8-bit form is. Palette, grayscale, CMYK, LAB,
    YCbCr and the other modes go through Pillow's conversion; an alpha channel is dropped (the
    colour under it is kept), as the official loader's ``convert("RGB")`` does. Pixels without a
    display range (`pixel_problem`) raise SourceError.
    """
    from ...errors import SourceError

    problem = pixel_problem(im)
    if problem:
        raise SourceError(f"cannot show this image: {problem}")
    # Decoded first: getexif() below decodes a PNG to find text chunks after the pixels, and its
    # decoding error, swallowed there, left an image of zeros that the array below read silently
    im.load()
    inverted = im.format == "TIFF" and _tiff_tag(im, _TIFF_PHOTOMETRIC) == _MIN_IS_WHITE  # (before a transpose)
    if _exif_orientation(im) not in (1, None):
        with warnings.catch_warnings():  # (it reads the EXIF block again)
            warnings.simplefilter("ignore", UserWarning)
            im = ImageOps.exif_transpose(im)
    if im.mode in _SIXTEEN_BIT_MODES:
        gray = np.clip(np.asarray(im, dtype=np.float32) / 257.0 + 0.5, 0, 255).astype(np.uint8)
        if inverted:  # Pillow inverts min-is-white 1- and 8-bit samples, not 16-bit ones
            gray = 255 - gray
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # palette transparency: through RGBA, without Pillow's warning
    if im.mode == "La":  # (a TIFF's gray with premultiplied alpha: Pillow converts it only to LA)
        im = im.convert("LA")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)  # (convert("RGB") of an RGB image would only add a copy of the frame)


def _exif_orientation(im: Image.Image) -> int | None:
    try:
        with warnings.catch_warnings():  # (Pillow's warnings of a damaged block: see images._open_pil)
            warnings.simplefilter("ignore", UserWarning)
            return im.getexif().get(0x0112)  # Orientation
    except Exception:  # noqa: BLE001 - an unreadable EXIF block: shown as stored, as most viewers do
        return None
