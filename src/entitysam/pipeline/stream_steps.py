"""The frames of an online stream through the model and the online merger, timed: frames go in
with `step`, the end of the stream with `finish`, and come out in order, as `OnlineFrame`s, from
`pop` (after `delay` more frames of look-ahead)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..inference.online_merge import Emitted
from ..interrupts import deferred_sigint
from ..io.panoptic import frame_segments
from .online_tracking import OnlineTracking
from .result import FrameInfo, OnlineFrame, OnlineSegment

__all__ = ["FramePayload", "online_frame", "StreamSteps"]


@dataclass
class FramePayload:
    """What travels with a frame through the online merger's look-ahead window."""

    info: FrameInfo
    image: np.ndarray | None  # [H, W, 3] uint8, None unless kept (keep_images or an overlay output)
    dropped: int  # source frames dropped just before this one
    model_seconds: float  # preprocessing and tracker step(s) of this frame
    read_time: float  # time.monotonic() when the reader took it from the source


def online_frame(em: Emitted, merge_seconds: float) -> OnlineFrame:
    """The OnlineFrame of a frame the merger emitted (its payload a FramePayload)."""
    p: FramePayload = em.payload
    segs = []
    for seg in frame_segments(em.id_map, "coco"):
        q, score = em.segments[seg["id"]]
        segs.append(OnlineSegment(seg["id"], q, score, seg["area"], tuple(seg["bbox"])))
    latency = time.monotonic() - p.read_time
    return OnlineFrame(p.info, em.id_map, segs, p.image, p.dropped, em.frames_seen - p.info.t - 1, p.model_seconds,
                       merge_seconds, latency)


class StreamSteps:
    """Tracker + merger of one stream with their time: ``seconds["model"]`` and
    ``seconds["merge"]`` (a dict shared with the stream) grow with each frame. size: (H, W) of
    the first frame (the output size), None before it; processed: frames through the model."""

    def __init__(self, tracking: OnlineTracking, keep_images: bool, seconds: dict[str, float]):
        self.tracking = tracking
        self.keep_images = keep_images
        self.seconds = seconds
        self.size: tuple[int, int] | None = None
        self.processed = 0
        self._ready: deque[tuple[Emitted, float]] = deque()  # (emitted frame, its merge seconds)

    @property
    def ready(self) -> bool:
        """A frame is out of the look-ahead window, waiting for `pop`."""
        return bool(self._ready)

    @property
    def window_pending(self) -> bool:
        return self.tracking.window_pending

    def step(self, frame: Any, dropped: int, read_time: float) -> None:
        """One frame from the reader (dropped: frames dropped just before it; read_time: its
        time.monotonic() when read) through the model and into the merger."""
        t0 = time.perf_counter()
        if self.size is None:
            self.size = frame.size
        t = self.processed
        info = FrameInfo(t, frame.index, frame.name, float(frame.time))
        payload = FramePayload(info, frame.image if self.keep_images else None, dropped, 0.0, read_time)
        steps = self.tracking.track(t, frame.image, self.size)
        # A Ctrl-C between counting the frame and merging it lost the frame from the results of
        # a frame counted as processed: the two go together, the Ctrl-C is raised right after.
        with deferred_sigint():
            payload.model_seconds = time.perf_counter() - t0
            self.seconds["model"] += payload.model_seconds
            self.processed += 1
            for step in steps[:-1]:
                self.tracking.push(step)
            self._merge(lambda: self.tracking.push(steps[-1], payload))

    def finish(self) -> None:
        """End of stream (or stop): the look-ahead window is emitted with what is known."""
        with deferred_sigint():  # (a window half emitted would lose the rest)
            self._merge(self.tracking.finish)

    def pop(self) -> OnlineFrame:
        """The next frame out of the window (only when `ready`)."""
        return online_frame(*self._ready.popleft())

    def _merge(self, produce: Callable[[], list[Emitted]]) -> None:
        t0 = time.perf_counter()
        out = produce()
        elapsed = time.perf_counter() - t0
        self.seconds["merge"] += elapsed
        for em in out:
            self._ready.append((em, elapsed / len(out)))
