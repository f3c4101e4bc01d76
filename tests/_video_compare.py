"""Overlay videos compared by what they show, not by their bytes (test helper).

x264 (PyAV 18.1 / FFmpeg 8) is not reproducible run to run under CPU load, even with one encoder
thread: the same 12 small frames encoded 600 times on a loaded 2-core Zen 4 gave 7 encodings that
differed in one packet, decoding to a frame 0.27 grey levels away on average (at most 27). Two
runs that feed the encoder the same frames therefore give videos that are equal as `DecodedVideo`s:
the same number and size of frames, each within 1 grey level on average.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

MEAN_ABS_DIFF = 1.0  # grey levels, per frame


class DecodedVideo:
    """A video file's decoded RGB frames, equal to another's within MEAN_ABS_DIFF per frame."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with av.open(str(path)) as container:
            self.frames = [f.to_ndarray(format="rgb24").astype(np.int16) for f in container.decode(video=0)]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DecodedVideo) or len(self.frames) != len(other.frames):
            return False
        return all(a.shape == b.shape and float(np.abs(a - b).mean()) <= MEAN_ABS_DIFF
                   for a, b in zip(self.frames, other.frames))

    def __repr__(self) -> str:
        shape = self.frames[0].shape if self.frames else None
        return f"DecodedVideo({self.path.name}, {len(self.frames)} frames {shape})"
