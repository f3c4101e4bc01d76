"""Live reading for online mode: a reader thread fills a bounded queue that drops the oldest
frame when the model falls behind a live source."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from typing import Any, Iterator


__all__ = ["FrameQueue", "FrameReader"]


class FrameQueue:
    """A bounded FIFO between a reader thread and the model.

    ``drop=True`` (live sources): when full, :meth:`put` discards the OLDEST queued frame and
    counts it, so the model always gets the freshest frames and the delay between capture and
    processing stays bounded by the queue length; dropping the newest instead would keep
    processing ever older frames. ``drop=False`` (files): :meth:`put` waits for room (nothing is
    lost, decoding just runs ahead by up to ``maxsize`` frames). End-of-stream and error markers
    are never dropped.
    """

    def __init__(self, maxsize: int, drop: bool):
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.drop = drop
        self.dropped = 0
        # [kind, item, frames dropped just before it]
        self._items: deque[list] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._carry = 0  # drops not yet attributed to a queued item

    def put(self, item: Any) -> bool:
        """Queue a frame. Returns False if the queue was closed (the reader should stop)."""
        with self._cond:
            while not self.drop and len(self._items) >= self.maxsize and not self._closed:
                self._cond.wait(0.5)
            if self._closed:
                return False
            if self.drop and len(self._items) >= self.maxsize:
                # The dropped frame and those dropped before it now precede the next one.
                carry = self._items.popleft()[2] + 1
                self.dropped += 1
                if self._items:
                    self._items[0][2] += carry
                else:
                    self._carry += carry
            self._items.append(["frame", item, self._carry])
            self._carry = 0
            self._cond.notify_all()
            return True

    def put_marker(self, kind: str, value: Any = None) -> None:
        with self._cond:
            self._items.append([kind, value, self._carry])
            self._carry = 0
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> tuple[str, Any, int]:
        """(kind, item, frames dropped just before it); kind is "frame", "end" or "error" ("end"
        also once the queue is closed)."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                if self._closed:  # stopped (possibly from another thread): nothing more will come
                    return "end", None, 0
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                # A bounded wait keeps the main thread responsive to Ctrl-C.
                self._cond.wait(0.2 if remaining is None else min(0.2, remaining))
            kind, item, drops = self._items.popleft()
            self._cond.notify_all()
            return kind, item, drops

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)


class FrameReader:
    """Reads a frame source on a daemon thread into a :class:`FrameQueue`.

    Each queued item is ``(frame, monotonic time it was read)``. Errors of the source are passed
    through the queue and re-raised by the consumer; :meth:`stop` makes the thread exit after
    the frame it is decoding (a live stream blocked in a read returns within its read timeout).
    """

    def __init__(self, frames: Iterator[Any], maxsize: int, drop: bool):
        self.queue = FrameQueue(maxsize, drop)
        self.frames_read = 0
        self._frames = frames
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="entitysam-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for frame in self._frames:
                if self._stop.is_set():
                    break
                self.frames_read += 1
                if not self.queue.put((frame, time.monotonic())):
                    break
            self.queue.put_marker("end")
        except BaseException as err:  # noqa: BLE001 - handed to the consumer thread
            self.queue.put_marker("error", err)
        finally:
            close = getattr(self._frames, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def stop(self, wait: float = 2.0) -> None:
        self._stop.set()
        self.queue.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(wait)
