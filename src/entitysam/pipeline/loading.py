"""The one model loader, and the public `EntitySAM`: the network of `entitysam.modeling` plus
its loaders and the two ways to run it.

    from entitysam import EntitySAM

    model = EntitySAM.from_pretrained("vit-s")            # or EntitySAM.from_checkpoint(path)
    with model.segment("clip.mp4", stride=2) as result:   # offline: entitysam.pipeline.segment
        result.save("out/clip")
    with model.stream("rtsp://camera/live", delay=4) as s:  # online: entitysam.pipeline.stream
        for r in s:
            ...

The training code builds the plain `entitysam.modeling.entitysam.EntitySAM` (no loaders, no
segment/stream); this subclass adds methods only, so both load the same state dicts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..inference.precision import resolve_device
from ..argtypes import InvalidArgumentError, check_flags, check_path_arg
from ..checkpoints import load_entitysam
from ..config import CONFIGS
from ..errors import (CheckpointMismatchError, CheckpointReadError, EntitySAMError, ModelLoadError,
                      UnsafeCheckpointError)
from ..hub import CHECKPOINT_FILES, local_checkpoint_path, resolve_checkpoint
from ..modeling import entitysam as modeling
from ..io.sources import DEFAULT_MAX_PIXELS
from . import segment as offline
from . import stream as online
from .result import DEFAULT_FORMATS, SegmentationResult
from .stream import OnlineStream

__all__ = ["EntitySAM", "from_checkpoint", "from_pretrained", "load_model", "check_checkpoint_path",
           "check_config_name"]


class EntitySAM(modeling.EntitySAM):
    """EntitySAM as users call it: `EntitySAM.from_pretrained(name)` / `from_checkpoint(path)`,
    then `model.segment(video)` (offline) or `model.stream(video)` (online).

    checkpoint_path: the file the weights were loaded from (None for a model built in memory);
    recorded in the manifests of its results.
    """

    checkpoint_path: str | None = None

    @classmethod
    def from_pretrained(cls, name: str = "vit-s", *, device: str | torch.device = "cpu",
                        cache_dir: str | os.PathLike | None = None, download: bool = True,
                        say: Callable[[str], None] | None = None) -> EntitySAM:
        """A published model ("vit-s" or "vit-l") or the bundled "demo" model: see :func:`from_pretrained`."""
        return from_pretrained(name, device=device, cache_dir=cache_dir, download=download, say=say)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, config: str | None = None,
                        device: str | torch.device = "cpu", allow_pickle: bool = False) -> EntitySAM:
        """A checkpoint file: see :func:`from_checkpoint`."""
        return from_checkpoint(path, config=config, device=device, allow_pickle=allow_pickle)

    def segment(self, video: Any, *, start: int | float | str | None = None, end: int | float | str | None = None,
                stride: int = 1, max_frames: int | None = None, fps: float | None = None, name: str | None = None,
                dtype: str | torch.dtype = "auto", logits_dtype: str = "float32",
                work_dir: str | os.PathLike | None = None, save_logits: str | os.PathLike | None = None,
                progress: bool = False, on_frame: Callable[[int], None] | None = None, exact: bool = False,
                batched: bool | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> SegmentationResult:
        """Segment and track every entity of `video` (offline: the whole video, then the
        video-level merge). The options are those of :func:`entitysam.pipeline.segment.segment`."""
        return offline.segment(self, video, start=start, end=end, stride=stride, max_frames=max_frames, fps=fps,
                               name=name, dtype=dtype, logits_dtype=logits_dtype, work_dir=work_dir,
                               save_logits=save_logits, progress=progress, on_frame=on_frame, exact=exact,
                               batched=batched, max_pixels=max_pixels)

    def stream(self, video: Any, *, delay: int = 0, start: int | float | str | None = None,
               end: int | float | str | None = None, stride: int = 1, max_frames: int | None = None,
               fps: float | None = None, name: str | None = None, dtype: str | torch.dtype = "auto",
               live: bool | None = None, queue_size: int = 4, output: str | os.PathLike | None = None,
               formats: Sequence[str] | str = DEFAULT_FORMATS, labels: bool = False, overwrite: bool = False,
               keep_images: bool = True, progress: bool = False, exact: bool = False,
               protect: Sequence[str | os.PathLike] = (),
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> OnlineStream:
        """Segment and track every entity of `video` online: one result per frame, after `delay`
        frames of look-ahead. The options are those of :func:`entitysam.pipeline.stream.stream`."""
        return online.stream(self, video, delay=delay, start=start, end=end, stride=stride, max_frames=max_frames,
                             fps=fps, name=name, dtype=dtype, live=live, queue_size=queue_size, output=output,
                             formats=formats, labels=labels, overwrite=overwrite, keep_images=keep_images,
                             progress=progress, exact=exact, protect=protect, max_pixels=max_pixels)


def from_checkpoint(path: str | os.PathLike, *, config: str | None = None,
                    device: str | torch.device = "cpu", allow_pickle: bool = False) -> EntitySAM:
    """Load a checkpoint file (`EntitySAM.from_checkpoint(path)`); the configuration is
    inferred from its keys unless given (`vit-s`, `vit-l`, `tiny`, `demo`). Raises
    CheckpointMismatchError for a checkpoint of the wrong kind or configuration, or that cannot
    be read. Never runs code from the file: one holding other pickled objects than tensors and
    plain data raises UnsafeCheckpointError, unless allow_pickle=True (unpickles it in full:
    runs whatever it contains; only for files you trust; warns)."""
    check_checkpoint_path(path)
    check_config_name(config)
    check_flags(allow_pickle=allow_pickle)  # "no" is truthy: it would unpickle (run) the file's code
    model = load_entitysam(path, config=config, device=resolve_device(device), allow_pickle=allow_pickle,
                           model_class=EntitySAM)
    model.checkpoint_path = str(path)
    return model


def from_pretrained(name: str = "vit-s", *, device: str | torch.device = "cpu",
                    cache_dir: str | os.PathLike | None = None, download: bool = True,
                    say: Callable[[str], None] | None = None) -> EntitySAM:
    """A published model (`EntitySAM.from_pretrained("vit-s")`, or "vit-l"), from the local
    folder, the Hugging Face cache or the hub (see :mod:`entitysam.hub`), or the bundled
    "demo" model (inside the package, no network; synthetic scenes only). Raises
    ModelNotAvailableError with download instructions when it cannot be had. say (e.g. print):
    told one line when checking the SHA-256 of the cached file takes over 2 s (a slow disk)."""
    if not isinstance(name, str):
        raise InvalidArgumentError(f"the model name must be a string (vit-s, vit-l or demo), got {name!r}")
    resolve_device(device)  # an unusable device is refused before any download
    check_flags(download=download)  # "no" is truthy: it would download gigabytes
    if say is not None and not callable(say):
        raise InvalidArgumentError(f"say must be a function of one string (e.g. print) or None, got {say!r}")
    if cache_dir is not None:
        check_path_arg(cache_dir, "cache_dir")  # 3 would be the folder "3", "" the current one
    path = resolve_checkpoint(name, download=download, cache_dir=cache_dir, say=say)
    try:
        model = load_entitysam(path, config=name, device=resolve_device(device), model_class=EntitySAM)
    except UnsafeCheckpointError as err:  # its remedy, allow_pickle, is no argument here: it could not be followed
        raise UnsafeCheckpointError(f"{err.problem}; the file of a published model is never unpickled in full: "
                                    "delete it to download it again, or load it as a checkpoint file",
                                    path=path) from None
    except CheckpointMismatchError as err:
        if isinstance(err, CheckpointReadError) or name not in CHECKPOINT_FILES:
            raise
        raise _wrong_published_file(name, path, err.fits) from None
    model.checkpoint_path = str(path)
    return model


def _wrong_published_file(name: str, path: str | os.PathLike, fits: str | None) -> CheckpointMismatchError:
    """The error for a file found in a published model's place that is not that model: which
    model it is, and how to get the right one. The key-by-key listing of the general mismatch
    (hundreds of keys another configuration names differently) told nothing one could act on."""
    what = f"it is a '{fits}' model" if fits is not None else f"its weights do not fit the '{name}' model"
    if Path(path) in (local_checkpoint_path(name), local_checkpoint_path(name).with_suffix(".safetensors")):
        # looked at before the cache: a download would not replace it
        remedy = f"delete it or put the {name} checkpoint there"
    else:
        remedy = "delete it to download it again"  # (the library names no command or flag)
    return CheckpointMismatchError(f"the cached {name} checkpoint {path} is not the {name} model ({what}): {remedy}",
                                   fits=fits)


def check_checkpoint_path(path: Any) -> None:
    """A checkpoint argument: a non-empty path, or an already loaded state dict."""
    if isinstance(path, (str, os.PathLike)):
        if not os.fspath(path):
            raise InvalidArgumentError("the checkpoint path is empty")
        return
    if isinstance(path, dict):  # an already loaded state dict (load_entitysam takes one)
        return
    raise InvalidArgumentError(f"the checkpoint must be a file path (str or os.PathLike), got {path!r}")


def check_config_name(config: Any) -> None:
    """None (inferred from the checkpoint's keys) or a name of `entitysam.config.CONFIGS`."""
    if config is not None and (not isinstance(config, str) or config not in CONFIGS):
        raise InvalidArgumentError(f"unknown model configuration {config!r}: known {', '.join(CONFIGS)}")


def load_model(checkpoint: str | os.PathLike | None = None, *, config: str | None = None,
               device: str | torch.device = "cpu", allow_pickle: bool = False,
               say: Callable[[str], None] | None = None) -> EntitySAM:
    """The model of a command: the checkpoint file `checkpoint` (configuration `config`, inferred
    from its keys if None), else the published model `config` (default vit-s). Any failure is an
    EntitySAMError (ModelLoadError for what the loaders do not explain themselves, e.g. a file
    that torch cannot unpickle), naming what could not be loaded; Ctrl-C passes through."""
    try:
        if checkpoint:
            return from_checkpoint(checkpoint, config=config, device=device, allow_pickle=allow_pickle)
        return from_pretrained(config or "vit-s", device=device, say=say)
    except EntitySAMError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever torch.load raises for a foreign file
        what = f"the checkpoint {checkpoint}" if checkpoint else "the model"
        cause = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise ModelLoadError(f"cannot load {what}: {cause}") from None
