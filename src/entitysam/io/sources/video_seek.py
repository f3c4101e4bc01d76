"""Random access to frame i of a video file, i counted in decode order (VideoFileSource's numbering).

Every pass made through a `VideoSeek` records, per frame index, the frame's pts, whether it is a
keyframe and its time. Reading from frame i then seeks to the last recorded keyframe <= i and
decodes forward, identifying each decoded frame by its pts against the record; territory beyond
the record is decoded forward from the furthest recorded keyframe, recording as it goes. Exact or
refused: when anything does not match (a pts missing, repeated or out of order, the seek landing
on another frame, a corrupt frame, a decoding error), the read falls back to VideoFileSource's
pass from the first frame, which also refuses corrupt frames and truncated files with its errors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from ...errors import EntitySAMError, SourceError
from .selection import DEFAULT_MAX_PIXELS, Frame, FrameSelection
from .video_file import VideoFileSource, import_av, open_video, video_stream

__all__ = ["VideoSeek"]


class _Mismatch(EntitySAMError):
    """The seek pass does not give the recorded frames: fall back to the pass from the start
    (caught inside this module; an EntitySAMError like every error class of the package)."""


class VideoSeek:
    """Random access to the frames of the video file `path` (fps, max_pixels: as VideoFileSource's).

    decoded: frames decoded by all passes; seeks: passes started by a seek; fallbacks: seek passes
    abandoned for a pass from the start; exact: False once the file's pts were found unusable
    (every read then decodes from the start)."""

    def __init__(self, path: str | os.PathLike, fps: float | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.path = Path(path)
        self.fps = fps
        self.max_pixels = max_pixels
        self.pts: list[int] = []
        self.keyframe: list[bool] = []
        self.times: list[float] = []
        self.exact = True
        self.decoded = 0
        self.seeks = 0
        self.fallbacks = 0
        self._t0 = 0.0

    def frames(self, selection: FrameSelection | None = None) -> Iterator[Frame]:
        """The frames of `selection`, as VideoFileSource(path, selection, fps) gives them."""
        return iter(_SeekingSource(self, selection or FrameSelection()))

    def frame(self, index: int) -> Frame | None:
        """Frame `index` (decode order); past the end, VideoFileSource's SourceError (no frames
        selected). Not thread-safe: one caller at a time (SourceFrames holds its lock)."""
        return next(self.frames(FrameSelection(start=index, max_frames=1)), None)

    # -- the record
    def _record(self, index: int, frame, time: float) -> None:
        if not self.exact:
            return
        pts, key = frame.pts, bool(frame.key_frame)
        if index < len(self.pts):
            if self.pts[index] != pts or self.keyframe[index] != key:
                self._give_up()
            return
        if index != len(self.pts) or pts is None or frame.time is None or (self.pts and pts <= self.pts[-1]):
            self._give_up()
            return
        if index == 0:
            self._t0 = float(frame.time)  # VideoFileSource's times count from it
        self.pts.append(pts)
        self.keyframe.append(key)
        self.times.append(time)

    def _give_up(self) -> None:
        self.exact = False
        self.pts, self.keyframe, self.times = [], [], []

    def keyframe_before(self, index: int) -> int:
        """The last recorded keyframe <= index (the furthest recorded one for an index beyond the
        record); 0 when none but the first frame."""
        for k in range(min(index, len(self.keyframe) - 1), 0, -1):
            if self.keyframe[k]:
                return k
        return 0

    def _seek_pass(self, k: int) -> Iterator[tuple[int, float, object]]:
        """(index, time, frame) from recorded keyframe k on; _Mismatch when a frame is not the
        recorded one."""
        av = import_av()
        self.seeks += 1
        try:
            with open_video(self.path) as container:  # the file opened once, never waited on
                stream = video_stream(container)
                if stream is None:  # the file was replaced: the pass from the start says so
                    raise _Mismatch("no video stream")
                stream.thread_type = "AUTO"
                container.seek(self.pts[k], stream=stream, backward=True, any_frame=False)
                index = k
                for frame in container.decode(stream):
                    self.decoded += 1
                    if getattr(frame, "is_corrupt", False) or frame.pts is None or frame.time is None:
                        raise _Mismatch
                    if index < len(self.pts):
                        if frame.pts != self.pts[index] or (index == k and not frame.key_frame):
                            raise _Mismatch
                    else:
                        time = float(frame.time) - self._t0
                        self._record(index, frame, time)
                        if not self.exact:
                            raise _Mismatch
                    yield index, self.times[index], frame
                    index += 1
                if index < len(self.pts):  # fewer frames than recorded: the seek
                    raise _Mismatch  # landed past them (MPEG-TS: a group late, or on none at all)
        except (av.error.FFmpegError, SourceError):  # (SourceError: no regular file now) the pass
            raise _Mismatch from None  # from the start says what is wrong, in its words


class _SeekingSource(VideoFileSource):
    """VideoFileSource whose frames come from a seek pass when the record allows one; its frames
    (names, images, refusal of corrupt frames, selection) are VideoFileSource's."""

    def __init__(self, seek: VideoSeek, selection: FrameSelection):
        super().__init__(seek.path, selection, seek.fps, seek.max_pixels)
        self._seek = seek

    def _frames(self):
        seek = self._seek
        start = self.selection.start if isinstance(self.selection.start, int) else 0
        k = seek.keyframe_before(start) if seek.exact else 0
        after = 0  # the frames before it were given by the seek pass
        if k > 0:
            try:
                for index, time, frame in seek._seek_pass(k):
                    after = index + 1
                    yield index, time, frame
                return
            except _Mismatch:
                seek.fallbacks += 1
                seek._give_up()
        for index, time, frame in super()._frames():
            seek.decoded += 1
            seek._record(index, frame, time)
            if index >= after:
                yield index, time, frame
