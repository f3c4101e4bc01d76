"""Reading the id PNGs of a result folder: only files inside it (entitysam.review.confined), as
the viewer's /api/idmaps/ and the exports read them, never a file a link leads to elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import ResultFileGoneError, ResultFolderError
from .confined import OutsideRootsError, open_confined

__all__ = ["ID_PNG_MODES", "open_result_file", "read_id_rgb"]

ID_PNG_MODES = ("RGB", "RGBA")  # what the id codec reads exactly (others would be converted: ids made up)


def read_id_rgb(path: Path, size: tuple[int, int], roots: tuple[Path, ...]) -> np.ndarray:
    """[H, W, 3] uint8 pixels of an RGB(A) id PNG of the result's size; ResultFolderError otherwise
    (another image mode would be converted to RGB by PIL and give made-up ids)."""
    from PIL import Image

    with open_result_file(path, roots) as f:
        try:
            with Image.open(f) as im:
                kind, width, height = (im.format, im.mode), *im.size
                rgb = np.asarray(im) if kind[0] == "PNG" and kind[1] in ID_PNG_MODES and (height, width) == size else None
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise ResultFolderError(f"{path}: cannot read the id PNG: {err}") from None
    if kind[0] != "PNG" or kind[1] not in ID_PNG_MODES:
        raise ResultFolderError(f"{path}: a {kind[0]} image of mode {kind[1]}, not an RGB id PNG "
                                "(id = R + 256 G + 65536 B)")
    if rgb is None:
        raise ResultFolderError(f"{path}: {width}x{height} but the result is {size[1]}x{size[0]} (WxH)")
    return rgb if rgb.shape[2] == 3 else np.ascontiguousarray(rgb[..., :3])


def open_result_file(path: Path, roots: tuple[Path, ...]) -> BinaryIO:
    """`path` (a file of a result folder) open for reading, without waiting: a FIFO put in its place
    after the result was opened blocked the read, and with it the viewer's lock (save, edits) for
    good. ResultFileGoneError when it is gone, ResultFolderError when it is not a regular file or
    lies outside every folder of `roots` (the result's, resolved), also through a link put on its
    way while it is opened: an id PNG replaced by a link to any file (~/.ssh/id_rsa) was sent as it
    is by /api/idmaps/<i>.png, and a folder swapped for a link after the check was followed."""
    try:
        f = open_confined(path, roots)
    except FileNotFoundError:
        raise ResultFileGoneError(f"{path}: gone from disk since the result was opened (reopen it)") from None
    except OutsideRootsError as err:
        if err.real is None:
            raise ResultFolderError(f"{path}: replaced while it was opened (a link put on its way could lead "
                                    "outside the result folder): not read") from None
        raise ResultFolderError(f"{path}: a link to {err.real}, outside the result folder: not read") from None
    except OSError as err:
        raise ResultFolderError(f"{path}: cannot read it: {err.strerror or err}") from None
    if f is None:
        raise ResultFolderError(f"{path}: no longer a regular file (replaced since the result was opened)")
    return f
