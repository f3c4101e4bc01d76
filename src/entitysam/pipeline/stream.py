"""Online mode: `stream(model, video)` yields one `OnlineFrame` per processed frame, right after
it is processed (or after `delay` more frames of look-ahead), optionally writing the outputs as
they are produced.

    with stream(model, "rtsp://camera/live", delay=4, output="out/cam") as s:
        for r in s:
            print(r.frame.t, [(seg.id, seg.score) for seg in r.segments], s.dropped)

One frame goes: reader thread (`live.FrameReader`, a bounded queue) -> preprocessing -> tracker
step -> online merger (look-ahead window) -> `OnlineFrame` -> files (`OnlineWriter`) and the
running counts (`StreamTally`).
"""

from __future__ import annotations

import os
import time
import weakref
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..errors import OutputError
from ..argtypes import InvalidArgumentError, check_flags, check_int, check_path_arg
from ..inference.online_merge import check_delay
from ..interrupts import deferred_sigint
from ..inference.precision import check_exact, check_model, resolve_dtype
from ..io.sources import DEFAULT_MAX_PIXELS, FrameSelection, FrameSource
from ..io.staging import StagedOutput
from ..modeling.entitysam import EntitySAM
from .live import FrameReader
from .online_tracking import OnlineTracking
from .result import DEFAULT_FORMATS, Entity, OnlineFrame, check_formats, model_info
from .segment import open_video
from .stream_output import StreamOutput, online_manifest_head
from .stream_state import StreamState, describe_stream_error
from .stream_steps import StreamSteps
from .stream_tally import StreamTally

__all__ = ["OnlineStream", "stream"]


class OnlineStream:
    """Iterate to get one :class:`OnlineFrame` per processed frame, in order, as soon as the
    look-ahead allows (see :func:`stream`). Use as a context manager (or call :meth:`close`):
    closing stops the reader, emits the frames already processed, and finishes the outputs.

    Attributes: name, source, delay, live, size ((H, W), None before the first frame), fps,
    frames_read (frames the reader took from the source), dropped (frames dropped because the
    model was slower than a live source), processed, unprocessed (read, then left when the stream
    stopped early), emitted, status (``running``, then
    ``complete`` (the source ended), ``stopped`` (:meth:`stop` or closed early), ``interrupted``
    (KeyboardInterrupt) or ``failed``), error, output (folder or None), manifest (written one).

    It orchestrates: the reader thread (`FrameReader`) -> `StreamSteps` (model and merger) ->
    `StreamOutput` (files) and `StreamTally` (counts), under the `StreamState` status.
    """

    def __init__(self, model: EntitySAM, source: FrameSource, *, delay: int, live: bool, queue_size: int,
                 compute_dtype: torch.dtype, output: Path | None, formats: tuple[str, ...], labels: bool,
                 overwrite: bool, keep_images: bool, progress: bool, exact: bool = False, protect: Sequence = ()):
        self.model, self.source, self.name = model, source, source.name
        self.delay, self.live, self.queue_size, self.compute_dtype = delay, live, queue_size, compute_dtype
        self.fps = source.fps / source.selection.stride
        self.output, self.formats, self.labels, self.overwrite = output, formats, labels, overwrite
        self.protect = tuple(protect)  # paths --overwrite must never replace (the inputs)
        self.keep_images = keep_images or (output is not None and "overlay" in formats)
        self.manifest: dict[str, Any] | None = None
        self.seconds = {"model": 0.0, "merge": 0.0, "write": 0.0}
        self._state = StreamState()
        self._steps = StreamSteps(OnlineTracking(model, compute_dtype, delay, exact), self.keep_images, self.seconds)
        self._files = None if output is None else StreamOutput(
            output, video=self.name, formats=formats, fps=self.fps, labels=labels, live=live, overwrite=overwrite,
            protect=self.protect, head=self._manifest_head, measure_fps=source.fps_guessed)
        self._closed = False
        self._t0 = time.perf_counter()
        self._tally = StreamTally(progress, source.count_hint(), source.name)
        self._reader = FrameReader(iter(source), queue_size, drop=live)
        # A stream dropped without close() must not leave its reader running (a camera never ends).
        weakref.finalize(self, self._reader.stop, 0)

    # -- iteration
    def __iter__(self) -> "OnlineStream":
        return self

    def __next__(self) -> OnlineFrame:
        try:
            while not self._steps.ready:
                if self._state.ended:
                    if self._steps.window_pending:
                        self._steps.finish()
                        continue
                    self._state.complete()
                    # The end of the iteration finishes the outputs (manifest, panoptic.json) as
                    # leaving a `with` block does: a plain for loop must not leave them "running".
                    self.close()
                    raise StopIteration
                self._read_and_step()
            return self._deliver()
        except StopIteration:
            raise
        except KeyboardInterrupt:
            self._fail("interrupted", None)
            self._close_after_error()
            raise
        except BaseException as err:
            self._fail("failed", describe_stream_error(err, self.name))
            self._close_after_error()
            raise

    def _close_after_error(self) -> None:
        """After a failure or Ctrl-C the stream cannot go on: emit the frames already processed
        and finish the outputs now (status failed / interrupted), so that they are finished even
        if the caller never calls close(). Errors while doing so are recorded, not raised over
        the original one."""
        if self._closed:
            return
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the original error is the one to raise
            pass

    def _fail(self, status: str, message: str | None) -> None:
        self._state.fail(status, message)
        self._reader.stop(wait=0)

    def _read_and_step(self) -> None:
        kind, item, drops = self._reader.queue.get()
        if kind in ("end", "error"):
            self._state.source_ended()
            if kind == "error":
                raise item
            return
        frame, t_read = item
        self._steps.step(frame, drops, t_read)

    def _deliver(self) -> OnlineFrame:
        """The next frame out of the look-ahead window, written and counted. With an output
        folder a Ctrl-C meanwhile waits for them (a frame taken out of the window must be on disk
        and in the manifest's counts, which must match what is on disk); it is raised right after."""
        if self._files is None:
            result = self._steps.pop()
            self._tally.add(result, self.dropped)  # (counted as it is returned: "emitted" is "delivered")
            return result
        with deferred_sigint():
            result = self._steps.pop()
            t0 = time.perf_counter()
            self._files.write(result)
            self.seconds["write"] += time.perf_counter() - t0
            self._tally.add(result, self.dropped)
        return result

    # -- state
    status = property(lambda self: self._state.status, doc="running, complete, stopped, interrupted or failed")
    error = property(lambda self: self._state.error, doc="the message of a failure, else None")
    size = property(lambda self: self._steps.size, doc="(H, W) of the frames, None before the first one")
    processed = property(lambda self: self._steps.processed, doc="frames through the model so far")
    frames_read = property(lambda self: self._reader.frames_read, doc="frames the reader took from the source")
    dropped = property(lambda self: self._reader.dropped, doc="frames dropped (the model was slower than live)")
    emitted = property(lambda self: self._tally.emitted, doc="frames delivered so far")

    @property
    def unprocessed(self) -> int:
        """Frames read that the stream stopped before processing (queued, or in the model when it
        was interrupted; 0 for a stream that ran to its end): frames_read = processed + dropped +
        unprocessed."""
        return max(0, self.frames_read - self.processed - self.dropped)

    @property
    def entities(self) -> list[Entity]:
        """Entities seen so far (in the frames delivered), with their latest running score."""
        return self._tally.entities()

    def stop(self) -> None:
        """Stop reading: the frames already processed are still yielded, then iteration ends
        (status ``stopped`` unless it already ended)."""
        self._state.stop()
        self._reader.stop(wait=0)

    def _manifest_head(self) -> dict[str, Any]:
        return online_manifest_head(self.source, live=self.live, delay=self.delay, queue_size=self.queue_size,
                                    size=self.size, fps=self.fps,
                                    model=model_info(self.model, self.compute_dtype, self._steps.tracking.exact))

    def summary(self) -> dict[str, Any]:
        """Counts and timings (what the final manifest records); the counts are one snapshot, so they
        add up also while the reader runs (read last: it only grows)."""
        processed, dropped = self.processed, self.dropped
        read = max(self.frames_read, processed + dropped)
        return self._tally.summary(frames_read=read, processed=processed, dropped=dropped,
                                   unprocessed=read - processed - dropped,
                                   seconds=self.seconds, total_seconds=time.perf_counter() - self._t0,
                                   error=self.error)

    def close(self) -> dict[str, Any] | None:
        """Stop reading, emit (and write) the frames already processed, finish the outputs.
        Returns the final manifest when there is an output folder with frames in it."""
        if self._closed:
            return self.manifest
        self._closed = True
        self.stop()
        interrupt = None
        try:
            for _ in self:  # the frames already processed (look-ahead window)
                pass
        except KeyboardInterrupt as err:  # a second Ctrl-C: skip the rest, still finish the files
            interrupt = err
        except Exception:  # noqa: BLE001 - recorded in status/error; what was written stays valid
            pass
        self._reader.stop()
        self._tally.close_bar()
        try:
            if self._files is not None and self._files.pending:
                with deferred_sigint():
                    self.manifest = self._files.finish(self.status, self.summary())
                self._state.finished_as(self.manifest["status"], self.manifest.get("error"))
        except OutputError as err:  # not even the manifest could be written
            self._state.could_not_finish(str(err))
            raise
        finally:
            if interrupt is not None:
                raise interrupt
        return self.manifest

    def __enter__(self) -> "OnlineStream":
        return self

    def mark_interrupted(self) -> None:
        """Record a Ctrl-C caught by the caller: it can land between two frames, outside this
        stream's own calls, where the stream cannot see it. `close()` then finishes the files
        with status "interrupted"."""
        if self._state.interrupt_if_open():
            self._reader.stop(wait=0)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.mark_interrupted()
        self.close()

    def __repr__(self) -> str:
        return (f"OnlineStream({self.name!r}, delay={self.delay}, {self.emitted} frames emitted, "
                f"{self.dropped} dropped, {self.status})")


def stream(model: EntitySAM, video: Any, *, delay: int = 0, start: int | float | str | None = None,
           end: int | float | str | None = None, stride: int = 1, max_frames: int | None = None,
           fps: float | None = None, name: str | None = None, dtype: str | torch.dtype = "auto",
           live: bool | None = None, queue_size: int = 4, output: str | os.PathLike | None = None,
           formats: Sequence[str] | str = DEFAULT_FORMATS, labels: bool = False, overwrite: bool = False,
           keep_images: bool = True, progress: bool = False, exact: bool = False,
           protect: Sequence[str | os.PathLike] = (),
           max_pixels: int | None = DEFAULT_MAX_PIXELS) -> OnlineStream:
    """Segment and track every entity of `video` online: one result per frame, in order, right
    after the frame is processed (``delay=0``) or after ``delay`` more frames (look-ahead).

    video: anything :func:`segment` takes, or a live source: a stream URL PyAV opens
    (``rtsp://``, ``http://``, ...) or a video device (``/dev/video0``). live: read through a
    bounded queue of ``queue_size`` frames that drops the oldest frame when the model falls
    behind (default: True for URLs and devices, False otherwise, where reading waits instead).
    output: also write the results to this folder as they are produced (``formats`` among
    panoptic, entities, overlay; see the README, "Online mode"); must not exist unless
    ``overwrite`` (which only replaces a folder entitysam wrote, never one that is, contains or lies
    inside `video` or a path in ``protect``). keep_images: put each frame's image in its result. Other options as
    :func:`segment`. Returns an :class:`OnlineStream`; its ``with`` block (or ``close()``) stops
    reading and finishes the outputs.
    """
    device = check_model(model)
    check_delay(delay)
    check_flags(labels=labels, overwrite=overwrite, keep_images=keep_images, progress=progress, exact=exact)
    if live is not None:
        check_flags(live=live)
    check_int(queue_size, "queue_size", 1)
    fmts = check_formats(formats)
    out = check_path_arg(output, "output") if output is not None else None  # not a bare TypeError from pathlib
    if isinstance(protect, (str, bytes, os.PathLike)) or not isinstance(protect, Iterable):
        # (a string is an iterable: "in" protected the folders "i" and "n", not "in")
        raise InvalidArgumentError(f"protect must be a list of paths, got {protect!r}")
    protect = tuple(check_path_arg(p, "each path of protect") for p in protect) + ((Path(video),) if isinstance(video, (str, os.PathLike))
                                                 and not str(video).startswith(("rtsp:", "rtmp:", "http:", "https:"))
                                                 else ())
    if out is not None:
        StagedOutput.check_free(out, overwrite, inputs=protect)
    compute_dtype = resolve_dtype(dtype, device)
    check_exact(exact, compute_dtype)
    selection = FrameSelection(start, end, stride, max_frames)
    source = open_video(video, selection, fps, name, max_pixels)
    is_live = source.kind == "live" if live is None else bool(live)
    return OnlineStream(model, source, delay=delay, live=is_live, queue_size=queue_size,
                        compute_dtype=compute_dtype, output=out, formats=fmts, labels=labels, overwrite=overwrite,
                        keep_images=keep_images, progress=progress, exact=exact, protect=protect)
