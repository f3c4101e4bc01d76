"""The input frames behind a result, decoded again from the input its manifest names.

Frame folders and images are read one file per request (a folder is listed once: its files are
kept, and a file is used only while its name is still the frame's). A video file is
read through a forward cursor: a request at or after the last
frame read continues from there (playing forward costs one decode per frame), one before it
starts a new pass a few frames before that one; a pass starts at the keyframe before its first
frame once a pass has recorded the keyframes up to there (io.sources.video_seek), from the start
of the video otherwise. The last frames the cursor gave are kept (up to 64 MB): a
step back (the arrow key, the player fetching the frames just behind the one shown) is served
from them, and a new pass refills them, so stepping back costs one pass per ~10 frames at 1080p,
not one per frame. Requests may come from several threads (a web server): one lock.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
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
        self._files: list[Path] | None = None  # a folder's frame files, listed once
        self._recent: OrderedDict[int, Any] = OrderedDict()  # a video's last frames read, by index
        self.keep_bytes = 64 << 20  # what those may take
        self._seek: Any = None  # a video's random access (VideoSeek) and the file it was made for
        self._seek_key: tuple | None = None

    def frame_file(self, index: int, name: str) -> Path | None:
        """The file of frame `index` when the input is a folder of frames or an image and that
        file is still named `name` (the frame the result was made from); None otherwise (a video,
        a live input, the input gone or changed)."""
        if not self.available() or self._is_video():
            return None
        try:
            with self._lock:
                files = self._frame_files()
        except (EntitySAMError, OSError):
            return None
        if not 0 <= index < len(files) or files[index].stem != name or not files[index].is_file():
            return None
        return files[index]

    def _frame_files(self) -> list[Path]:
        from ..io.sources import open_source

        if self._files is None:
            # An animation (one file, several frames) has no file per frame: served decoded.
            self._files = list(getattr(open_source(self.input, fps=self.fps), "files", None) or ())
        return self._files

    def _is_video(self) -> bool:
        return os.path.isfile(self.input) and os.path.splitext(self.input)[1].lower() in _video_extensions()

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
        from ..io.sources import FrameFolderSource, FrameSelection, open_source

        if not self._is_video():  # one file per frame: read just that one (the folder listed once)
            self.passes += 1
            one = FrameSelection(start=index, max_frames=1)
            source = FrameFolderSource(self.input, one, self.fps, files=self._frame_files()) \
                if os.path.isdir(self.input) else open_source(self.input, one, fps=self.fps)
            return next(iter(source), None)
        if index in self._recent:
            return self._recent[index]
        if self._cursor is None or index <= self._last or self._seek_is_shorter(index):
            self.passes += 1
            selection = FrameSelection(start=self._pass_start(index), stride=self.stride)
            self._cursor = self._video_seek().frames(selection)
            self._last = -1
            self._recent.clear()
        for frame in self._cursor:
            self._last = frame.index
            self._recent[frame.index] = frame
            while len(self._recent) > self._keep_frames():
                self._recent.popitem(last=False)
            if frame.index >= index:
                return frame
        self._cursor = None
        return None

    def _pass_start(self, index: int) -> int:
        """Where a new pass for frame `index` starts: a few frames (on the stride's grid) before,
        kept for the next steps back."""
        back = min(self._keep_frames() - 1, index // self.stride)
        return index - back * self.stride

    def _seek_is_shorter(self, index: int) -> bool:
        """Whether a new pass reaches frame `index` (ahead of the cursor) in fewer decodes than the
        cursor: it would start decoding at a recorded keyframe after the cursor's last frame."""
        seek = self._seek
        return seek is not None and seek.exact and seek.keyframe_before(self._pass_start(index)) > self._last

    def _video_seek(self) -> Any:
        """The input video's random access (io.sources.video_seek), kept while the file is the
        same (its record of keyframes makes a pass start at the keyframe before the frame asked for)."""
        from ..io.sources.video_seek import VideoSeek

        stat = os.stat(self.input)
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self._seek is None or self._seek_key != key:
            self._seek, self._seek_key = VideoSeek(self.input, self.fps), key
        return self._seek

    def _keep_frames(self) -> int:
        """How many of a video's last frames are kept: keep_bytes of frames the size of the last
        one read (8 before any), at least 2."""
        last = next(reversed(self._recent.values()), None)
        if last is None:
            return 8
        return max(2, self.keep_bytes // max(1, last.image.nbytes))


def _video_extensions() -> tuple[str, ...]:
    from ..io.sources import VIDEO_EXTENSIONS

    return tuple(VIDEO_EXTENSIONS)
