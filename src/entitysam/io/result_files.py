"""The files of an offline result (`segment`): panoptic PNGs + JSON, entities.json, overlay.mp4.

Three jobs run at once, so that encoding stays off the thread that reads the id maps:

* a small thread pool encodes each frame's id PNG and its entities' RLE masks (Pillow's zlib and
  pycocotools release the GIL while they encode, so the workers run in parallel); at most
  ``2 * workers`` frames are in flight and their results are taken in frame order, so memory
  stays flat and the JSON files are written in order, byte for byte as one thread writes them;
* one thread reads the frames again from the source, renders the overlay and encodes it
  (``overlay.mp4`` is one sequential stream), fed through a bounded queue;
* the calling thread reads the id maps and writes the JSON records in order.

The first error of any of them stops the others, the writers are aborted (their temporary files
removed) and it is raised; what was already written lies in the caller's folder (a staging folder
of :class:`~entitysam.io.staging.StagedOutput`, removed as a whole).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import EntitySAMError
from .entities import EntitiesWriter, segment_rles
from .overlay import OverlayWriter
from .panoptic import PanopticWriter, frame_segments

__all__ = ["default_workers", "write_result_files"]

_OVERLAY_QUEUE = 4  # frames waiting for the overlay thread ([H, W] id maps, a few MB each)


def default_workers() -> int:
    """PNG/RLE encoding threads: the cores this process may use, at most 4 (more gains little:
    the overlay and the JSON records are one stream each)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


class _OverlayThread:
    """Renders and encodes ``overlay.mp4`` on its own thread, reading the frames again from
    `images` (which must give the frames of the result, in order). The encoder runs on a thread
    of its own, one frame behind: frame t is encoded while frame t + 1 is read and rendered."""

    def __init__(self, writer: OverlayWriter, images: Iterable[Any], label: str):
        self.writer = writer
        self.label = label
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=_OVERLAY_QUEUE)
        self._images = images
        self._thread = threading.Thread(target=self._run, name="entitysam-overlay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        encoder = ThreadPoolExecutor(1, thread_name_prefix="entitysam-overlay-encode")
        encoding: Future | None = None
        try:
            images = iter(self._images)
            while True:
                item = self._queue.get()
                if item is None or self._stop.is_set():
                    break
                index, id_map = item
                frame = next(images, None)
                if frame is None or frame.index != index:
                    raise EntitySAMError(f"{self.label}: reading the frames again for overlay.mp4 gave "
                                         "different frames (did the input change?)")
                rendered = self.writer.render(frame.image, id_map)
                if encoding is not None:
                    encoding.result()  # the previous frame is in (and its error raised here)
                encoding = encoder.submit(self.writer.encode, rendered)
            if encoding is not None:
                encoding.result()
        except BaseException as err:  # noqa: BLE001 - handed to the calling thread
            self.error = err
        finally:
            encoder.shutdown(wait=True)  # nothing touches the writer after this thread ends

    def put(self, index: int, id_map: np.ndarray) -> None:
        """Queue one frame; waits while the queue is full, raises the thread's error if it failed."""
        while True:
            self.raise_error()
            if not self._thread.is_alive():
                raise RuntimeError("the overlay thread ended before the last frame")
            try:
                self._queue.put((index, id_map), timeout=0.1)
                return
            except queue.Full:
                continue

    def raise_error(self) -> None:
        """Raise the error the thread stopped on, if any (in the calling thread)."""
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Wait for every queued frame to be encoded; raise the thread's error if any."""
        while self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=0.1)
                break
        self._thread.join()
        self.raise_error()

    def stop(self) -> None:
        """Stop without waiting for the queued frames (an error elsewhere)."""
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=30)


def _encode_frame(id_map: np.ndarray, name: str, panoptic: PanopticWriter | None,
                  rle: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """One frame's encoding work (a pool task): its segments, its PNG written, its RLE masks."""
    segments = frame_segments(id_map, "coco")
    if panoptic is not None:
        panoptic.write_png(name, id_map)
    return segments, (segment_rles(id_map, segments) if rle else None)


def write_result_files(directory: str | os.PathLike, formats: Sequence[str], *, name: str, fps: float,
                       frames: Sequence[Any], id_maps: Iterable[np.ndarray], entities: Sequence[Mapping[str, Any]],
                       images: Iterable[Any] | None = None, labels: bool = False, source_label: str = "",
                       on_frame: Callable[[], None] | None = None, workers: int | None = None,
                       sample_aspect_ratio: Fraction = Fraction(1)) -> list[str]:
    """Write the chosen `formats` (panoptic, entities, overlay) of one result into `directory`
    (an existing folder). Returns the names of the files / folders written.

    frames: per frame ``.t``, ``.index``, ``.name``, ``.time`` (FrameInfo), in order; id_maps:
    the [H, W] int id maps, in the same order; entities: ``{"id", "score", "query_index"}``;
    images: the source, iterated again for the overlay (frames with ``.index`` and ``.image``
    [H, W, 3] uint8); on_frame: called after each frame's records are written (progress).
    workers: PNG/RLE encoding threads (None: :func:`default_workers`); 0 encodes everything on
    the calling thread, one step after the other. The files are the same byte for byte whatever
    the number of workers, except overlay.mp4, whose frames are the same but whose encoder (x264)
    is not reproducible run to run under CPU load. sample_aspect_ratio: the input's pixel shape,
    recorded in overlay.mp4 and entities.json.
    """
    directory = Path(directory)
    workers = default_workers() if workers is None else workers
    writers: list[Any] = []
    written: list[str] = []
    panoptic = entities_writer = overlay = None
    overlay_thread: _OverlayThread | None = None
    pool = ThreadPoolExecutor(workers, thread_name_prefix="entitysam-png") if workers > 0 else None
    try:
        if "panoptic" in formats:
            panoptic = PanopticWriter(directory / "panoptic", directory / "panoptic.json", name)
            writers.append(panoptic)
            written += ["panoptic/", "panoptic.json"]
        if "entities" in formats:
            entities_writer = EntitiesWriter(directory / "entities.json", name)
            writers.append(entities_writer)
            written.append("entities.json")
        if "overlay" in formats:
            overlay = OverlayWriter(directory / "overlay.mp4", fps, labels=labels, sample_aspect_ratio=sample_aspect_ratio)
            writers.append(overlay)
            written.append("overlay.mp4")
            if images is None:
                raise ValueError("the overlay needs the frame images")
            if pool is not None:
                overlay_thread = _OverlayThread(overlay, images, source_label)
        _write_frames(frames, id_maps, panoptic, entities_writer, overlay, overlay_thread, images, pool, workers,
                      source_label, on_frame)
        if overlay_thread is not None:
            overlay_thread.finish()
        if panoptic is not None:
            panoptic.close()
        if entities_writer is not None:
            entities_writer.close(entities, fps=fps, sample_aspect_ratio=sample_aspect_ratio)
        if overlay is not None:
            overlay.close()
    except BaseException:
        if overlay_thread is not None:
            overlay_thread.stop()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # no worker writes into the folder after this
        for w in writers:
            with contextlib.suppress(Exception):
                w.abort()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return written


def _write_frames(frames: Sequence[Any], id_maps: Iterable[np.ndarray], panoptic: PanopticWriter | None,
                  entities: EntitiesWriter | None, overlay: OverlayWriter | None,
                  overlay_thread: _OverlayThread | None, images: Iterable[Any] | None,
                  pool: ThreadPoolExecutor | None, workers: int, source_label: str,
                  on_frame: Callable[[], None] | None) -> None:
    """Feed every frame to the encoders and write its records in order (see the module docstring)."""
    need_segments = panoptic is not None or entities is not None
    rle = entities is not None
    pending: deque[tuple[Any, np.ndarray, Future]] = deque()
    sequential_images: Iterator[Any] | None = iter(images) if overlay is not None and pool is None else None

    def write_records(info: Any, id_map: np.ndarray, segments, rles) -> None:
        if panoptic is not None:
            panoptic.add_entry(info.t, info, segments)
        if entities is not None:
            entities.add(info.t, info, id_map, segments, rles)
        if on_frame is not None:
            on_frame()

    for info, id_map in zip(frames, id_maps):
        if pool is None:  # everything here, in the order of the single-threaded writer
            segments, rles = (_encode_frame(id_map, info.name, panoptic, rle) if need_segments else (None, None))
            write_records(info, id_map, segments, rles)
            if overlay is not None:
                frame = next(sequential_images, None)
                if frame is None or frame.index != info.index:
                    raise EntitySAMError(f"{source_label}: reading the frames again for overlay.mp4 gave "
                                         "different frames (did the input change?)")
                overlay.add(frame.image, id_map)
            continue
        if overlay_thread is not None:
            overlay_thread.put(info.index, id_map)
        if need_segments:
            pending.append((info, id_map, pool.submit(_encode_frame, id_map, info.name, panoptic, rle)))
            while len(pending) > 2 * workers:
                done_info, done_map, future = pending.popleft()
                write_records(done_info, done_map, *future.result())
        elif on_frame is not None:
            on_frame()
        if overlay_thread is not None:
            overlay_thread.raise_error()
    while pending:
        done_info, done_map, future = pending.popleft()
        write_records(done_info, done_map, *future.result())
