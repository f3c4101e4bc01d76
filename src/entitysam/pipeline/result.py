"""What a segmentation gives back: frame and entity records, the disk-backed offline result, the
per-frame online results, and the output formats they are written in.

`SegmentationResult` keeps its [n, H, W] id maps in a file on disk (`IdMapFile`, uint8 per pixel
while ids fit), read back frame by frame: nothing held in RAM grows with the video length.
"""

from __future__ import annotations

import os
import shutil
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from .. import __version__
from ..argtypes import InvalidArgumentError, check_flags, check_path_arg
from ..errors import FrameIndexError, OutputError, Remedy, ResultFileGoneError
from ..io.sources import FrameSource
from ..io.result_files import write_result_files
from ..io.staging import StagedOutput
from ..io.paths import describe_os_error
from .progress import progress_bar

__all__ = ["FORMATS", "DEFAULT_FORMATS", "FrameInfo", "Entity", "IdMapFile", "SegmentationResult", "OnlineSegment",
           "OnlineFrame", "check_formats", "model_info", "input_field", "sample_aspect_ratio_field"]

FORMATS = ("panoptic", "entities", "overlay")
DEFAULT_FORMATS = FORMATS


@dataclass(frozen=True)
class FrameInfo:
    """One processed frame: t = position in the result (0 .. n-1), index = frame index in the
    source, name = stem of its output files, time = seconds from the start of the source."""

    t: int
    index: int
    name: str
    time: float


@dataclass(frozen=True)
class Entity:
    """One tracked entity. id: value in the id maps (1, 2, ... in creation order); score: the
    final video score (mean eIoU + 0.5 mask quality); query_index: the model query behind it;
    first_frame / last_frame: positions t where it is present; num_frames: frames where it is
    present; area: pixels summed over all frames."""

    id: int
    score: float
    query_index: int
    first_frame: int | None
    last_frame: int | None
    num_frames: int
    area: int


class IdMapFile:
    """Append-only [n, H, W] id maps on disk (uint8 while ids fit, else uint16)."""

    def __init__(self, path: Path, size: tuple[int, int], max_id: int):
        self.path = path
        self.size = size
        self.dtype = np.dtype(np.uint8 if max_id < 256 else np.uint16 if max_id < 65536 else np.int32)
        self.count = 0
        self._f = open(path, "wb")

    def append(self, id_map: np.ndarray) -> None:
        self._f.write(np.ascontiguousarray(id_map, dtype=self.dtype).tobytes())
        self.count += 1

    def finish(self) -> None:
        self._f.close()

    def read(self, t: int) -> np.ndarray:
        h, w = self.size
        frame_bytes = h * w * self.dtype.itemsize
        with open(self.path, "rb") as f:
            f.seek(t * frame_bytes)
            data = f.read(frame_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape(h, w).astype(np.int32)

    def __iter__(self) -> Iterator[np.ndarray]:
        h, w = self.size
        frame_bytes = h * w * self.dtype.itemsize
        with open(self.path, "rb") as f:
            for _ in range(self.count):
                yield np.frombuffer(f.read(frame_bytes), dtype=self.dtype).reshape(h, w).astype(np.int32)



class SegmentationResult:
    """The entities of one video. Iterating gives the per-frame id maps ([H, W] int32, 0 = no
    entity) in order; `items()` pairs them with their FrameInfo; `entities` lists the entities.

    The id maps live in a temporary folder on disk until `close()` (or the end of a `with`
    block, or garbage collection).
    """

    def __init__(self, *, name: str, source: FrameSource, size: tuple[int, int], fps: float,
                 frames: list[FrameInfo], entities: list[Entity], scores: torch.Tensor,
                 id_maps: IdMapFile, workdir: Path, model_info: dict[str, Any], timings: dict[str, float]):
        self.name = name
        self.source = source
        self.size = size
        self.fps = fps
        self.frames = frames
        self.entities = entities
        self.scores = scores
        self.model_info = model_info
        self.timings = timings
        self._maps = id_maps
        self._workdir = workdir
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(workdir), True)

    # -- access
    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[np.ndarray]:
        self._check_open()
        return self._read_maps()

    def _read_maps(self) -> Iterator[np.ndarray]:
        self._check_open()  # again at the first frame: an iterator taken in the `with` block, read after it
        yield from self._maps

    def __getitem__(self, t: int) -> np.ndarray:
        self._check_open()
        n = len(self.frames)
        # A str, float or slice would fail deep inside (bare TypeError); bool is no frame index.
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise InvalidArgumentError(f"a frame index must be an integer, got {t!r} ({type(t).__name__})")
        t = int(t)
        if t < 0:
            t += n
        if not 0 <= t < n:
            raise FrameIndexError(f"frame {t} out of range (0 .. {n - 1})")
        return self._maps.read(t)

    def items(self) -> Iterator[tuple[FrameInfo, np.ndarray]]:
        self._check_open()
        return zip(self.frames, self._read_maps())

    def masks(self, entity_id: int) -> Iterator[tuple[FrameInfo, np.ndarray]]:
        """(frame, [H, W] bool mask) for every frame, for one entity of :attr:`entities`."""
        # Checked now, not at the first frame: any other value (a string, an id no entity has)
        # would give all-empty masks without a word.
        ids = [e.id for e in self.entities]
        if isinstance(entity_id, (bool, np.bool_)) or not isinstance(entity_id, (int, np.integer)):
            raise InvalidArgumentError(f"an entity id is an integer, got {entity_id!r}")
        if entity_id not in ids:
            raise InvalidArgumentError(f"no entity {entity_id} in this result (its ids: "
                                       f"{', '.join(map(str, ids[:20])) + (' ...' if len(ids) > 20 else '') or 'none'})")
        self._check_open()
        return ((info, id_map == entity_id) for info, id_map in self.items())

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def _check_open(self) -> None:
        if not self._finalizer.alive:
            # An EntitySAMError as every API misuse (still a ValueError, as before).
            raise InvalidArgumentError("the result is closed (its id maps were deleted): use it inside its "
                                       "`with` block, before close()")
        if not self._maps.path.is_file():  # deleted under it (a cleaner of the temporary folder)
            raise ResultFileGoneError(f"the id maps of {self.name} ({self._maps.path}) are gone from disk: their "
                                      "temporary folder was deleted since the video was segmented; segment it again",
                                      Remedy("work_dir", metavar="DIR", purpose="to keep them in a folder nothing cleans"))

    def close(self) -> None:
        """Delete the on-disk id maps."""
        self._finalizer()

    def __enter__(self) -> "SegmentationResult":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"SegmentationResult({self.name!r}, {len(self.frames)} frames {self.size[1]}x{self.size[0]}, "
                f"{len(self.entities)} entities)")

    # -- saving
    def manifest(self) -> dict[str, Any]:
        return {
            "format": "entitysam-segment",
            "format_version": 1,
            "entitysam_version": __version__,
            "video": self.name,
            "input": input_field(self.source),
            "selection": asdict(self.source.selection),
            "num_frames": len(self.frames),
            "size": list(self.size),
            "sample_aspect_ratio": sample_aspect_ratio_field(self.source),
            "fps": self.fps,
            "entities": len(self.entities),
            "model": self.model_info,
            "seconds": {k: round(v, 3) for k, v in self.timings.items()},
        }

    def write_into(self, directory: str | os.PathLike, formats: Sequence[str] = DEFAULT_FORMATS,
                   labels: bool = False, progress: bool = False) -> list[str]:
        """Write the chosen formats into an existing folder (not atomically; `save` is).
        Returns the names of the files / folders written."""
        self._check_open()
        formats = check_formats(formats)
        check_flags(labels=labels, progress=progress)
        directory = check_path_arg(directory, "directory")  # None: not a bare TypeError; "": not the current folder
        if directory.exists() and not directory.is_dir():
            raise OutputError(f"{directory} exists and is not a folder: write_into writes into a folder")
        # A missing one made the overlay fail with a bare FileNotFoundError naming no file, after the
        # PNGs were written, while panoptic and entities alone created it, and any folders above it.
        if not directory.is_dir():
            raise OutputError(f"{directory} does not exist: write_into writes into an existing folder (create it "
                              "first, or use save(), which creates the result folder)")
        t0 = time.perf_counter()
        bar = progress_bar(progress and bool(formats), len(self.frames), f"{self.name} (writing)")
        try:
            written = write_result_files(
                directory, formats, name=self.name, fps=self.fps, frames=self.frames, id_maps=self._maps,
                entities=[{"id": e.id, "score": e.score, "query_index": e.query_index} for e in self.entities],
                images=self.source if "overlay" in formats else None, labels=labels, source_label=self.source.label,
                on_frame=None if bar is None else (lambda: bar.update(1)),
                sample_aspect_ratio=self.source.sample_aspect_ratio)
        finally:
            if bar is not None:
                bar.close()
        self.timings["write"] = time.perf_counter() - t0
        return written

    def save(self, directory: str | os.PathLike, formats: Sequence[str] = DEFAULT_FORMATS, *, labels: bool = False,
             overwrite: bool = False, progress: bool = False, wait_lock: bool = False) -> Path:
        """Write the chosen formats to `directory` atomically: into a hidden temporary folder
        beside it, which is renamed into place after `manifest.json` is written. Refuses an
        existing folder unless `overwrite`, and even then one entitysam did not write or that
        is, contains or lies inside the input. Another process writing the same folder makes it
        fail (OutputLockedError), or wait with `wait_lock`. Returns the folder."""
        formats = check_formats(formats)  # before creating anything
        check_flags(labels=labels, overwrite=overwrite, progress=progress, wait_lock=wait_lock)
        directory = check_path_arg(directory, "directory")
        self._check_open()  # a closed result must not leave a staging folder behind
        inputs = [self.source.path] if self.source.path is not None else []
        try:
            with StagedOutput(directory, overwrite=overwrite, inputs=inputs, wait_lock=wait_lock) as staged:
                files = self.write_into(staged.path, formats, labels=labels, progress=progress)
                return staged.commit({**self.manifest(), "files": files})
        except OSError as err:  # (named after the staging folder is gone: its files by their final names)
            raise OutputError(describe_os_error(err, str(directory))) from None


def input_field(source: FrameSource) -> str | None:
    """The manifests' ``input``: a live source's URL (its password masked), an input file or
    folder by its absolute path, None for frames in memory. The path as typed was relative to the
    folder the run was started in: a result viewed or exported from any other folder lost its
    input frames (grey background), or was shown over the frames of another input of that name."""
    if source.kind == "live":
        return source.label
    # absolute(), not abspath(): abspath drops "link/.." as text, where the system goes to the
    # parent of the link's target (the frames read were another folder's than the one recorded)
    return str(Path(source.path).absolute()) if source.path is not None else None


def sample_aspect_ratio_field(source: FrameSource) -> list[int]:
    """The manifests' ``sample_aspect_ratio``: [width, height] of a pixel of the frames (and of
    the id maps), [1, 1] but for anamorphic video; a viewer shows a frame W x H as W * width /
    height x H, as players do."""
    sar = source.sample_aspect_ratio
    return [sar.numerator, sar.denominator]


def check_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    """The output formats of a --save list (a string) or of a sequence of names, as a tuple.

    One rule: a *string* is what a user types: it must name something (``"panoptic,overlay"``,
    ``"all"``, or ``"none"`` on purpose for only manifest.json); an empty one (``--save ""``) is
    refused, a mistake must not give a "complete" result without files. A *sequence* holds the
    formats themselves: an empty one (``()``, what ``"none"`` gives) writes only manifest.json,
    so ``check_formats(check_formats(x)) == check_formats(x)``."""
    if isinstance(formats, str):
        names = [f.strip() for f in formats.split(",") if f.strip()]
        if not names:
            raise InvalidArgumentError(f"no output format given: choose from {', '.join(FORMATS)}, all, or none "
                                       "(only manifest.json)")
        formats = names
    elif isinstance(formats, Iterable):
        formats = list(formats)
    else:
        raise InvalidArgumentError(f"formats must be a comma-separated string or a list of names, got {formats!r}")
    out = []
    for f in formats:
        if not isinstance(f, str):
            raise InvalidArgumentError(f"unknown output format {f!r}: choose from {', '.join(FORMATS)}, all, none")
        f = f.strip()
        if f == "all":
            out.extend(FORMATS)
        elif f == "none":
            continue
        elif f in FORMATS:
            out.append(f)
        else:
            raise InvalidArgumentError(f"unknown output format {f!r}: choose from {', '.join(FORMATS)}, all, none")
    return tuple(dict.fromkeys(out))



@dataclass(frozen=True)
class OnlineSegment:
    """One entity in one online frame. score: its running score when the frame was emitted
    (mean eIoU so far + 0.5 mask quality so far); bbox: [x, y, w, h] (COCO, w = columns)."""

    id: int
    query_index: int
    score: float
    area: int
    bbox: tuple[int, int, int, int]


@dataclass
class OnlineFrame:
    """One result of :func:`stream`.

    frame: FrameInfo (t = position among processed frames, index = frame index in the source).
    id_map: [H, W] int32, 0 = no entity. segments: the entities present, in increasing id.
    image: the [H, W, 3] uint8 frame (None with ``keep_images=False``).
    dropped: source frames dropped just before this one (live sources falling behind).
    lookahead: frames processed after this one before it was emitted (= delay, less at the end).
    model_seconds: model time of this frame (preprocessing and step; frame 0 includes the three
    warm-up steps); merge_seconds: online merge time spent emitting it; latency_seconds: from the
    frame being read from the source to this result (includes the look-ahead wait).
    """

    frame: FrameInfo
    id_map: np.ndarray
    segments: list[OnlineSegment]
    image: np.ndarray | None
    dropped: int
    lookahead: int
    model_seconds: float
    merge_seconds: float
    latency_seconds: float

    @property
    def t(self) -> int:
        return self.frame.t




def model_info(model: torch.nn.Module, compute_dtype: torch.dtype, exact: bool = False) -> dict[str, Any]:
    """The "model" record of a manifest: configuration, dtype, device, exact mode, checkpoint."""
    info = {"config": model.cfg.name, "dtype": str(compute_dtype).replace("torch.", ""),
            "device": str(next(model.parameters()).device)}
    if exact:
        info["exact"] = True
    checkpoint = getattr(model, "checkpoint_path", None)  # None for a model not loaded from a file
    if checkpoint:
        info["checkpoint"] = str(checkpoint)
    return info
