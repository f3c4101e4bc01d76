"""Loading EntitySAM checkpoints and the pretrained parts a training run starts from.

* `load_entitysam(path_or_state, config=None)`: an official `model_0009999.pth`
  (`{"model": state_dict, ...}`) or a bare state dict, loaded strictly. The config is inferred
  from the keys when not given. Any mismatch raises `CheckpointMismatchError` listing missing
  keys, unexpected keys and shape mismatches, and naming the configuration that would fit.
* `load_sam2_pretrained(model, path)`: a SAM 2.1 checkpoint (`sam2.1_hiera_*.pt`) into the
  SAM parts; `load_dinov2_pretrained(model, path)`: a DINOv2 hub checkpoint into the semantic
  encoder. Both return a `LoadReport` of what was and was not filled.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Mapping, TypeVar

import torch

from .checkpoint_file import is_safetensors, open_checkpoint, pickle_with_globals, text_start
from .checkpoint_scan import REFUSED, numpy_safe_globals, scan_checkpoint, scan_safetensors
from .config import CONFIGS, EntitySAMConfig, get_config
from .errors import CheckpointMismatchError, CheckpointReadError, Remedy, UnsafeCheckpointError, printable
from .modeling.entitysam import EntitySAM
from .modeling.meta import build_on_meta
from .regular_file import reopenable_name

PUBLISHED = ("vit-s", "vit-l")


class UnsafeLoadWarning(UserWarning):
    """A checkpoint is being unpickled in full because the caller passed ``allow_pickle=True``.
    path: the file."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(f"{path}: loading with the full pickle loader (allow_pickle=True): this file can run any "
                         "code on this machine; do this only for files you trust")
        self.path = path


@dataclass
class LoadReport:
    """What a partial (pretrained) load filled in."""

    loaded: list[str] = field(default_factory=list)
    not_filled: list[str] = field(default_factory=list)  # model keys the file did not provide
    ignored: list[str] = field(default_factory=list)  # file keys the model has no use for
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)} tensors; {len(self.not_filled)} model tensors not filled; "
                f"{len(self.ignored)} checkpoint tensors ignored; {len(self.shape_mismatch)} shape mismatches")


# What torch's weights-only unpickler says when it meets an object it will not build.
_REFUSAL_MARKERS = ("GLOBAL", "Can only build", "allowlisted")
# An object torch will not make (NEWOBJ, BUILD; not a persistent id or a list torch names by its class)
_MADE = r"Can only (?:build|create new object)[^\n]*? but got <class '([\w.]+)'>"
# Lines of torch's own advice around the cause in a weights-only failure message.
_TORCH_ADVICE = ("Weights only load failed", "(1)", "(2)", "WeightsUnpickler", "Check the documentation",
                 "Please file", "Re-running", "In PyTorch")


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0].strip()


def _torch_cause(err: BaseException) -> str:
    """The cause in torch's message, without its advice (which suggests weights_only=False)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    causes = [line for line in lines if not line.startswith(_TORCH_ADVICE)]
    return causes[0] if causes else _first_line(err)


def _unsafe_globals(err: BaseException) -> list[str]:
    """Names of the refused globals or classes in torch's message (for ours)."""
    text = str(err)
    names = (re.findall(r"GLOBAL ([\w.]+)", text) + re.findall(_MADE, text)
             + re.findall(re.escape(REFUSED) + r" ([\w.]+)", text))
    return list(dict.fromkeys(names))


def _load_weights_only(f: BinaryIO) -> Any:
    f.seek(0)
    with warnings.catch_warnings():
        # torch warns about pickle protocols it was not written with; the error (if any) says more
        warnings.simplefilter("ignore", UserWarning)
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(f, map_location="cpu", weights_only=True)


def _read_pickle(f: BinaryIO, path: Path, allow_pickle: bool) -> Any:
    """torch.load with weights_only=True always; the full unpickler only with allow_pickle. Both
    read `f`, the file the scan checked."""
    scan_checkpoint(f, path)  # what the weights-only unpickler would crash or blow up memory on
    try:
        return _load_weights_only(f)
    except pickle.UnpicklingError as err:
        refusal = err
    except Exception as err:  # noqa: BLE001 - corrupt files raise many types; all become one message
        raise CheckpointReadError(f"cannot read checkpoint {path}: {_describe_read_error(f, err)}") from None
    if not allow_pickle:
        names = _unsafe_globals(refusal)
        if (names or any(m in str(refusal) for m in _REFUSAL_MARKERS)) and not _text_read_as_global(f, refusal):
            what = f" ({', '.join(printable(n, 80) for n in names[:5])})" if names else ""
            problem = (f"refusing to load checkpoint {path}: it holds pickled Python objects{what} that could run "
                       "code when loaded; EntitySAM checkpoints hold only tensors and plain data")
            raise UnsafeCheckpointError(problem, Remedy("allow_pickle", True, "only if you trust whoever made this file"),
                                        path=path)
        raise CheckpointReadError(f"cannot read checkpoint {path}: {_describe_read_error(f, refusal)}")
    warnings.warn(UnsafeLoadWarning(path), stacklevel=4)
    try:
        f.seek(0)
        return torch.load(f, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise CheckpointReadError(f"cannot read checkpoint {path}: {_describe_read_error(f, err)}") from None


def _text_read_as_global(f: BinaryIO, refusal: BaseException) -> bool:
    """A text file starting with "c", the pickle opcode GLOBAL: "config: x" is refused as the global
    "onfig: x" of a module, "cat" as "a.", and was called a file of pickled Python objects. No Python
    name holds a space or a colon, and text that is no whole pickle is none; a real one (a pickle
    saved as protocol 0 is text too) stays refused."""
    wanted = re.findall(r"GLOBAL (.+?) (?:was not|whose module)", str(refusal))
    return bool(wanted) and text_start(f) is not None and (
        not all(re.fullmatch(r"[\w.]+", n) for n in wanted) or not pickle_with_globals(f))


def _describe_read_error(f: BinaryIO, err: BaseException) -> str:
    if os.fstat(f.fileno()).st_size == 0:
        return "the file is empty"
    start = text_start(f)
    if start is not None:
        return (f"it is a text file{f' (starting {printable(start, 60)!r})' if start else ''}, not a checkpoint "
                "(torch.save writes binary files)")
    cause = printable(_torch_cause(err))
    return f"not a readable PyTorch checkpoint (truncated, or not written by torch.save?): {cause}"


def _read_safetensors(f: BinaryIO, path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load, load_file  # noqa: PLC0415
    except ImportError as err:  # a core dependency; only a broken install gets here
        raise CheckpointReadError(f"cannot read {path}: the safetensors package is missing "
                                  "(pip install safetensors)") from err
    scan_safetensors(f, path)  # a header of too many tensors to make
    try:  # safetensors opens by name: the open file's own (a copy in memory where there is none)
        name = reopenable_name(f)
        return load_file(name, device="cpu") if name else load(f.read())
    except Exception as err:  # noqa: BLE001 - SafetensorError for truncated or foreign files
        raise CheckpointReadError(f"cannot read checkpoint {path}: {printable(_first_line(err))}") from None


def _as_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """Unwrap ``{"model": ...}`` and DDP ``module.`` prefixes; everything left must be tensors."""
    if not isinstance(obj, Mapping):
        raise CheckpointReadError(f"{where} is not an EntitySAM checkpoint: it holds a {type(obj).__name__}, "
                                  "not a state dict (names -> tensors) nor {'model': state dict}")
    if "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    bad = [(k, v) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        examples = ", ".join(f"{printable(repr(k[:100]), 100) if isinstance(k, str) else type(k).__name__}: "
                             f"{type(v).__name__}" for k, v in bad[:3])
        raise CheckpointReadError(f"{where} is not an EntitySAM checkpoint: {len(bad)} of its {len(obj)} entries "
                                  f"are not named tensors ({examples}{', ...' if len(bad) > 3 else ''})")
    if not obj:
        raise CheckpointReadError(f"{where} is not an EntitySAM checkpoint: it holds no tensors")
    state = {}
    for key, value in obj.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key in state:  # 'x' and 'module.x' both: the later one silently replaced the other
            raise CheckpointReadError(f"{where} is not an EntitySAM checkpoint: it holds {printable(repr(key[:100]))} "
                                      "twice, with and without the 'module.' prefix (which one is meant?)")
        state[key] = value
    return state


def read_checkpoint(path: str | os.PathLike, *, allow_pickle: bool = False) -> Any:
    """The whole object of a checkpoint file (e.g. a training checkpoint with its optimizer and
    scheduler state), read as safely as :func:`read_state_dict` reads the weights."""
    path = Path(path)
    with open_checkpoint(path) as f:  # the one open of the path: what it names may change meanwhile
        if is_safetensors(f, path):
            return _read_safetensors(f, path)
        return _read_pickle(f, path, allow_pickle)


def read_state_dict(source: str | os.PathLike | Mapping[str, torch.Tensor], *,
                    allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from a file (`.safetensors`, or a `.pth`/`.pt` written by ``torch.save``) or a
    mapping; unwraps `{"model": ...}` and DDP `module.` prefixes.

    Pickle files are read with ``torch.load(weights_only=True)``: tensors, plain containers and
    numbers, and numeric numpy data only, so a checkpoint can never run code. A file holding
    other Python objects raises :class:`UnsafeCheckpointError`, unless ``allow_pickle=True``
    (the command line's ``--trust-checkpoint-code``): then it is unpickled in full, with a
    warning, which runs whatever the file contains. Only for files you trust.
    """
    if isinstance(source, Mapping):
        return _as_state_dict(source, "the state dict")
    return _as_state_dict(read_checkpoint(source, allow_pickle=allow_pickle), f"checkpoint {Path(source)}")


def _shapes(cfg: EntitySAMConfig) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in build_on_meta(lambda: EntitySAM(cfg)).state_dict().items()}


def infer_config(state: Mapping[str, torch.Tensor]) -> EntitySAMConfig | None:
    """The named configuration whose keys and shapes fit `state` exactly, or None."""
    got = {k: tuple(v.shape) for k, v in state.items()}
    for cfg in CONFIGS.values():
        if _shapes(cfg) == got:
            return cfg
    return None


def _closest_config_name(state: Mapping[str, torch.Tensor]) -> str:
    """Name of the configuration with the largest key overlap (for error messages)."""
    keys = set(state)
    best = max(CONFIGS.values(), key=lambda c: len(keys & set(_shapes(c))))
    return best.name


def _count_non_finite(value: torch.Tensor) -> int:
    # float64 as the model gets it (beyond float32's range: infinite); float8 exactly as float32,
    # which sums it (torch sums no float8: a NotImplementedError's text, or a traceback, was the error)
    native = (torch.float32, torch.float16, torch.bfloat16)
    as_loaded = value if value.dtype in native else value.to(torch.float32)
    if bool(torch.isfinite(as_loaded.sum())):  # NaN and inf reach the sum: the fast check of a good tensor
        return 0
    return int(as_loaded.numel() - torch.isfinite(as_loaded).sum())


def check_state_dict(model: EntitySAM, state: Mapping[str, torch.Tensor], *,
                     source: str | os.PathLike | None = None) -> None:
    """Raise CheckpointMismatchError unless `state` has exactly the model's keys and shapes, every
    tensor a dense real floating-point one holding finite numbers. source: the file, named in the message."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [(k, tuple(state[k].shape), expected[k]) for k in expected
                  if k in state and tuple(state[k].shape) != expected[k]]
    # Every weight is a real floating-point number: a complex one would lose its imaginary part
    # in the float32 cast, an integer or boolean one cannot be a parameter, a sparse one breaks
    # inference. Refused here, in one listing, before any of them reaches the model.
    # A meta tensor (torch._utils._rebuild_meta_tensor_no_storage) has a shape but no numbers.
    not_real = [(k, f"{str(v.dtype).removeprefix('torch.')}" + ("" if v.layout == torch.strided else f", {v.layout}")
                 + (", meta: no data" if v.is_meta else ""))
                for k, v in state.items() if k in expected
                and (v.layout != torch.strided or not v.is_floating_point() or v.is_complex() or v.is_meta)]
    # A NaN or infinite weight (a diverged training run; a float64 beyond float32's range) made
    # every output NaN: the run "succeeded", finding nothing. Counted in the tensors that fit.
    non_finite = [] if not_real else [(k, n) for k, v in state.items()
                                      if expected.get(k) == tuple(v.shape) and (n := _count_non_finite(v))]
    if not (missing or unexpected or mismatched or not_real or non_finite):
        return
    lines = [f"checkpoint does not fit the '{model.cfg.name}' model{f' ({source})' if source is not None else ''}:"]

    def listing(title: str, items: list) -> None:
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {printable(str(item))}" for item in items[:20])  # keys come from the file
            if len(items) > 20:
                lines.append(f"    ... and {len(items) - 20} more")

    listing("missing keys", missing)
    listing("unexpected keys", unexpected)
    listing("shape mismatches (key, checkpoint, model)", mismatched)
    listing("not real floating-point dense tensors (key, dtype)", not_real)
    listing("not finite: NaN or infinite values (key, how many)", non_finite)
    if not (missing or unexpected or mismatched):  # keys and shapes fit: nothing to say about configurations
        raise CheckpointMismatchError("\n".join(lines))
    fit = infer_config(state)
    remedies = []
    if fit is not None and fit.name != model.cfg.name:
        lines.append(f"  the checkpoint fits the '{fit.name}' configuration")
        remedies.append(Remedy("config", fit.name, "to load it"))
    elif fit is None:
        closest = _closest_config_name(state)
        lines.append(f"  no known configuration fits exactly; closest: '{closest}' "
                     "(a truncated or foreign checkpoint?)")
    raise CheckpointMismatchError("\n".join(lines), *remedies, fits=None if fit is None else fit.name)


Model = TypeVar("Model", bound=EntitySAM)


def load_entitysam(source: str | os.PathLike | Mapping[str, torch.Tensor],
                   config: EntitySAMConfig | str | None = None,
                   device: str | torch.device = "cpu", *, allow_pickle: bool = False,
                   model_class: type[Model] = EntitySAM) -> Model:
    """Build the model for `config` (inferred from the keys if None) and load `source` strictly.
    allow_pickle: see :func:`read_state_dict` (runs code in the file; only for trusted files).
    model_class: the class built (an EntitySAM subclass: the public one of
    `entitysam.pipeline.loading`, which adds segment() and stream(); training uses the plain one)."""
    state = read_state_dict(source, allow_pickle=allow_pickle)
    path = None if isinstance(source, Mapping) else source  # named in a mismatch
    if config is None:
        config = infer_config(state)
        if config is None:
            closest = _closest_config_name(state)
            model_cfg = get_config(closest)
            check_state_dict(build_on_meta(lambda: EntitySAM(model_cfg)), state, source=path)  # raises: full listing
            raise AssertionError("unreachable")
    elif isinstance(config, str):
        config = get_config(config)
    model = build_on_meta(lambda: model_class(config))
    check_state_dict(model, state, source=path)
    model.load_state_dict(_owning_their_memory(state), strict=True, assign=True)
    return model.to(device=device, dtype=torch.float32).eval()


def _owning_their_memory(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with a copy of each tensor that does not own its storage alone and densely. The
    weights are assigned, not copied: a view with zero or overlapping strides (one number read
    as many) made training fail in the optimizer ("more than one element of the written-to tensor
    refers to a single memory location"), two weights on one storage were silently tied."""
    users = Counter(v.untyped_storage().data_ptr() for v in state.values())
    return {k: v if v.is_contiguous() and users[v.untyped_storage().data_ptr()] == 1
            and v.untyped_storage().nbytes() == v.numel() * v.element_size()
            else v.clone(memory_format=torch.contiguous_format) for k, v in state.items()}


# ---------------------------------------------------------------------- pretrained parts
# SAM 2.1 key prefixes EntitySAM keeps under the same names.
_SAM2_SHARED_PREFIXES = ("image_encoder.", "memory_attention.", "memory_encoder.", "sam_prompt_encoder.",
                         "maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc", "no_obj_embed_spatial",
                         "obj_ptr_tpos_proj.", "sam_mask_decoder.")


def _unusable(value: torch.Tensor) -> str | None:
    """Why a tensor cannot fill a weight (what check_state_dict refuses), or None."""
    if value.layout != torch.strided or value.is_meta or not value.is_floating_point() or value.is_complex():
        meta = ", meta: no data" if value.is_meta else ""
        return f"{str(value.dtype).removeprefix('torch.')}, {value.layout}{meta}"
    count = _count_non_finite(value)
    return f"{count} NaN or infinite values" if count else None


def _partial_load(model: torch.nn.Module, state: Mapping[str, torch.Tensor], prefix: str,
                  accept: tuple[str, ...] | None = None, where: str = "the state dict") -> LoadReport:
    own = model.state_dict()
    report = LoadReport()
    fills, unusable = [], []
    for key, value in state.items():
        target = prefix + key
        if (accept is not None and not key.startswith(accept)) or target not in own:
            report.ignored.append(key)
        elif tuple(own[target].shape) != tuple(value.shape):
            report.shape_mismatch.append((target, tuple(value.shape), tuple(own[target].shape)))
        elif why := _unusable(value):
            unusable.append((key, why))
        else:
            fills.append((target, value))
    # Refused before anything is copied: a meta or sparse tensor failed the copy with torch's error
    # half-way, a complex one lost its imaginary part, a NaN one surfaced as a matcher error in training.
    if unusable:
        listed = "; ".join(printable(f"{k} ({why})", 120) for k, why in unusable[:5])
        raise CheckpointMismatchError(f"{where} cannot fill the model: {len(unusable)} of its tensors hold no usable "
                                      f"real numbers: {listed}{'; ...' if len(unusable) > 5 else ''}")
    with torch.no_grad():
        for target, value in fills:
            own[target].copy_(value.to(own[target].dtype))
            report.loaded.append(target)
    scope = [k for k in own if k.startswith(prefix)] if prefix else list(own)
    if accept is not None:
        scope = [k for k in scope if k.startswith(accept)]
    filled = set(report.loaded)
    report.not_filled = [k for k in scope if k not in filled]
    return report


def load_sam2_pretrained(model: EntitySAM, source: str | os.PathLike | Mapping[str, torch.Tensor], *,
                         allow_pickle: bool = False) -> LoadReport:
    """Fill the SAM parts from a SAM 2.1 checkpoint (`{"model": ...}`).

    SAM 2.1 tensors EntitySAM does not have (object pointers, object-score head, ...) are
    reported as ignored; EntitySAM's own parts (queries, prompt generator, DINOv2) are not filled.
    """
    state = read_state_dict(source, allow_pickle=allow_pickle)
    return _partial_load(model, state, "", accept=_SAM2_SHARED_PREFIXES, where=_where(source))


def load_dinov2_pretrained(model: EntitySAM, source: str | os.PathLike | Mapping[str, torch.Tensor], *,
                           allow_pickle: bool = False) -> LoadReport:
    """Fill the semantic encoder from a DINOv2 hub checkpoint (`dinov2_vit*14_pretrain.pth`)."""
    state = read_state_dict(source, allow_pickle=allow_pickle)
    return _partial_load(model, state, "dinov2_feature_extractor.", where=_where(source))


def _where(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> str:
    return "the state dict" if isinstance(source, Mapping) else f"checkpoint {source}"
