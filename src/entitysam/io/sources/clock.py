"""Frame times that always increase, from timestamps that may restart, repeat, go back or be missing."""

from __future__ import annotations

import math
from collections import deque
import time as _time  # "time" is a frame's time in this module

CLOCK_RESTART_S = 1.0  # a clock going back further than this restarted
REORDER_STEP_S = 1e-3  # a frame whose stamp goes back a little: this after the latest
REORDER_MEMORY = 256  # frames a stamp out of order is told from: more than a second of them at 240 frames/s


class FrameClock:
    """The times of a video's frames, in seconds from its first frame, always increasing.

    A stream's clock can restart (an encoder or camera restarted behind a relay, streams spliced
    one after the other, recordings concatenated into one file) or repeat a timestamp: its frames'
    times then went back (0.4 s, then 0.0 s) or stood still, and the final manifest's frame rate,
    measured from the first to the last time, came out wrong (22.5 frames/s for two 10 frames/s
    streams back to back), `entities.json(l)` went back in time and a `--end` in seconds stopped at
    the wrong frame, or never (every frame of the second recording was before it). A frame that is
    not later than the one before is taken as one `period` after it; where the clock went back
    more than `CLOCK_RESTART_S`, the times go on from there.

    A frame without a timestamp (None or NaN) is timed by the wall clock where `wall_clock` (the
    frames of some devices, timed as they arrive), else (a file, read as fast as it decodes) one
    period after the frame before.

    `reordered_ok` (files): a frame at most `CLOCK_RESTART_S` earlier than the latest whose stamp none
    of the last `REORDER_MEMORY` frames had (it fills a gap: not a repeat, not a restart onto stamps
    already seen) is timed `REORDER_STEP_S` after the latest. Some containers (AVI holding H.264 with
    B-frames) give the frames in display order with their stamps out of order (0.1, 0.3, 0.4, 0.2,
    0.5, ...); counted a period each, those times drifted ahead without end (a 6 s file read as 10 s,
    and a `--end` in seconds dropped frames), while at their own times a `--start` in seconds dropped
    the frames going back. A frame's time is then at most the reordering's depth late."""

    def __init__(self, period: float, wall_clock: bool = True, reordered_ok: bool = False):
        self.period = period
        self.wall_clock = wall_clock
        self.reordered_ok = reordered_ok
        self.recent: deque[float] = deque(maxlen=REORDER_MEMORY)  # the last frames' stamps, as times
        self.offset: float | None = None  # frame time - timestamp (or wall-clock time)
        self.wall = False  # whether the offset is to the wall-clock time
        self.last: float | None = None

    def time(self, stamp: float | None) -> float:
        """The time of the next frame, from its timestamp in seconds."""
        wall = stamp is None or not math.isfinite(stamp)
        if wall and not self.wall_clock:
            self.offset = None  # timestamps that come back go on from here
            self.last = t = 0.0 if self.last is None else self.last + self.period
            return t
        stamp = _time.monotonic() if wall else float(stamp)
        if self.offset is None or wall != self.wall:  # the first frame, or timestamps came or went
            self.wall = wall
            self.offset = (0.0 if self.last is None else self.last + self.period) - stamp
        t = stamp + self.offset
        if self.last is not None and t <= self.last + 1e-6:  # (not later: 1e-16 of rounding is not; 90 kHz ticks are)
            # Re-based only when far back (a restart): a repeated stamp of a coarse clock (seconds,
            # at 30 frames/s) or a frame out of order re-based each time drifted ahead without end
            # (1 s of stream read as 2). Nearer, frames count a period each until the stamps pass.
            if self.last - t > max(CLOCK_RESTART_S, self.period):
                self.offset = self.last + self.period - stamp
            elif self.reordered_ok and all(abs(t - seen) > 1e-6 for seen in self.recent):
                self.recent.append(t)
                # Just after the latest, not at its own time: a selection in seconds takes frames in
                # order (a time going back dropped a frame inside it); the next stamp in order catches up.
                self.last += min(REORDER_STEP_S, self.period / 100)
                return self.last
            t = self.last + self.period
        self.last = t
        self.recent.append(t)
        return t
