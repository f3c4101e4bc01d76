"""Online mode: per-frame id maps with bounded latency, live-source reading, streamed outputs.

The official video-level merge (:func:`entitysam.video.postprocess.plan_video_panoptic`) needs
the whole video: an entity's score is its mean eIoU over every step, its mask quality is counted
over every 5th frame, and a query survives only if it wins at least 70% of its own foreground over
the whole video. Online, each of these is replaced by its value over what has been seen so far:

* score: the **cumulative** mean of eIoU over the steps seen (warm-up steps included, as
  offline). A cumulative mean over all steps is exactly the offline quantity once every step has
  been seen; an exponential mean would weight recent steps more and could never reproduce it.
* quality: ``#(logit > 1) / #(logit > -1)`` over the every-5th output frames seen so far
  (frames 0, 5, 10, ... as offline), from running counts.
* overlap ratio ``A / O`` (argmax area over ``prob >= 0.5`` area): counts of the frames already
  emitted (computed with the scores of the moment each was emitted, they cannot change any more)
  plus the counts of the frames in the look-ahead window, computed with the current scores. A
  query only contributes counts to frames where it was among the kept queries (score threshold),
  so the ratio is over the frames where it competed.

Frame ``t`` is emitted once frame ``t + delay`` has been processed (or at the end of the stream),
with the decisions taken at that moment. Ids belong to queries: a query gets the next id (1, 2,
...) the first time it survives, in query order among the queries surviving for the first time,
and keeps it for the whole stream; an id is never given to another query. A query that stops
surviving leaves no pixels until it survives again, with its old id.

With ``delay >= n - 1`` no frame is emitted before the last one has been processed (with
``delay = n - 1`` frame 0 comes out as frame n - 1 arrives, the others at the end of the stream,
with the same information): every decision is taken with the whole video seen, and the id maps,
ids and scores are exactly those of the offline merge (the eIoU of the steps are then averaged
with the same reduction as offline, see :class:`RunningScore`).

State per stream: the running sums above ([Q] each), the id table ([Q]) and the look-ahead window
of at most ``delay + 1`` frames of low-res logits ([Q, h, w] float32 each). Nothing else grows with
the stream.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from .. import jsonio
from ..errors import OutputError
from .postprocess import _assign, _paint

__all__ = [
    "RunningScore",
    "Emitted",
    "OnlineMerger",
    "OnlineWriter",
    "read_jsonl",
]


# ----------------------------------------------------------------------------- scores


class RunningScore:
    """Mean of the per-step eIoU ([Q] float32 each) seen so far.

    The first ``exact_steps`` step vectors are kept and averaged exactly as the offline path does
    (``torch.stack(steps).mean(0)``, float32); the merger sets ``exact_steps = delay + 1 +
    warm-up steps``, so a stream of at most ``delay + 1`` frames, all of whose frames are emitted
    with every step seen, gets the offline scores bit for bit. (A running sum would differ from
    torch's blocked float32 reduction in the last bits, which can flip an argmax tie.) When a
    further step arrives they are folded into a float64 running sum, whose rounding error stays
    far below float32 precision for any realistic stream length, where a float32 sum would drift.
    Memory: at most ``exact_steps`` vectors of Q floats, then one.
    """

    def __init__(self, exact_steps: int = 0) -> None:
        self.exact_steps = exact_steps
        self._steps: list[torch.Tensor] | None = []
        self._sum: torch.Tensor | None = None
        self.count = 0

    def add(self, scores: torch.Tensor) -> None:
        s = scores.detach().to("cpu", torch.float32).reshape(-1)
        if self._steps is not None and len(self._steps) >= self.exact_steps:
            self._sum = (torch.stack(self._steps).double().sum(0) if self._steps
                         else torch.zeros_like(s, dtype=torch.float64))
            self._steps = None
        if self._steps is not None:
            self._steps.append(s)
        else:
            self._sum += s.double()
        self.count += 1

    def mean(self) -> torch.Tensor:
        """[Q] float32."""
        if self.count == 0:
            raise ValueError("no step scores yet")
        if self._steps is not None:
            return torch.stack(self._steps).mean(0)
        return (self._sum / self.count).to(torch.float32)


# ----------------------------------------------------------------------------- merger


@dataclass
class Emitted:
    """One output frame of :class:`OnlineMerger`.

    t: position of the frame in the stream (0, 1, ...). id_map: [H, W] int32, 0 = no entity.
    segments: id -> (query index, score) of every surviving entity at emission time (present in
    the frame or not); score = running mean eIoU + 0.5 running quality. winners: [H, W] int16,
    only with ``keep_winners``: the query whose segment each pixel would belong to if every kept
    query survived the overlap test (argmax winner whose own prob >= 0.5), -1 elsewhere; the id
    map is these pixels restricted to surviving queries. frames_seen: output frames processed when
    this one was emitted (t + 1 + look-ahead). payload: what was passed with the frame.
    """

    t: int
    id_map: np.ndarray
    segments: dict[int, tuple[int, float]]
    frames_seen: int
    payload: Any = None
    winners: np.ndarray | None = None


@dataclass
class _Pending:
    t: int
    logits: torch.Tensor  # [Q, h, w] float32
    payload: Any


class OnlineMerger:
    """The official video merge, computed online with a look-ahead of ``delay`` frames.

    Feed every model step's eIoU with :meth:`add_scores` (warm-up steps included) and every
    output frame's low-res logits with :meth:`add_frame`, in stream order; each call returns the
    frames that became ready (frame t once frame t + delay has been added). :meth:`finish`
    returns the rest. See the module docstring for the rules.

    Args:
        num_queries: Q.
        out_size: (H, W) of the id maps.
        delay: look-ahead in frames (>= 0).
        warmup_steps: model steps before the first output frame (the tracker's warm-up copies of
            frame 0); only sizes how many step scores are averaged exactly (:class:`RunningScore`).
        keep_winners: also return the per-pixel winning query (for diagnostics).
        The thresholds are those of :func:`~entitysam.video.postprocess.plan_video_panoptic`.
    """

    def __init__(self, num_queries: int, out_size: Sequence[int], delay: int = 0, *,
                 overlap_threshold: float = 0.7, mask_binary_threshold: float = 0.5,
                 object_mask_threshold: float = 0.05, test_topk_per_image: int = 100,
                 warmup_steps: int = 3, keep_winners: bool = False):
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
            raise ValueError(f"delay must be a non-negative integer, got {delay!r}")
        q = int(num_queries)
        self.num_queries = q
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.delay = delay
        self.overlap_threshold = overlap_threshold
        self.mask_binary_threshold = mask_binary_threshold
        self.object_mask_threshold = object_mask_threshold
        self.test_topk_per_image = test_topk_per_image
        self.keep_winners = keep_winners
        self.scores = RunningScore(exact_steps=delay + 1 + warmup_steps)
        # Quality counts over the every-5th frames seen, for every query ([Q] int64).
        self._above = torch.zeros(q, dtype=torch.int64)
        self._nonneg = torch.zeros(q, dtype=torch.int64)
        # A, O, S of the emitted frames, per query ([Q] int64).
        self._win_area = torch.zeros(q, dtype=torch.int64)
        self._fg_area = torch.zeros(q, dtype=torch.int64)
        self._seg_area = torch.zeros(q, dtype=torch.int64)
        self._window: deque[_Pending] = deque()
        self.ids = np.zeros(q, dtype=np.int32)  # id of each query, 0 = never survived
        self.next_id = 1
        self.frames_seen = 0
        self.frames_emitted = 0
        self.finished = False

    # -- input
    def add_scores(self, scores: torch.Tensor) -> None:
        """eIoU [Q] of one model step (warm-up steps included)."""
        if scores.numel() != self.num_queries:
            raise ValueError(f"expected {self.num_queries} scores, got {scores.numel()}")
        self.scores.add(scores)

    def add_frame(self, logits: torch.Tensor, payload: Any = None) -> list[Emitted]:
        """Low-res logits [Q, h, w] (or [Q, 1, h, w]) of the next output frame."""
        if self.finished:
            raise RuntimeError("the stream is finished")
        if self.scores.count == 0:
            raise ValueError("add the step's scores (add_scores) before its frame")
        lo = logits.detach().to("cpu", torch.float32)
        if lo.dim() == 4 and lo.shape[1] == 1:
            lo = lo[:, 0]
        if lo.dim() != 3 or lo.shape[0] != self.num_queries:
            raise ValueError(f"expected logits [Q={self.num_queries}, h, w], got {tuple(logits.shape)}")
        t = self.frames_seen
        if t % 5 == 0:  # the official quality uses frames 0, 5, 10, ...
            self._above += (lo > 1).flatten(1).sum(-1)
            self._nonneg += (lo > -1).flatten(1).sum(-1)
        self._window.append(_Pending(t, lo.contiguous(), payload))
        self.frames_seen = t + 1
        if len(self._window) > self.delay:
            return self._emit(len(self._window) - self.delay)
        return []

    def push_step(self, step: Any, payload: Any = None) -> list[Emitted]:
        """A tracker :class:`~entitysam.video.tracker.StepResult`: its scores, and its logits
        unless it is a warm-up step."""
        self.add_scores(step.scores)
        if step.is_warmup:
            return []
        return self.add_frame(step.mask_logits, payload)

    def finish(self) -> list[Emitted]:
        """End of stream: emit every frame still in the look-ahead window, with all the
        information there is. Further frames are refused."""
        if self.finished:
            return []
        out = self._emit(len(self._window)) if self._window else []
        self.finished = True
        return out

    @property
    def pending(self) -> int:
        """Frames processed but not emitted yet (at most delay + 1)."""
        return len(self._window)

    # -- the merge
    def current_scores(self) -> torch.Tensor:
        """[Q] float32 running scores (mean eIoU so far), without the quality term."""
        return self.scores.mean()

    def _emit(self, count: int) -> list[Emitted]:
        """Emit the `count` oldest window frames with one set of decisions. All the work is done
        before the state is updated (a few assignments at the end), so an exception inside
        (e.g. KeyboardInterrupt) leaves the merger as it was, its frames still in the window."""
        q, (h, w) = self.num_queries, self.out_size
        scores = self.scores.mean()
        kth = scores.topk(k=min(q, self.test_topk_per_image))[0][-1]
        thr = kth if bool(kth > self.object_mask_threshold) else self.object_mask_threshold
        kept = torch.nonzero(scores >= thr).flatten()
        k = kept.numel()
        frames = [self._window[i] for i in range(count)]
        seg_of_kept = np.zeros(k, dtype=np.int32)
        new_ids: list[tuple[int, int]] = []
        kept_scores = scores[:0]
        winners: list[torch.Tensor] = []  # [H, W] kept slot of each segment pixel, -1 elsewhere
        committed = (self._win_area.clone(), self._fg_area.clone(), self._seg_area.clone())
        if k:
            # Same expressions as plan_video_panoptic, so full look-ahead gives the same values.
            quality = self._above[kept] / self._nonneg[kept].clamp(min=1)
            kept_scores = scores[kept] + 0.5 * quality
            totals = [c[kept] for c in committed]  # A, O, S: emitted frames + window frames
            for i, pend in enumerate(self._window):
                ids, win_fg, fg_count = _assign(pend.logits[kept].unsqueeze(1), kept_scores, self.out_size,
                                                self.mask_binary_threshold)
                ids, win_fg = ids[0], win_fg[0]  # [H, W]: one frame
                counts = (torch.bincount(ids.flatten() + 1, minlength=k + 1)[1:], fg_count,
                          torch.bincount(ids[win_fg], minlength=k))
                for total, c in zip(totals, counts):
                    total += c
                if i < count:  # its counts become final once it is emitted
                    winners.append(torch.where(win_fg, ids, -1))
                    for kept_counts, c in zip(committed, counts):
                        kept_counts[kept] += c
            next_id = self.next_id
            for j in range(k):
                a, o, s = int(totals[0][j]), int(totals[1][j]), int(totals[2][j])
                if a > 0 and o > 0 and s > 0 and a / o >= self.overlap_threshold:
                    qi = int(kept[j])
                    if self.ids[qi] == 0:
                        new_ids.append((qi, next_id))
                        next_id += 1
                    seg_of_kept[j] = self.ids[qi] or new_ids[-1][1]
        segments = {int(seg_of_kept[j]): (int(kept[j]), float(kept_scores[j]))
                    for j in range(k) if seg_of_kept[j]}
        out = []
        lut = np.concatenate([[-1], kept.numpy()]).astype(np.int16)
        for i, pend in enumerate(frames):
            if segments:
                id_map = _paint(winners[i], seg_of_kept)
            else:
                id_map = np.zeros((h, w), np.int32)
            win_q = None
            if self.keep_winners:
                win_q = lut[winners[i].numpy() + 1] if k else np.full((h, w), -1, np.int16)
            out.append(Emitted(pend.t, id_map, segments, self.frames_seen, pend.payload, win_q))

        # -- commit
        self._win_area, self._fg_area, self._seg_area = committed
        for qi, sid in new_ids:
            self.ids[qi] = sid
        self.next_id += len(new_ids)
        for _ in frames:
            self._window.popleft()
        self.frames_emitted += count
        return out


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
