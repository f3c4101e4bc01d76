"""Online mode: live-source reading (FrameQueue, FrameReader), Ctrl-C deferral and streamed outputs
(OnlineWriter). The online merge itself is :mod:`entitysam.inference.online_merge`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .. import jsonio
from ..errors import OutputError

__all__ = [
    "OnlineWriter",
    "read_jsonl",
]


# ----------------------------------------------------------------------------- outputs


JSONL = "entities.jsonl"
OVERLAY = "overlay.ts"
MANIFEST = "manifest.json"


def _dumps(obj: Any) -> str:
    return jsonio.dumps(obj, compact=True)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _overwrite_in_place(path: Path, data: bytes) -> None:
    """Last resort for the final manifest on a full disk: the atomic write needs a new file (new
    blocks), this one reuses the blocks of the existing file (a manifest fits in the block its
    "running" version already holds)."""
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
        f.flush()


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The frame records of an ``entities.jsonl``, skipping a last line cut short by a crash."""
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return  # the write in flight when the process died
            yield json.loads(line)


class _StreamOverlay:
    """overlay.ts: H.264 in MPEG-TS, written so that a killed process loses no finished frame.

    MPEG-TS has no index to finalise and its muxer writes each packet as it comes; with
    ``flush_packets`` and x264's zero-latency tuning (no look-ahead, no B-frames) a frame is on
    disk when :meth:`add` returns. (Fragmented MP4 and Matroska were measured to hold the last
    frame back until the next one arrives.) Timestamps follow the frames' source times when
    ``timestamps`` is set (live sources: dropped frames leave gaps, so the video plays in real
    time), else one frame period apart.
    """

    def __init__(self, path: Path, fps: float, labels: bool, timestamps: bool):
        import av  # noqa: PLC0415 - optional dependency

        self._av = av
        self.path = path
        self.labels = labels
        self.timestamps = timestamps
        self.rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
        self._container = av.open(str(path), mode="w", format="mpegts", container_options={"flush_packets": "1"})
        self._stream = None
        self._last_pts = -1
        self.num_frames = 0

    def _open_stream(self, h: int, w: int) -> None:
        codec = "libx264" if "libx264" in self._av.codecs_available else "mpeg4"
        stream = self._container.add_stream(codec, rate=self.rate)
        stream.width, stream.height = w + (w % 2), h + (h % 2)
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / self.rate
        if codec == "libx264":
            stream.options = {"crf": "20", "preset": "veryfast", "tune": "zerolatency"}
        self._stream = stream

    def add(self, image: np.ndarray, id_map: np.ndarray, time_s: float) -> None:
        from PIL import Image  # noqa: PLC0415

        from .writers import render_overlay  # noqa: PLC0415

        h, w = id_map.shape
        if image.shape[:2] != (h, w):
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        frame = render_overlay(image, id_map, 0.5, self.labels)
        if self._stream is None:
            self._open_stream(h, w)
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = self._av.VideoFrame.from_ndarray(frame, format="rgb24")
        pts = self._last_pts + 1
        if self.timestamps:
            pts = max(pts, int(round(time_s * self.rate)))
        vf.pts = pts
        vf.time_base = 1 / self.rate
        self._last_pts = pts
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.num_frames += 1

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._container.close()


class OnlineWriter:
    """Streams one stream's results into ``directory`` as they are produced.

    Layout (see the README, "Online mode"):

    * ``panoptic/<frame>.png`` (format ``panoptic``): written under a temporary name and renamed,
      so a PNG is either complete or absent;
    * ``entities.jsonl`` (always): one line per frame, appended and flushed after the frame's PNG
      and overlay frame are written, so a line is the commit record of its frame;
    * ``overlay.ts`` (format ``overlay``): see :class:`_StreamOverlay`;
    * ``panoptic.json`` (format ``panoptic``): the one-video ``pred.json``, built from
      ``entities.jsonl`` when the stream ends (also when interrupted);
    * ``manifest.json``: written when the writer starts (``"status": "running"``) and replaced
      when it finishes (``complete``, ``interrupted``, ``stopped`` or ``failed``, with counts).

    The folder must not exist, unless ``overwrite`` (then the old one is removed first; only a
    folder entitysam wrote, never one that is, contains or lies inside a ``protect`` path). The
    folder's lock (:class:`~entitysam.video.writers.OutputLock`) is held until :meth:`finish`.
    """

    def __init__(self, directory: str | os.PathLike, *, video: str, formats: Sequence[str], fps: float,
                 labels: bool = False, rle: bool | None = None, timestamps: bool = False,
                 overwrite: bool = False, manifest: Mapping[str, Any] | None = None, protect: Sequence[Any] = ()):
        from .writers import OutputLock, StagedOutput, recover_output  # noqa: PLC0415

        self.directory = Path(directory)
        self.video = video
        self.formats = tuple(formats)
        self.fps = fps
        self.rle = ("entities" in self.formats) if rle is None else rle
        self.base_manifest = dict(manifest or {})
        self.num_frames = 0
        self._overlay: _StreamOverlay | None = None
        self._jsonl_fd: int | None = None
        self._closed = False
        self.t_start = time.time()
        # One run per folder (re-entrant: the command line already holds it); released by finish().
        self._lock = OutputLock.acquire(self.directory)
        try:
            recover_output(self.directory)
            # overwrite replaces only a folder entitysam wrote, never an input (protect)
            StagedOutput.check_free(self.directory, overwrite, inputs=protect)
            self._create(formats, fps, labels, timestamps)
        except BaseException:
            self._lock.release()
            raise

    def _create(self, formats, fps, labels, timestamps) -> None:
        from .writers import describe_os_error  # noqa: PLC0415

        try:
            if self.directory.exists():  # overwrite: the old result goes first
                old = self.directory.with_name(f".{self.directory.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
                os.rename(self.directory, old)
                shutil.rmtree(old, ignore_errors=True)
            self.directory.mkdir(parents=True)
            if "panoptic" in self.formats:
                (self.directory / "panoptic").mkdir()
            self._jsonl_fd = os.open(self.directory / JSONL, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC,
                                     0o644)
            if "overlay" in self.formats:
                self._overlay = _StreamOverlay(self.directory / OVERLAY, fps, labels, timestamps)
            self._write_manifest({"status": "running", "complete": False, "pid": os.getpid()})
        except OSError as err:
            self._release()
            raise OutputError(describe_os_error(err, str(self.directory))) from None

    def files(self) -> list[str]:
        out = [JSONL]
        if "panoptic" in self.formats:
            out += ["panoptic/", "panoptic.json"]
        if "overlay" in self.formats:
            out.append(OVERLAY)
        return out

    def add(self, t: int, frame: Any, id_map: np.ndarray, segments: list[dict[str, Any]],
            image: np.ndarray | None = None, extra: Mapping[str, Any] | None = None) -> None:
        """Write one frame. frame: has .name, .index, .time. segments: frame_segments(id_map)
        records extended with "query_index" and "score". image: [H, W, 3] uint8 (overlay)."""
        from pycocotools import mask as mask_utils  # noqa: PLC0415

        from .writers import write_id_png  # noqa: PLC0415

        if "panoptic" in self.formats:
            path = self.directory / "panoptic" / f"{frame.name}.png"
            tmp = path.with_name(f".{path.name}.tmp")
            write_id_png(tmp, id_map)
            os.replace(tmp, path)
        if self._overlay is not None:
            if image is None:
                raise ValueError("the overlay needs the frame image")
            self._overlay.add(image, id_map, float(frame.time))
        segs = []
        for seg in segments:
            rec = dict(seg)
            if self.rle:
                rle = mask_utils.encode(np.asfortranarray((id_map == seg["id"]).astype(np.uint8)))
                rec["rle"] = {"size": [int(rle["size"][0]), int(rle["size"][1])],
                              "counts": rle["counts"].decode("ascii")}
            segs.append(rec)
        record = {"frame": t, "source_frame": int(frame.index), "name": frame.name,
                  "time": round(float(frame.time), 6), **(extra or {}), "segments": segs}
        data = (_dumps(record) + "\n").encode("utf-8")
        # One write() per line: a killed process leaves whole lines (and at most a partial last one).
        view = memoryview(data)
        while view:
            n = os.write(self._jsonl_fd, view)
            view = view[n:]
        self.num_frames += 1

    def _write_manifest(self, fields: Mapping[str, Any], *, in_place_fallback: bool = False) -> dict[str, Any]:
        data = {**self.base_manifest, **fields, "files": self.files(),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        encoded = (jsonio.dumps(data, indent=1) + "\n").encode("utf-8")
        try:
            _write_atomic(self.directory / MANIFEST, encoded)
        except OSError:
            if not in_place_fallback or not (self.directory / MANIFEST).is_file():
                raise
            _overwrite_in_place(self.directory / MANIFEST, encoded)
        return data

    def _write_panoptic_json(self) -> None:
        from types import SimpleNamespace  # noqa: PLC0415

        from .writers import CATEGORIES, PanopticWriter  # noqa: PLC0415

        path = self.directory / "panoptic.json"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "w", encoding="utf-8") as out:
                out.write(f'{{"annotations": [{{"video_id": {_dumps(self.video)}, "annotations": [\n')
                for i, rec in enumerate(read_jsonl(self.directory / JSONL)):
                    segs = [{k: s[k] for k in ("id", "area", "bbox")} for s in rec["segments"]]
                    entry = PanopticWriter.frame_entry(
                        rec["frame"], SimpleNamespace(name=rec["name"], index=rec["source_frame"]), segs)
                    out.write(("" if i == 0 else ",\n") + _dumps(entry))
                out.write(f'\n]}}], "categories": {_dumps(CATEGORIES)}}}\n')
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def _release(self) -> None:
        if self._jsonl_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._jsonl_fd)
            self._jsonl_fd = None
        if self._overlay is not None:
            self._overlay.abort()

    def finish(self, status: str, fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Close the files, write ``panoptic.json`` and the final manifest (``fields`` added,
        ``complete`` is ``status == "complete"``). Returns the manifest.

        The manifest is written whatever happens before it: if closing the overlay or writing
        ``panoptic.json`` fails (a full disk), the status becomes ``failed`` with the cause in
        ``error`` (unless an earlier error is already recorded), and on a full disk the manifest
        is rewritten in place. Only when even that fails is an OutputError raised."""
        from .writers import describe_os_error  # noqa: PLC0415

        if self._closed:
            raise RuntimeError("writer already finished")
        self._closed = True
        fields = dict(fields or {})
        problem: OSError | None = None
        try:
            if self._overlay is not None:
                self._overlay.close()
                self._overlay = None
        except OSError as err:
            problem = err
        finally:
            self._release()
        try:
            if "panoptic" in self.formats:
                try:
                    self._write_panoptic_json()
                except OSError as err:
                    problem = problem or err
            if problem is not None:
                status = "failed"
                fields.setdefault("error", describe_os_error(problem, f"the results in {self.directory}"))
            try:
                try:
                    return self._write_manifest({**fields, "status": status, "complete": status == "complete",
                                                 "num_frames": self.num_frames}, in_place_fallback=True)
                except jsonio.NonFiniteJSONError as err:  # e.g. a NaN score: still a valid manifest, saying so
                    fields = {**jsonio.nulls_for_non_finite(fields), "error": fields.get("error") or str(err)}
                    return self._write_manifest({**fields, "status": "failed", "complete": False,
                                                 "num_frames": self.num_frames}, in_place_fallback=True)
            except OSError as err:
                raise OutputError(describe_os_error(err, str(self.directory / MANIFEST))) from None
        finally:
            self._lock.release()

    @property
    def finished(self) -> bool:
        return self._closed
