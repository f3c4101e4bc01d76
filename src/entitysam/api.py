"""The Python API: load a model, segment a video, iterate or save the result.

    from entitysam import EntitySAM

    model = EntitySAM.from_pretrained("vit-s")            # or EntitySAM.from_checkpoint(path)
    with model.segment("clip.mp4", stride=2) as result:   # any video, frame folder or image
        for entity in result.entities:
            print(entity.id, entity.score, entity.first_frame, entity.last_frame)
        for frame, id_map in result.items():              # [H, W] int32, 0 = no entity
            ...
        result.save("out/clip", formats=("panoptic", "entities", "overlay"))

    with model.stream("rtsp://camera/live", delay=4, output="out/cam") as stream:   # online mode
        for r in stream:                                  # one OnlineFrame per processed frame
            print(r.frame.t, [(s.id, s.score) for s in r.segments], stream.dropped)

Memory: frames are decoded one at a time; the tracker keeps only the memories that can still
be attended; the low-res logits that the video-level merge needs are kept on disk; the final id
maps are streamed to a compact file on disk (uint8 per pixel), which the result reads back
frame by frame. Nothing held in RAM grows with the video length except a few numbers per frame.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
import weakref
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from . import __version__
from .argtypes import InvalidArgumentError, check_positive_float
from .checkpoints import load_entitysam
from .errors import EntitySAMError, OutputError
from .hub import resolve_checkpoint
from .modeling.entitysam import EntitySAM
from .video.prefetch import read_ahead
from .video.preprocess import preprocess_frame
from .video.segment import segment_video
from .io.sources import DEFAULT_MAX_PIXELS, Frame, FrameSelection, FrameSource, open_source
from .io.logits import logits_file, save_logits_npz
from .io.panoptic import frame_segments
from .io.result_files import write_result_files
from .io.paths import describe_os_error
from .io.staging import StagedOutput

__all__ = [
    "FORMATS",
    "DEFAULT_FORMATS",
    "FrameInfo",
    "Entity",
    "SegmentationResult",
    "OnlineSegment",
    "OnlineFrame",
    "OnlineStream",
    "stream",
    "from_pretrained",
    "from_checkpoint",
    "segment",
    "resolve_device",
    "resolve_dtype",
]

FORMATS = ("panoptic", "entities", "overlay")
DEFAULT_FORMATS = FORMATS
DTYPES = ("auto", "float32", "bfloat16", "float16")


# ----------------------------------------------------------------------------- loading


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda if available, else mps if available, else cpu. Errors if unavailable."""
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InvalidArgumentError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EntitySAMError(f"--device {name}: CUDA is not available (torch {torch.__version__}, "
                             f"{'built without CUDA' if torch.version.cuda is None else 'no GPU visible'})")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise EntitySAMError(f"--device {name}: MPS (Apple GPU) is not available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 autocast on CUDA (as the official evaluation), float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise InvalidArgumentError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        return dtype
    if dtype is not None and not isinstance(dtype, str):
        raise InvalidArgumentError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    name = "auto" if dtype is None else str(dtype).replace("torch.", "")
    if name not in DTYPES:
        raise InvalidArgumentError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _check_exact(exact: bool, compute_dtype: torch.dtype) -> None:
    if exact and compute_dtype != torch.float32:
        name = str(compute_dtype).replace("torch.", "")
        raise EntitySAMError(f"exact mode computes in float32 (the official CPU arithmetic), not {name}: "
                             "use --dtype float32")


def precision_plan(model: EntitySAM, compute_dtype: torch.dtype, batched: bool | None = None,
                   exact: bool = False):
    """How a compute dtype is applied: (context to run the video in, memory-attention dtype).

    float32: plain; on CUDA with TF32 matmuls and convolutions unless `exact`, as the official
    evaluation runs. bfloat16 on the per-query CPU path: only the memory attention in bfloat16
    (autocast over the whole model moves 10-15% of mask pixels on this kind of CPU; the memory
    attention alone, ~85% of the arithmetic, keeps >99% of them; see README "Precision and
    speed"). Otherwise (the device path, as the official CUDA evaluation; float16): autocast
    over everything. batched: the tracker's path (None: batched on every device but the CPU).
    """
    device_type = next(model.parameters()).device.type
    batched = device_type != "cpu" if batched is None else batched
    if compute_dtype == torch.float32:
        return (tf32_matmuls() if device_type == "cuda" and not exact else contextlib.nullcontext()), None
    if compute_dtype == torch.bfloat16 and device_type == "cpu" and not batched:
        return contextlib.nullcontext(), torch.bfloat16
    return autocast_for(device_type, compute_dtype), None


def autocast_for(device_type: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """The autocast region of the low-precision plans (tests stand CUDA's rules in here)."""
    return torch.autocast(device_type=device_type, dtype=dtype)


@contextlib.contextmanager
def tf32_matmuls():
    """TF32 for float32 matmuls and convolutions on CUDA (the official evaluation switches it on
    for compute capability >= 8), restored afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def from_checkpoint(path: str | os.PathLike, *, config: str | None = None,
                    device: str | torch.device = "cpu", allow_pickle: bool = False) -> EntitySAM:
    """Load a checkpoint file (`EntitySAM.from_checkpoint(path)`); the configuration is
    inferred from its keys unless given (`vit-s`, `vit-l`, `tiny`, `demo`). Raises
    CheckpointMismatchError for a checkpoint of the wrong kind or configuration, or that cannot
    be read. Never runs code from the file: one holding other pickled objects than tensors and
    plain data raises UnsafeCheckpointError, unless allow_pickle=True (unpickles it in full:
    runs whatever it contains; only for files you trust; warns)."""
    _check_checkpoint_path(path)
    _check_config_name(config)
    model = load_entitysam(path, config=config, device=resolve_device(device), allow_pickle=allow_pickle)
    model.checkpoint_path = str(path)
    return model


def from_pretrained(name: str = "vit-s", *, device: str | torch.device = "cpu",
                    cache_dir: str | os.PathLike | None = None, download: bool = True) -> EntitySAM:
    """A published model (`EntitySAM.from_pretrained("vit-s")`, or "vit-l"), from the local
    folder, the Hugging Face cache or the hub (see :mod:`entitysam.hub`), or the bundled
    "demo" model (inside the package, no network; synthetic scenes only). Raises
    ModelNotAvailableError with download instructions when it cannot be had."""
    if not isinstance(name, str):
        raise InvalidArgumentError(f"the model name must be a string (vit-s, vit-l or demo), got {name!r}")
    resolve_device(device)  # an unusable device is refused before any download
    path = resolve_checkpoint(name, download=download, cache_dir=cache_dir)
    model = load_entitysam(path, config=name, device=resolve_device(device))
    model.checkpoint_path = str(path)
    return model


def _check_checkpoint_path(path: Any) -> None:
    if isinstance(path, (str, os.PathLike)):
        if not os.fspath(path):
            raise InvalidArgumentError("the checkpoint path is empty")
        return
    if isinstance(path, dict):  # an already loaded state dict (load_entitysam takes one)
        return
    raise InvalidArgumentError(f"the checkpoint must be a file path (str or os.PathLike), got {path!r}")


def _check_config_name(config: Any) -> None:
    from .config import CONFIGS  # noqa: PLC0415

    if config is not None and config not in CONFIGS:
        raise InvalidArgumentError(f"unknown model configuration {config!r}: known {', '.join(CONFIGS)}")


def _open_video(video: Any, selection: FrameSelection, fps: Any, name: str | None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> FrameSource:
    """open_source for the API, after checks of what callers get wrong: a missing video, a bad
    frame rate, and a list of frame paths (read as a folder of frames holding exactly those,
    in the given order)."""
    from .io.sources import FrameFolderSource  # noqa: PLC0415

    if fps is not None:
        fps = check_positive_float(fps, "fps")
    if video is None:
        raise InvalidArgumentError("no video given: pass a path (video, frame folder or image), an [n, H, W, 3] "
                                   "uint8 array, a list of frames or of frame paths, or a FrameSource")
    if isinstance(video, (list, tuple)) and video and all(isinstance(v, (str, os.PathLike)) for v in video):
        files = [Path(v) for v in video]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise InvalidArgumentError(f"{len(missing)} frame file(s) not found: {', '.join(missing[:5])}"
                                       + (" ..." if len(missing) > 5 else ""))
        folder = files[0].parent
        return FrameFolderSource(folder, selection, fps, files=files, name=name or folder.resolve().name,
                                 max_pixels=max_pixels)
    if isinstance(video, (list, tuple)) and any(isinstance(v, (str, os.PathLike)) for v in video):
        raise InvalidArgumentError("a list of frames must hold only arrays / images or only file paths")
    if isinstance(video, np.ndarray) and video.ndim == 4 and 0 in video.shape[1:3]:
        raise InvalidArgumentError(f"frames array has an empty frame size: shape {video.shape} (expected "
                                   "[n, H, W, 3] with H, W >= 1)")
    return open_source(video, selection, fps=fps, name=name, max_pixels=max_pixels)


# ----------------------------------------------------------------------------- result


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


class _IdMapFile:
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


def _progress_bar(enabled: bool, total: int | None, desc: str, unit: str = "frame"):
    if not enabled:
        return None
    try:
        from tqdm import tqdm  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr, leave=True)


class SegmentationResult:
    """The entities of one video. Iterating gives the per-frame id maps ([H, W] int32, 0 = no
    entity) in order; `items()` pairs them with their FrameInfo; `entities` lists the entities.

    The id maps live in a temporary folder on disk until `close()` (or the end of a `with`
    block, or garbage collection).
    """

    def __init__(self, *, name: str, source: FrameSource, size: tuple[int, int], fps: float,
                 frames: list[FrameInfo], entities: list[Entity], scores: torch.Tensor,
                 id_maps: _IdMapFile, workdir: Path, model_info: dict[str, Any], timings: dict[str, float]):
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
        return iter(self._maps)

    def __getitem__(self, t: int) -> np.ndarray:
        self._check_open()
        n = len(self.frames)
        if t < 0:
            t += n
        if not 0 <= t < n:
            raise IndexError(f"frame {t} out of range (0 .. {n - 1})")
        return self._maps.read(t)

    def items(self) -> Iterator[tuple[FrameInfo, np.ndarray]]:
        self._check_open()
        return zip(self.frames, self._maps)

    def masks(self, entity_id: int) -> Iterator[tuple[FrameInfo, np.ndarray]]:
        """(frame, [H, W] bool mask) for every frame, for one entity."""
        for info, id_map in self.items():
            yield info, id_map == entity_id

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def _check_open(self) -> None:
        if not self._finalizer.alive:
            raise ValueError("the result is closed (its id maps were deleted)")

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
            "input": str(self.source.path) if self.source.path is not None else None,
            "selection": asdict(self.source.selection),
            "num_frames": len(self.frames),
            "size": list(self.size),
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
        formats = _check_formats(formats)
        t0 = time.perf_counter()
        bar = _progress_bar(progress and bool(formats), len(self.frames), f"{self.name} (writing)")
        written = write_result_files(
            directory, formats, name=self.name, fps=self.fps, frames=self.frames, id_maps=self._maps,
            entities=[{"id": e.id, "score": e.score, "query_index": e.query_index} for e in self.entities],
            images=self.source if "overlay" in formats else None, labels=labels, source_label=self.source.label,
            on_frame=None if bar is None else (lambda: bar.update(1)))
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
        formats = _check_formats(formats)  # before creating anything
        inputs = [self.source.path] if self.source.path is not None else []
        with StagedOutput(directory, overwrite=overwrite, inputs=inputs, wait_lock=wait_lock) as staged:
            try:
                files = self.write_into(staged.path, formats, labels=labels, progress=progress)
            except OSError as err:
                raise OutputError(describe_os_error(err, str(directory))) from None
            return staged.commit({**self.manifest(), "files": files})


def _check_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    """The output formats of a --save list or sequence. An empty list is refused (a mistake such
    as ``--save ""`` must not give a "complete" result without files); ``none`` says it on purpose."""
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    elif isinstance(formats, Iterable):
        formats = list(formats)
    else:
        raise InvalidArgumentError(f"formats must be a comma-separated string or a list of names, got {formats!r}")
    if not formats:
        raise InvalidArgumentError(f"no output format given: choose from {', '.join(FORMATS)}, all, or none "
                                   "(only manifest.json)")
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


# ----------------------------------------------------------------------------- segmenting


def segment(model: EntitySAM, video: Any, *, start: int | float | str | None = None,
            end: int | float | str | None = None, stride: int = 1, max_frames: int | None = None,
            fps: float | None = None, name: str | None = None, dtype: str | torch.dtype = "auto",
            logits_dtype: str = "float32", work_dir: str | os.PathLike | None = None,
            save_logits: str | os.PathLike | None = None, progress: bool = False,
            on_frame: Callable[[int], None] | None = None, exact: bool = False,
            batched: bool | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> SegmentationResult:
    """Segment and track every entity of `video`.

    video: a video file, a folder of frames, an image, a [n, H, W, 3] uint8 array or a list of
    frames, or a FrameSource. start / end: frame index (int) or seconds (float or "2.5s");
    end is exclusive. stride, max_frames: see FrameSelection. fps: frame rate of a folder of
    frames or of arrays (default 25; used for seconds and the overlay).
    dtype: "auto" (bfloat16 autocast on CUDA, float32 elsewhere), "float32", "bfloat16",
    "float16" (autocast in that dtype). logits_dtype: "float32" (exact) or "float16" (half the
    temporary disk space, tiny differences possible). work_dir: folder for temporary files
    (default: the system temp folder). save_logits: write the low-res logits and scores to this
    .npz. progress: show a progress bar (stderr). on_frame: called with t after each frame.
    exact: compute in the official order of floating-point operations (float32 only; about the
    official speed; the default runs at 1.6x it on ViT-S, with outputs that differ from the official ones by
    rounding); for bit-for-bit comparisons with the official implementation.
    batched: all queries at once, the device path (None: on every device but the CPU, which
    runs one query at a time; see README "GPU").
    max_pixels: largest frame (width x height) decoded (default 50 MP; None: no limit); larger
    frames are refused from their header, before decoding.
    """
    device = next(model.parameters()).device
    compute_dtype = resolve_dtype(dtype, device)
    _check_exact(exact, compute_dtype)
    if logits_dtype not in ("float32", "float16"):
        raise InvalidArgumentError(f"logits_dtype must be float32 or float16, got {logits_dtype!r}")
    if save_logits is not None and not logits_file(save_logits).parent.is_dir():  # fail before the work
        raise OutputError(f"cannot write {logits_file(save_logits)}: the folder {logits_file(save_logits).parent} "
                          "does not exist")
    selection = FrameSelection(start, end, stride, max_frames)
    source = _open_video(video, selection, fps, name, max_pixels)

    workdir = Path(tempfile.mkdtemp(prefix=".entitysam-work-", dir=work_dir))
    try:
        return _segment(model, source, compute_dtype, np.dtype(logits_dtype), workdir, save_logits, progress,
                        on_frame, exact, batched)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _segment(model: EntitySAM, source: FrameSource, compute_dtype: torch.dtype, logits_dtype: np.dtype,
             workdir: Path, save_logits, progress: bool, on_frame, exact: bool = False,
             batched: bool | None = None) -> SegmentationResult:
    frames_iter = iter(source)
    first = next(frames_iter)  # raises SourceError for an empty selection
    size = first.size
    image_size = model.cfg.image_size
    infos: list[FrameInfo] = []

    device = next(model.parameters()).device
    pin = device.type == "cuda"

    def inputs() -> Iterator[tuple[int, torch.Tensor]]:
        for frame in _chain(first, frames_iter):
            t = len(infos)
            infos.append(FrameInfo(t, frame.index, frame.name, float(frame.time)))
            image = preprocess_frame(frame.image, image_size)
            yield t, image.pin_memory() if pin else image

    id_maps = _IdMapFile(workdir / "id_maps.bin", size, model.cfg.num_queries)
    stats: dict[int, list[int]] = {}  # id -> [first, last, count, area]

    def frames_out(t: int, id_map: np.ndarray) -> None:
        id_maps.append(id_map)
        areas = np.bincount(id_map.ravel())
        for sid in np.flatnonzero(areas[1:]) + 1:
            st = stats.setdefault(int(sid), [t, t, 0, 0])
            st[1] = t
            st[2] += 1
            st[3] += int(areas[sid])

    bar = _progress_bar(progress, source.count_hint(), source.name)
    counter = [0]

    def on_step(step) -> None:
        if step.is_warmup:
            return
        counter[0] += 1
        if bar is not None:
            bar.update(1)
        if on_frame is not None:
            on_frame(step.frame_index)

    def on_logits(store, scores: torch.Tensor) -> None:
        if bar is not None:
            bar.set_postfix_str("merging", refresh=True)
        if save_logits is not None:
            save_logits_npz(save_logits, store, scores.cpu().numpy(),
                            source_frame=np.array([f.index for f in infos], dtype=np.int64),
                            frame_name=np.array([f.name for f in infos]))

    autocast, attention_dtype = precision_plan(model, compute_dtype, batched, exact)
    # Off the CPU, frames are decoded and preprocessed on a thread while the device computes.
    frames = inputs() if device.type == "cpu" else read_ahead(inputs(), depth=2)
    t0 = time.perf_counter()
    try:
        with autocast:
            result = segment_video(model, frames, size, logits_dtype=logits_dtype, on_step=on_step,
                                   work_dir=workdir, frames_out=frames_out, on_logits=on_logits,
                                   memory_dtype=torch.float16 if compute_dtype == torch.float16 else None,
                                   attention_dtype=attention_dtype, exact=exact, batched=batched,
                                   frame_chunk=1)  # one frame at a time: lowest, flat peak memory
    finally:
        id_maps.finish()
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    entities = []
    for sid, q, score in zip(result.panoptic.segment_ids, result.panoptic.query_index, result.panoptic.scores):
        first_t, last_t, count, area = stats.get(sid, [None, None, 0, 0])
        entities.append(Entity(int(sid), float(score), int(q), first_t, last_t, count, area))
    fps = source.fps / source.selection.stride
    return SegmentationResult(name=source.name, source=source, size=size, fps=fps, frames=infos, entities=entities,
                              scores=result.scores, id_maps=id_maps, workdir=workdir,
                              model_info=_model_info(model, compute_dtype, exact), timings={"segment": elapsed})


def _model_info(model: EntitySAM, compute_dtype: torch.dtype, exact: bool = False) -> dict[str, Any]:
    info = {"config": model.cfg.name, "dtype": str(compute_dtype).replace("torch.", ""),
            "device": str(next(model.parameters()).device)}
    if exact:
        info["exact"] = True
    checkpoint = getattr(model, "checkpoint_path", None)
    if checkpoint:
        info["checkpoint"] = str(checkpoint)
    return info


def _chain(first: Frame, rest: Iterable[Frame]) -> Iterator[Frame]:
    yield first
    yield from rest


# ----------------------------------------------------------------------------- online mode


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
        from .video.online import FrameReader  # noqa: PLC0415
        from .video.tracker import EntityTracker  # noqa: PLC0415

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
        self.emitted = 0
        self.status = "running"
        self.error: str | None = None
        self.manifest: dict[str, Any] | None = None
        self.seconds = {"model": 0.0, "merge": 0.0, "write": 0.0}
        self._latency_sum = 0.0
        self._latency_max = 0.0
        self._tracks: dict[int, list] = {}  # id -> [query, score, first, last, count, area]
        self._exact = exact
        self._tracker = EntityTracker(model, attention_dtype=precision_plan(model, compute_dtype, exact=exact)[1],
                                      exact=exact)
        if compute_dtype == torch.float16:
            self._tracker.bank.dtype = torch.float16  # autocast cannot mix a bfloat16 bank in
        self._merger = None  # created with the first frame (its size is the output size)
        self._ready: deque = deque()
        self._writer = None
        self._ended = False  # no more frames will be read (end of stream, stop, error)
        self._closed = False
        self._t0 = time.perf_counter()
        self._bar = _progress_bar(progress, source.count_hint(), source.name)
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
                    if self._merger is not None and not self._merger.finished:
                        # End of stream (or stop): the look-ahead window is emitted with what is known.
                        self._emit(self._merger.finish)
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
        if self._merger is None:
            from .video.online import OnlineMerger  # noqa: PLC0415

            self.size = frame.size
            self._merger = OnlineMerger(self.model.cfg.num_queries, self.size, self.delay,
                                        warmup_steps=self.model.cfg.num_warmup_copies)
        t = self.processed
        info = FrameInfo(t, frame.index, frame.name, float(frame.time))
        payload = [info, frame.image if self.keep_images else None, drops, 0.0, t_read]
        image = preprocess_frame(frame.image, self.model.cfg.image_size)
        steps = []
        with precision_plan(self.model, self.compute_dtype, self._tracker.batched, self._exact)[0]:  # fresh per frame
            for step in self._tracker.track([(t, image)]):
                steps.append(step)
        payload[3] = time.perf_counter() - t0
        self.seconds["model"] += payload[3]
        self.processed += 1
        for step in steps[:-1]:
            self._merger.push_step(step)
        self._emit(lambda: self._merger.push_step(steps[-1], payload))

    def _emit(self, produce) -> None:
        t0 = time.perf_counter()
        out = produce()
        elapsed = time.perf_counter() - t0
        self.seconds["merge"] += elapsed
        for em in out:
            self._ready.append((em, elapsed / len(out)))

    def _deliver(self, item) -> OnlineFrame:
        from .io.stream_files import OnlineWriter  # noqa: PLC0415
        from .video.online import deferred_sigint  # noqa: PLC0415

        em, merge_s = item
        info, image, drops, model_s, t_read = em.payload
        segs = []
        for seg in frame_segments(em.id_map, "coco"):
            q, score = em.segments[seg["id"]]
            segs.append(OnlineSegment(seg["id"], q, score, seg["area"], tuple(seg["bbox"])))
        latency = time.monotonic() - t_read
        result = OnlineFrame(info, em.id_map, segs, image, drops, em.frames_seen - info.t - 1, model_s, merge_s,
                             latency)
        if self.output is None:
            self._account(result)
            return result
        t0 = time.perf_counter()
        # A Ctrl-C here waits for the frame's files and its accounting (the manifest counts
        # must match what is on disk); it is raised right after.
        with deferred_sigint():
            if self._writer is None:
                self._writer = OnlineWriter(self.output, video=self.name, formats=self.formats, fps=self.fps,
                                            labels=self.labels, timestamps=self.live, overwrite=self.overwrite,
                                            manifest=self._base_manifest(), protect=self.protect)
            records = [{"id": s.id, "query_index": s.query_index, "score": round(s.score, 6), "area": s.area,
                        "bbox": list(s.bbox)} for s in segs]
            self._writer.add(info.t, info, em.id_map, records, image,
                             {"dropped": drops, "lookahead": result.lookahead, "latency": round(latency, 4)})
            self.seconds["write"] += time.perf_counter() - t0
            self._account(result)
        return result

    def _account(self, r: OnlineFrame) -> None:
        for seg in r.segments:
            tr = self._tracks.get(seg.id)
            if tr is None:
                tr = self._tracks[seg.id] = [seg.query_index, seg.score, r.t, r.t, 0, 0]
            tr[1], tr[3], tr[4], tr[5] = seg.score, r.t, tr[4] + 1, tr[5] + seg.area
        self.emitted += 1
        self._latency_sum += r.latency_seconds
        self._latency_max = max(self._latency_max, r.latency_seconds)
        if self._bar is not None:
            self._bar.update(1)
            if self.dropped:
                self._bar.set_postfix_str(f"dropped {self.dropped}", refresh=False)

    # -- state
    @property
    def frames_read(self) -> int:
        return self._reader.frames_read

    @property
    def dropped(self) -> int:
        return self._reader.dropped

    @property
    def entities(self) -> list[Entity]:
        """Entities seen so far (in the frames delivered), with their latest running score."""
        return [Entity(sid, float(tr[1]), int(tr[0]), tr[2], tr[3], tr[4], tr[5])
                for sid, tr in sorted(self._tracks.items())]

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
            "model": _model_info(self.model, self.compute_dtype, self._tracker.exact),
        }

    def summary(self) -> dict[str, Any]:
        """Counts and timings (what the final manifest records)."""
        return {
            "frames_read": self.frames_read,
            "frames_processed": self.processed,
            "frames_emitted": self.emitted,
            "dropped_frames": self.dropped,
            "entities": len(self._tracks),
            "tracks": [{"id": e.id, "query_index": e.query_index, "score": e.score, "first_frame": e.first_frame,
                        "last_frame": e.last_frame, "num_frames": e.num_frames, "area": e.area}
                       for e in self.entities],
            "seconds": {**{k: round(v, 3) for k, v in self.seconds.items()},
                        "total": round(time.perf_counter() - self._t0, 3)},
            "latency_seconds": {"mean": round(self._latency_sum / self.emitted, 4) if self.emitted else None,
                                "max": round(self._latency_max, 4)},
            **({"error": self.error} if self.error else {}),
        }

    def close(self) -> dict[str, Any] | None:
        """Stop reading, emit (and write) the frames already processed, finish the outputs.
        Returns the final manifest when there is an output folder with frames in it."""
        if self._closed:
            return self.manifest
        from .video.online import deferred_sigint  # noqa: PLC0415

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
        if self._bar is not None:
            self._bar.close()
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
    if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
        raise EntitySAMError(f"delay must be a non-negative integer (frames of look-ahead), got {delay!r}")
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise EntitySAMError(f"queue size must be a positive integer, got {queue_size!r}")
    fmts = _check_formats(formats)
    out = Path(output) if output is not None else None
    protect = tuple(Path(p) for p in protect) + ((Path(video),) if isinstance(video, (str, os.PathLike))
                                                 and not str(video).startswith(("rtsp:", "rtmp:", "http:", "https:"))
                                                 else ())
    if out is not None:
        StagedOutput.check_free(out, overwrite, inputs=protect)
    device = next(model.parameters()).device
    compute_dtype = resolve_dtype(dtype, device)
    _check_exact(exact, compute_dtype)
    selection = FrameSelection(start, end, stride, max_frames)
    source = _open_video(video, selection, fps, name, max_pixels)
    is_live = source.kind == "live" if live is None else bool(live)
    return OnlineStream(model, source, delay=delay, live=is_live, queue_size=queue_size,
                        compute_dtype=compute_dtype, output=out, formats=fmts, labels=labels, overwrite=overwrite,
                        keep_images=keep_images, progress=progress, exact=exact, protect=protect)
