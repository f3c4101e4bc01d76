"""The files of online mode, written frame by frame as a stream is processed (see the README,
"Online mode"): ``panoptic/<frame>.png``, ``entities.jsonl``, ``overlay.ts``, ``panoptic.json``
and ``manifest.json``, each in a state a killed process leaves readable.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .. import jsonio
from ..errors import OutputError
from . import idpng
from .atomic import atomic_file, write_bytes_atomic
from .entities import segment_rles
from .manifest import MANIFEST
from .output_lock import OutputLock
from .overlay import OverlayWriter, frames_rate
from .panoptic import PanopticWriter, panoptic_json_head, panoptic_json_tail
from .paths import describe_os_error
from .staging import StagedOutput

__all__ = ["JSONL", "OVERLAY", "OnlineWriter", "read_jsonl"]

JSONL = "entities.jsonl"
OVERLAY = "overlay.ts"


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


class OnlineWriter:
    """Streams one stream's results into ``directory`` as they are produced.

    Layout (see the README, "Online mode"):

    * ``panoptic/<frame>.png`` (format ``panoptic``): written under a temporary name and renamed,
      so a PNG is either complete or absent;
    * ``entities.jsonl`` (always): one line per frame, appended and flushed after the frame's PNG
      and overlay frame are written, so a line is the commit record of its frame;
    * ``overlay.ts`` (format ``overlay``): see :class:`~entitysam.io.overlay.OverlayWriter` (``streaming=True``);
    * ``panoptic.json`` (format ``panoptic``): the one-video ``pred.json``, built from
      ``entities.jsonl`` when the stream ends (also when interrupted);
    * ``manifest.json``: written when the writer starts (``"status": "running"``) and replaced
      when it finishes (``complete``, ``interrupted``, ``stopped`` or ``failed``, with counts).
      ``measure_fps`` (a live stream's guessed rate): the running one says ``"fps_provisional":
      true``, the final one's ``fps`` is the rate of the frames written (first to last frame time;
      the guess stays for fewer than 2 frames or no time between them).

    The folder must not exist, unless ``overwrite`` (then the old one is replaced once the new
    one's files and manifest are created, as :class:`~entitysam.io.staging.StagedOutput` replaces
    a result; only a folder entitysam wrote, never one that is, contains or lies inside a
    ``protect`` path). The
    folder's lock (:class:`~entitysam.io.output_lock.OutputLock`) is held until :meth:`finish`.
    """

    def __init__(self, directory: str | os.PathLike, *, video: str, formats: Sequence[str], fps: float,
                 labels: bool = False, rle: bool | None = None, timestamps: bool = False,
                 overwrite: bool = False, manifest: Mapping[str, Any] | None = None, protect: Sequence[Any] = (),
                 sample_aspect_ratio: Fraction = Fraction(1), measure_fps: bool = False):
        self.directory = Path(directory)
        self.video = video
        self.formats = tuple(formats)
        self.fps = fps
        self.sample_aspect_ratio = sample_aspect_ratio
        self.rle = ("entities" in self.formats) if rle is None else rle
        self.base_manifest = dict(manifest or {})
        self.num_frames = 0
        self.measure_fps = measure_fps
        self.frame_times: tuple[float, float] | None = None  # (first, last) written, for measure_fps
        self._overlay: OverlayWriter | None = None
        self._jsonl_fd: int | None = None
        self._closed = False
        self.t_start = time.time()
        # One run per folder (re-entrant: the command line already holds it); released by finish().
        self._lock = OutputLock.acquire(self.directory)
        try:
            # overwrite replaces only a folder entitysam wrote, never an input (protect)
            staged = StagedOutput(self.directory, overwrite, inputs=protect)  # (recovers a killed run's leftovers)
            self._create(staged, labels, timestamps)
        except BaseException:
            self._lock.release()
            raise

    def _create(self, staged: StagedOutput, labels: bool, timestamps: bool) -> None:
        """The folder, its files and its first manifest ("running") are made in a staging folder
        moved into place as a result is (the old one, with overwrite, replaced only then): a run
        killed before left a folder without a manifest, which no later run could replace, and
        with overwrite the old result, moved aside first, was deleted by the next run."""
        try:
            if "panoptic" in self.formats:
                (staged.path / "panoptic").mkdir()
            self._jsonl_fd = os.open(staged.path / JSONL, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
            # a guessed rate is replaced by the measured one at the end: say so while it runs
            provisional = {"fps_provisional": True} if self.measure_fps else {}
            self._write_manifest({"status": "running", "complete": False, "pid": os.getpid(), **provisional},
                                 staged.path)
            staged.publish()  # (the open entities.jsonl moves with it)
            if "overlay" in self.formats:  # (PyAV opens the file by its name at the first frame: in place)
                self._overlay = OverlayWriter(self.directory / OVERLAY, self.fps, labels, streaming=True,
                                              timestamps=timestamps, sample_aspect_ratio=self.sample_aspect_ratio)
        except BaseException as err:
            self._release()
            staged.abort()  # (nothing left to remove once published)
            if isinstance(err, OSError):
                raise OutputError(describe_os_error(staged.final_name(err), str(self.directory))) from None
            raise

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
        if "panoptic" in self.formats:
            with atomic_file(self.directory / "panoptic" / f"{frame.name}.png") as f:
                idpng.write_id_png(f, id_map)
        if self._overlay is not None:
            if image is None:
                raise ValueError("the overlay needs the frame image")
            self._overlay.add(image, id_map, float(frame.time))
        segs = [dict(seg) for seg in segments]
        if self.rle:
            for rec, rle in zip(segs, segment_rles(id_map, segments)):
                rec["rle"] = rle
        record = {"frame": t, "source_frame": int(frame.index), "name": frame.name,
                  "time": round(float(frame.time), 6), **(extra or {}), "segments": segs}
        data = (jsonio.dumps(record, compact=True) + "\n").encode("utf-8")
        # One write() per line: a killed process leaves whole lines (and at most a partial last one).
        view = memoryview(data)
        while view:
            n = os.write(self._jsonl_fd, view)
            view = view[n:]
        self.num_frames += 1
        time_s = float(frame.time)
        self.frame_times = (time_s, time_s) if self.frame_times is None else (self.frame_times[0], time_s)

    def _write_manifest(self, fields: Mapping[str, Any], folder: Path | None = None, *,
                        in_place_fallback: bool = False) -> dict[str, Any]:
        data = {**self.base_manifest, **fields, "files": self.files(),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        encoded = (jsonio.dumps(data, indent=1) + "\n").encode("utf-8")
        path = (folder or self.directory) / MANIFEST
        try:
            write_bytes_atomic(path, encoded)
        except OSError:
            if not in_place_fallback or not path.is_file():
                raise
            _overwrite_in_place(path, encoded)
        return data

    def _write_panoptic_json(self) -> None:
        with atomic_file(self.directory / "panoptic.json", "w") as out:
            out.write(panoptic_json_head(self.video))
            for i, rec in enumerate(read_jsonl(self.directory / JSONL)):
                segs = [{k: s[k] for k in ("id", "area", "bbox")} for s in rec["segments"]]
                entry = PanopticWriter.frame_entry(
                    rec["frame"], SimpleNamespace(name=rec["name"], index=rec["source_frame"]), segs)
                out.write(("" if i == 0 else ",\n") + jsonio.dumps(entry, compact=True))
            out.write(panoptic_json_tail())

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
        if self._closed:
            raise RuntimeError("writer already finished")
        self._closed = True
        fields = dict(fields or {})
        measured = frames_rate(*self.frame_times, self.num_frames) if self.measure_fps and self.frame_times else None
        if measured is not None:
            fields.setdefault("fps", measured)
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
