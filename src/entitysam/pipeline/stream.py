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
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import __version__
from ..inference.online_merge import check_delay
from ..inference.precision import check_exact, resolve_dtype
from ..errors import EntitySAMError, OutputError
from ..modeling.entitysam import EntitySAM
from ..inference.online_merge import Emitted
from ..io.stream_files import OnlineWriter
from ..io.sources import DEFAULT_MAX_PIXELS, FrameSelection, FrameSource
from ..io.staging import StagedOutput
from ..io.paths import describe_os_error
from ..io.panoptic import frame_segments
from .live import FrameReader, deferred_sigint
from .online_tracking import OnlineTracking
from .result import DEFAULT_FORMATS, Entity, FrameInfo, OnlineFrame, OnlineSegment, check_formats, model_info
from .segment import open_video
from .stream_tally import StreamTally

__all__ = ["OnlineStream", "stream"]


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


class OnlineStream:
    """Iterate to get one :class:`OnlineFrame` per processed frame, in order, as soon as the
    look-ahead allows (see :func:`stream`). Use as a context manager (or call :meth:`close`):
    closing stops the reader, emits the frames already processed, and finishes the outputs.

    Attributes: name, source, delay, live, size ((H, W), None before the first frame), fps,
    frames_read (frames the reader took from the source), dropped (frames dropped because the
    model was slower than a live source), processed, emitted, status (``running``, then
    ``complete`` (the source ended), ``stopped`` (:meth:`stop` or closed early), ``interrupted``
    (KeyboardInterrupt) or ``failed``), error, output (folder or None), manifest (written one).
    """

    def __init__(self, model: EntitySAM, source: FrameSource, *, delay: int, live: bool, queue_size: int,
                 compute_dtype: torch.dtype, output: Path | None, formats: tuple[str, ...], labels: bool,
                 overwrite: bool, keep_images: bool, progress: bool, exact: bool = False, protect: Sequence = ()):
        self.model = model
        self.source = source
        self.name = source.name
        self.delay = delay
        self.live = live
        self.queue_size = queue_size
        self.compute_dtype = compute_dtype
        self.fps = source.fps / source.selection.stride
        self.output = output
        self.formats = formats
        self.labels = labels
        self.overwrite = overwrite
        self.protect = tuple(protect)  # paths --overwrite must never replace (the inputs)
        self.keep_images = keep_images or (output is not None and "overlay" in formats)
        self.size: tuple[int, int] | None = None
        self.processed = 0
        self.status = "running"
        self.error: str | None = None
        self.manifest: dict[str, Any] | None = None
        self.seconds = {"model": 0.0, "merge": 0.0, "write": 0.0}
        self._tracking = OnlineTracking(model, compute_dtype, delay, exact)
        self._ready: deque[tuple[Emitted, float]] = deque()  # (emitted frame, its merge seconds)
        self._writer: OnlineWriter | None = None
        self._ended = False  # no more frames will be read (end of stream, stop, error)
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
            while not self._ready:
                if self._ended:
                    if self._tracking.window_pending:
                        # End of stream (or stop): the look-ahead window is emitted with what is known.
                        self._emit(self._tracking.finish)
                        continue
                    if self.status == "running":
                        self.status = "complete"
                    # The end of the iteration finishes the outputs (manifest, panoptic.json) as
                    # leaving a `with` block does: a plain for loop must not leave them "running".
                    self.close()
                    raise StopIteration
                self._read_and_step()
            return self._deliver(self._ready.popleft())
        except StopIteration:
            raise
        except KeyboardInterrupt:
            self._fail("interrupted", None)
            self._close_after_error()
            raise
        except BaseException as err:
            self._fail("failed", self._describe(err))
            self._close_after_error()
            raise

    def _describe(self, err: BaseException) -> str:
        if isinstance(err, EntitySAMError):
            return str(err)
        if isinstance(err, OSError):  # e.g. a full disk: say so, not "OSError: [Errno 28] ..."
            return describe_os_error(err, f"the results of {self.name}")
        return f"{type(err).__name__}: {err}"

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
        if self.status == "running" or (status == "interrupted" and self.status != "failed"):
            self.status = status
            self.error = message
        self._ended = True
        self._reader.stop(wait=0)

    def _read_and_step(self) -> None:
        kind, item, drops = self._reader.queue.get()
        if kind == "end":
            self._ended = True
            return
        if kind == "error":
            self._ended = True
            raise item
        frame, t_read = item
        t0 = time.perf_counter()
        if self.size is None:
            self.size = frame.size
        t = self.processed
        info = FrameInfo(t, frame.index, frame.name, float(frame.time))
        payload = FramePayload(info, frame.image if self.keep_images else None, drops, 0.0, t_read)
        steps = self._tracking.track(t, frame.image, self.size)
        payload.model_seconds = time.perf_counter() - t0
        self.seconds["model"] += payload.model_seconds
        self.processed += 1
        for step in steps[:-1]:
            self._tracking.push(step)
        self._emit(lambda: self._tracking.push(steps[-1], payload))

    def _emit(self, produce: Callable[[], list[Emitted]]) -> None:
        t0 = time.perf_counter()
        out = produce()
        elapsed = time.perf_counter() - t0
        self.seconds["merge"] += elapsed
        for em in out:
            self._ready.append((em, elapsed / len(out)))

    def _deliver(self, item: tuple[Emitted, float]) -> OnlineFrame:
        em, merge_s = item
        result = online_frame(em, merge_s)
        if self.output is None:
            self._tally.add(result, self.dropped)
            return result
        t0 = time.perf_counter()
        # A Ctrl-C here waits for the frame's files and its accounting (the manifest counts
        # must match what is on disk); it is raised right after.
        with deferred_sigint():
            self._write(result)
            self.seconds["write"] += time.perf_counter() - t0
            self._tally.add(result, self.dropped)
        return result

    def _write(self, r: OnlineFrame) -> None:
        """One delivered frame's files (the writer is created with the first one)."""
        if self._writer is None:
            self._writer = OnlineWriter(self.output, video=self.name, formats=self.formats, fps=self.fps,
                                        labels=self.labels, timestamps=self.live, overwrite=self.overwrite,
                                        manifest=self._base_manifest(), protect=self.protect)
        records = [{"id": s.id, "query_index": s.query_index, "score": round(s.score, 6), "area": s.area,
                    "bbox": list(s.bbox)} for s in r.segments]
        self._writer.add(r.t, r.frame, r.id_map, records, r.image,
                         {"dropped": r.dropped, "lookahead": r.lookahead, "latency": round(r.latency_seconds, 4)})

    # -- state
    @property
    def frames_read(self) -> int:
        return self._reader.frames_read

    @property
    def dropped(self) -> int:
        return self._reader.dropped

    @property
    def emitted(self) -> int:
        """Frames delivered so far."""
        return self._tally.emitted

    @property
    def entities(self) -> list[Entity]:
        """Entities seen so far (in the frames delivered), with their latest running score."""
        return self._tally.entities()

    def stop(self) -> None:
        """Stop reading: the frames already processed are still yielded, then iteration ends
        (status ``stopped`` unless it already ended)."""
        if not self._ended:
            self._ended = True
            if self.status == "running":
                self.status = "stopped"
        self._reader.stop(wait=0)

    def _base_manifest(self) -> dict[str, Any]:
        return {
            "format": "entitysam-online",
            "format_version": 1,
            "entitysam_version": __version__,
            "video": self.name,
            "input": self.source.label if self.source.kind == "live" or self.source.path is not None else None,
            "live": self.live,
            "selection": asdict(self.source.selection),
            "delay": self.delay,
            "queue_size": self.queue_size,
            "size": list(self.size) if self.size else None,
            "fps": self.fps,
            "model": model_info(self.model, self.compute_dtype, self._tracking.exact),
        }

    def summary(self) -> dict[str, Any]:
        """Counts and timings (what the final manifest records)."""
        return {
            "frames_read": self.frames_read,
            "frames_processed": self.processed,
            "frames_emitted": self.emitted,
            "dropped_frames": self.dropped,
            "entities": self._tally.num_entities,
            "tracks": [{"id": e.id, "query_index": e.query_index, "score": e.score, "first_frame": e.first_frame,
                        "last_frame": e.last_frame, "num_frames": e.num_frames, "area": e.area}
                       for e in self.entities],
            "seconds": {**{k: round(v, 3) for k, v in self.seconds.items()},
                        "total": round(time.perf_counter() - self._t0, 3)},
            "latency_seconds": self._tally.latency(),
            **({"error": self.error} if self.error else {}),
        }

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
            if self._writer is not None and not self._writer.finished:
                with deferred_sigint():
                    self.manifest = self._writer.finish(self.status, self.summary())
                if self.manifest["status"] != self.status:  # finishing the files failed (full disk)
                    self.status, self.error = self.manifest["status"], self.manifest.get("error")
        except OutputError as err:  # not even the manifest could be written
            self.status, self.error = "failed", str(err)
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
        if self.status in ("running", "stopped"):
            self._fail("interrupted", None)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is KeyboardInterrupt:
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
    check_delay(delay)
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise EntitySAMError(f"queue size must be a positive integer, got {queue_size!r}")
    fmts = check_formats(formats)
    out = Path(output) if output is not None else None
    protect = tuple(Path(p) for p in protect) + ((Path(video),) if isinstance(video, (str, os.PathLike))
                                                 and not str(video).startswith(("rtsp:", "rtmp:", "http:", "https:"))
                                                 else ())
    if out is not None:
        StagedOutput.check_free(out, overwrite, inputs=protect)
    device = next(model.parameters()).device
    compute_dtype = resolve_dtype(dtype, device)
    check_exact(exact, compute_dtype)
    selection = FrameSelection(start, end, stride, max_frames)
    source = open_video(video, selection, fps, name, max_pixels)
    is_live = source.kind == "live" if live is None else bool(live)
    return OnlineStream(model, source, delay=delay, live=is_live, queue_size=queue_size,
                        compute_dtype=compute_dtype, output=out, formats=fmts, labels=labels, overwrite=overwrite,
                        keep_images=keep_images, progress=progress, exact=exact, protect=protect)
