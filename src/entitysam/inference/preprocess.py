"""Frame preprocessing exactly as the official loader does it."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..config import IMAGE_MEAN, IMAGE_STD


def preprocess_frame(image: Image.Image | np.ndarray, image_size: int) -> torch.Tensor:
    """An RGB frame (PIL image or uint8 array [H, W, 3]) -> normalised [1, 3, S, S] float32.

    The frame is squashed to S x S ignoring its aspect ratio with Pillow's default (bicubic,
    antialiased) filter on uint8, divided by 255 in float64, then normalised in float32:
    the official loader's order of operations, which the checkpoints expect.
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image.mode != "RGB":  # (converting an RGB image would only copy it: a frame's worth of memory)
        image = image.convert("RGB")
    pixels = np.asarray(image.resize((image_size, image_size))) / 255.0
    # channel-planar in memory, as the official frames: a kernel's loop may follow the layout
    x = torch.from_numpy(pixels).permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format)
    mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGE_STD, dtype=torch.float32)[:, None, None]
    return ((x - mean) / std).unsqueeze(0)
