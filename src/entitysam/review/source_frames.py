"""The input frames behind a result, decoded again from the input its manifest names.

Frame folders and images are read one file per request. A video file can only be decoded from
its start, so it is read through a forward cursor: a request at or after the last frame read
continues from there (playing forward costs one decode per frame), one before it starts a new
pass from that frame. Requests may come from several threads (a web server): one lock.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Iterator

import numpy as np

from ..errors import EntitySAMError

__all__ = ["SourceFrames"]


class SourceFrames:
    """input: the manifest's ``input`` (path, or None); fps: the result's; stride: the manifest's
    frame selection stride (a new pass selects every stride-th frame from the one asked for)."""

    def __init__(self, input_path: str | None, fps: float, stride: int = 1):
        self.input = input_path
        self.fps = fps
        self.stride = stride if isinstance(stride, int) and stride >= 1 else 1
        self.passes = 0  # decoding passes started (sequential reading of a video starts one)
        self._lock = threading.Lock()
        self._cursor: Iterator[Any] | None = None
        self._last = -1  # index of the last frame the cursor gave

    def available(self) -> bool:
        from ..io.sources import is_live_input

        return bool(self.input) and not is_live_input(self.input) and os.path.exists(self.input)

    def frame(self, index: int, name: str) -> np.ndarray | None:
        """The [H, W, 3] uint8 frame `index` of the input if it is named `name` (the input has
        not changed); None when the input is gone, unreadable or different."""
        if not self.available():
            return None
        with self._lock:
            try:
                frame = self._read(index)
            except (EntitySAMError, OSError, ValueError):
                self._cursor = None
                return None
        if frame is None or frame.index != index or frame.name != name:
            return None
        return frame.image

    def _read(self, index: int) -> Any:
        from ..io.sources import FrameSelection, open_source

        video = os.path.isfile(self.input) and os.path.splitext(self.input)[1].lower() in _video_extensions()
        if not video:  # one file per frame: read just that one
            self.passes += 1
            return next(iter(open_source(self.input, FrameSelection(start=index, max_frames=1), fps=self.fps)), None)
        if self._cursor is None or index <= self._last:
            self.passes += 1
            source = open_source(self.input, FrameSelection(start=index, stride=self.stride), fps=self.fps)
            self._cursor = iter(source)
            self._last = -1
        for frame in self._cursor:
            self._last = frame.index
            if frame.index >= index:
                return frame
        self._cursor = None
        return None


def _video_extensions() -> tuple[str, ...]:
    from ..io.sources import VIDEO_EXTENSIONS

    return tuple(VIDEO_EXTENSIONS)
