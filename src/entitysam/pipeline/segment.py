"""Offline segmentation: `segment(model, video)` tracks every entity of a whole video, merges the
tracks at the video level and returns a disk-backed `SegmentationResult`.

    with segment(model, "clip.mp4", stride=2) as result:
        result.save("out/clip")

Frames are decoded one at a time; the tracker keeps only the memories that can still be
attended; the low-res logits that the video-level merge needs are kept on disk.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from ..inference.precision import check_exact, check_model, memory_dtype_for, precision_plan, resolve_dtype
from ..argtypes import InvalidArgumentError, check_flags, check_fps, check_path_arg
from ..errors import OutputError, Remedy
from ..modeling.entitysam import EntitySAM
from .prefetch import read_ahead
from ..inference.preprocess import preprocess_frame
from ..inference.video import segment_video
from ..io.sources import (DEFAULT_MAX_PIXELS, Frame, FrameFolderSource, FrameSelection, FrameSource, input_problem,
                          is_live_input, open_source)
from ..io.entities import EntityStats
from ..io.logits import logits_file, remove_failed_logits, save_logits_npz
from ..io.paths import describe_os_error, safe_name
from .progress import progress_bar
from .result import Entity, FrameInfo, IdMapFile, SegmentationResult, model_info

__all__ = ["segment", "open_video"]


def open_video(video: Any, selection: FrameSelection, fps: Any, name: str | None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> FrameSource:
    """open_source for segment() and stream(), after checks of what callers get wrong: a missing video, a bad
    frame rate, and a list of frame paths (read as a folder of frames holding exactly those,
    in the given order)."""
    if fps is not None:
        fps = check_fps(fps, "fps")
    # The name is a result's folder name in batches and exports: one safe path component, as the
    # command line derives it (a name like "../x" would make the result unreadable by `export`).
    if name is not None and (not isinstance(name, str) or safe_name(name) != name):
        hint = f" (e.g. {safe_name(name)!r})" if isinstance(name, str) else ""
        raise InvalidArgumentError(f"name must be a non-empty string usable as one folder name: no '/', '\\', "
                                   f"surrounding spaces, control characters or leading '.', got {name!r}{hint}")
    if video is None:
        raise InvalidArgumentError("no video given: pass a path (video, frame folder or image), an [n, H, W, 3] "
                                   "uint8 array, a list of frames or of frame paths, or a FrameSource")
    # Anything else would reach pathlib and fail there with a bare TypeError (a tensor, a generator,
    # bytes, a number), or, for "", silently read the current folder.
    if isinstance(video, torch.Tensor):
        raise InvalidArgumentError(f"frames given as a torch tensor (shape {tuple(video.shape)}): pass a numpy "
                                   "[n, H, W, 3] uint8 array instead, e.g. tensor.cpu().numpy()")
    if not isinstance(video, (str, os.PathLike, np.ndarray, Sequence, FrameSource)) or isinstance(video, bytes):
        raise InvalidArgumentError(f"cannot read a video from a {type(video).__name__}: pass a path (video, frame "
                                   "folder or image), an [n, H, W, 3] uint8 array, a list of frames or of frame "
                                   "paths (not a generator: frames are read more than once), or a FrameSource")
    if isinstance(video, str) and not is_live_input(video):
        check_path_arg(video, "video")
    if isinstance(video, (list, tuple)) and video and all(isinstance(v, (str, os.PathLike)) for v in video):
        files = [Path(v) for v in video]
        missing = [str(f) for f in files if not f.exists() and not f.is_symlink()]
        if missing:
            raise InvalidArgumentError(f"{len(missing)} frame file(s) not found: {', '.join(missing[:5])}"
                                       + (" ..." if len(missing) > 5 else ""))
        # A folder or a named pipe was said to be "not found" (it is there: it is no frame file).
        for f in files:
            problem = input_problem(f, "frame") or (f"frame {f} is a folder, not an image file" if f.is_dir() else None)
            if problem:
                raise InvalidArgumentError(problem)
        folder = files[0].parent
        return FrameFolderSource(folder, selection, fps, files=files, name=name or Path(os.path.abspath(folder)).name,
                                 max_pixels=max_pixels)
    if isinstance(video, (list, tuple)) and any(isinstance(v, (str, os.PathLike)) for v in video):
        raise InvalidArgumentError("a list of frames must hold only arrays / images or only file paths")
    if isinstance(video, np.ndarray) and video.ndim == 4 and 0 in video.shape[1:3]:
        raise InvalidArgumentError(f"frames array has an empty frame size: shape {video.shape} (expected "
                                   "[n, H, W, 3] with H, W >= 1)")
    return open_source(video, selection, fps=fps, name=name, max_pixels=max_pixels)


def segment(model: EntitySAM, video: Any, *, start: int | float | str | None = None,
            end: int | float | str | None = None, stride: int = 1, max_frames: int | None = None,
            fps: float | None = None, name: str | None = None, dtype: str | torch.dtype = "auto",
            logits_dtype: str = "float32", work_dir: str | os.PathLike | None = None,
            save_logits: str | os.PathLike | None = None, progress: bool = False,
            on_frame: Callable[[int], None] | None = None, exact: bool = False,
            batched: bool | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
            overwrite_logits: bool = True) -> SegmentationResult:
    """Segment and track every entity of `video`.

    video: a video file, a folder of frames, an image, a [n, H, W, 3] uint8 array or a list of
    frames, or a FrameSource. start / end: frame index (int) or seconds (float or "2.5s");
    end is exclusive. stride, max_frames: see FrameSelection. fps: frame rate of a folder of
    frames or of arrays (default 25; used for seconds and the overlay).
    dtype: "auto" (bfloat16 autocast on CUDA, float16 before Ampere, float32 elsewhere), "float32", "bfloat16",
    "float16" (autocast in that dtype). logits_dtype: "float32" (exact) or "float16" (half the
    temporary disk space, tiny differences possible). work_dir: folder for temporary files
    (default: the system temp folder). save_logits: write the low-res logits and scores to this
    .npz (overwrite_logits=False: never replace an existing file, even one that appears while this
    runs: OutputError; removed again if the run fails after writing it). progress: show a progress bar (stderr). on_frame: called with t after each frame.
    exact: compute in the official order of floating-point operations (float32 only; about the
    official speed; the default runs at 1.6x it on ViT-S, with outputs that differ from the official ones by
    rounding); for bit-for-bit comparisons with the official implementation.
    batched: all queries at once, the device path (None: on every device but the CPU, which
    runs one query at a time; see README "GPU").
    max_pixels: largest frame (width x height) decoded (default 50 MP; None: no limit); larger
    frames are refused from their header, before decoding (frames in memory too).
    """
    device = check_model(model)
    compute_dtype = resolve_dtype(dtype, device)
    check_exact(exact, compute_dtype)
    # Checked before any work: a wrong type would fail deep inside (exact in the attention call,
    # on_frame after the first frame, work_dir in tempfile) with a bare TypeError or OSError.
    check_flags(exact=exact, progress=progress, overwrite_logits=overwrite_logits)
    if batched is not None:
        check_flags(batched=batched)
    if on_frame is not None and not callable(on_frame):
        raise InvalidArgumentError(f"on_frame must be a function of the frame index, got {on_frame!r}")
    if work_dir is not None and not check_path_arg(work_dir, "work_dir").is_dir():
        raise InvalidArgumentError(f"work_dir {work_dir} is not an existing folder")
    if save_logits is not None:
        check_path_arg(save_logits, "save_logits")
    if logits_dtype not in ("float32", "float16"):
        raise InvalidArgumentError(f"logits_dtype must be float32 or float16, got {logits_dtype!r}")
    if save_logits is not None and not logits_file(save_logits).parent.is_dir():  # fail before the work
        raise OutputError(f"cannot write {logits_file(save_logits)}: the folder {logits_file(save_logits).parent} "
                          "does not exist")
    selection = FrameSelection(start, end, stride, max_frames)
    source = open_video(video, selection, fps, name, max_pixels)

    workdir = None
    logits_written: list[tuple[Path, os.stat_result]] = []
    try:
        workdir = Path(tempfile.mkdtemp(prefix=".entitysam-work-", dir=work_dir))
        return _segment(model, source, compute_dtype, np.dtype(logits_dtype), workdir, save_logits, progress,
                        on_frame, exact, batched, overwrite_logits, logits_written)
    except BaseException as err:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        remove_failed_logits(logits_written)  # (written before the merge, which can still fail)
        if isinstance(err, OSError):  # sources and the logits file raise their own errors: the temporary files
            raise temp_files_error(err, source.name, work_dir, logits_dtype) from None
        raise


def temp_files_error(err: OSError, name: str, work_dir: Any, logits_dtype: str) -> OutputError:
    """The error of a failed write of a run's temporary files (its logits and id maps, as large
    as the video is long): where they were (a full /tmp is not the result's disk) and what
    makes them fit."""
    where = work_dir if work_dir is not None else (tempfile.tempdir or "the system temporary folder")
    err.filename = None  # a file deep inside the temporary folder, removed now: the folder is named instead
    remedies = [Remedy("work_dir", metavar="DIR", purpose="to keep them on a disk with more space")] \
        if work_dir is None else []
    if logits_dtype != "float16":
        remedies.append(Remedy("logits_dtype", "float16", "to halve the space the temporary logits take"))
    return OutputError(describe_os_error(err, f"the temporary files of {name} in {where}"), *remedies)


def _segment(model: EntitySAM, source: FrameSource, compute_dtype: torch.dtype, logits_dtype: np.dtype,
             workdir: Path, save_logits, progress: bool, on_frame, exact: bool = False,
             batched: bool | None = None, overwrite_logits: bool = True,
             logits_written: list | None = None) -> SegmentationResult:
    frames_iter = iter(source)
    first = next(frames_iter)  # raises SourceError for an empty selection
    size = first.size
    image_size = model.cfg.image_size
    infos: list[FrameInfo] = []

    device = next(model.parameters()).device
    pin = device.type == "cuda"

    def inputs() -> Iterator[tuple[int, torch.Tensor]]:
        for frame in chain_first(first, frames_iter):
            t = len(infos)
            infos.append(FrameInfo(t, frame.index, frame.name, float(frame.time)))
            image = preprocess_frame(frame.image, image_size)
            yield t, image.pin_memory() if pin else image

    id_maps = IdMapFile(workdir / "id_maps.bin", size, model.cfg.num_queries)
    stats = EntityStats()

    def frames_out(t: int, id_map: np.ndarray) -> None:
        id_maps.append(id_map)
        stats.add_id_map(t, id_map)

    bar = progress_bar(progress, source.count_hint(), source.name)
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
            replaced = os.path.lexists(save_logits)  # (an earlier run's FILE, replaced: kept if this run fails)
            path = save_logits_npz(save_logits, store, scores.cpu().numpy(), overwrite=overwrite_logits,
                                   source_frame=np.array([f.index for f in infos], dtype=np.int64),
                                   frame_name=np.array([f.name for f in infos]))
            if logits_written is not None and not replaced:
                logits_written.append((path, os.lstat(path)))

    autocast, attention_dtype = precision_plan(model, compute_dtype, batched, exact)
    # Off the CPU, frames are decoded and preprocessed on a thread while the device computes.
    frames = inputs() if device.type == "cpu" else read_ahead(inputs(), depth=2)
    t0 = time.perf_counter()
    try:
        with autocast:
            result = segment_video(model, frames, size, logits_dtype=logits_dtype, on_step=on_step,
                                   work_dir=workdir, frames_out=frames_out, on_logits=on_logits,
                                   memory_dtype=memory_dtype_for(compute_dtype),
                                   attention_dtype=attention_dtype, exact=exact, batched=batched,
                                   frame_chunk=1)  # one frame at a time: lowest, flat peak memory
    finally:
        id_maps.finish()
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    entities = []
    for sid, q, score in zip(result.panoptic.segment_ids, result.panoptic.query_index, result.panoptic.scores):
        entities.append(Entity(int(sid), float(score), int(q), **stats.record(int(sid))))
    fps = source.fps / source.selection.stride
    return SegmentationResult(name=source.name, source=source, size=size, fps=fps, frames=infos, entities=entities,
                              scores=result.scores, id_maps=id_maps, workdir=workdir,
                              model_info=model_info(model, compute_dtype, exact), timings={"segment": elapsed})


def chain_first(first: Frame, rest: Iterable[Frame]) -> Iterator[Frame]:
    """`first`, then the rest of the frames (the first one is read ahead for the size)."""
    yield first
    yield from rest
