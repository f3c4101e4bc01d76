"""Frame preprocessing exactly as the official loader does it."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..argtypes import frame_problem
from ..config import IMAGE_MEAN, IMAGE_STD
from ..errors import InvalidArgumentError


def preprocess_frame(image: Image.Image | np.ndarray, image_size: int) -> torch.Tensor:
    """An RGB frame (PIL image of any mode, or uint8 array [H, W, 3]) -> normalised [1, 3, S, S] float32.
    Anything else (a float, bool or wider integer array, a gray or RGBA array, an image of no
    pixel) raises InvalidArgumentError (a ValueError and a TypeError) saying what it takes.

    The frame is squashed to S x S ignoring its aspect ratio with Pillow's default (bicubic,
    antialiased) filter on uint8, divided by 255 in float64, then normalised in float32:
    the official loader's order of operations, which the checkpoints expect.
    """
    if isinstance(image, np.ndarray):
        problem = frame_problem(image.shape, image.dtype)  # Pillow's TypeError named no argument
        if problem:
            raise InvalidArgumentError(f"preprocess_frame: the image is {problem}; a PIL image of any mode is "
                                       "taken too")
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise InvalidArgumentError(f"preprocess_frame: the image must be a PIL image or an RGB uint8 array "
                                   f"[H, W, 3], got {type(image).__name__}")
    elif 0 in image.size:  # resized into a frame of zeros
        raise InvalidArgumentError(f"preprocess_frame: the image is {image.width}x{image.height}: it has no pixel")
    if image.mode != "RGB":  # (converting an RGB image would only copy it: a frame's worth of memory)
        image = image.convert("RGB")
    pixels = np.asarray(image.resize((image_size, image_size))) / 255.0
    # channel-planar in memory, as the official frames: a kernel's loop may follow the layout
    x = torch.from_numpy(pixels).permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format)
    mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGE_STD, dtype=torch.float32)[:, None, None]
    return ((x - mean) / std).unsqueeze(0)
