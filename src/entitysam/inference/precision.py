"""Precision policy: which device, which compute dtype, and how that dtype is applied to a video run
(plain float32, TF32 on CUDA, CPU memory-attention-only bfloat16, or autocast over the model)."""

from __future__ import annotations

import contextlib

import torch

from ..argtypes import InvalidArgumentError
from ..errors import EntitySAMError, Remedy
from ..modeling.entitysam import EntitySAM

__all__ = ["DTYPES", "resolve_device", "resolve_dtype", "has_bfloat16_units", "check_model", "check_exact", "precision_plan", "memory_dtype_for",
           "autocast_for", "tf32_matmuls", "cudnn_autotuning"]

DTYPES = ("auto", "float32", "bfloat16", "float16")

# cuDNN's autotuner for the convolutions of a video on CUDA (not with `exact`: it picks other
# kernels than the official run). A steady step's shapes are static, so each convolution is
# tuned once, at the first step. Off until a GPU run measures it faster (benchmarks/gpu.py, `ab`).
CUDNN_AUTOTUNE = False


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
        raise InvalidArgumentError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InvalidArgumentError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EntitySAMError(f"device {name}: CUDA is not available (torch {torch.__version__}, "
                             f"{'built without CUDA' if torch.version.cuda is None else 'no GPU visible'})")
    if dev.type == "cuda" and dev.index is not None and dev.index >= (count := torch.cuda.device_count()):
        # (was CUDA's "invalid device ordinal" traceback from the first tensor moved there)
        raise EntitySAMError(f"device {name}: this machine has {count} GPU(s) visible (cuda:0 .. cuda:{count - 1})")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise EntitySAMError(f"device {name}: MPS (Apple GPU) is not available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 autocast on CUDA (as the official evaluation; float16 on GPUs without
    bfloat16 units, see `has_bfloat16_units`), float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise InvalidArgumentError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        return dtype
    if dtype is not None and not isinstance(dtype, str):
        raise InvalidArgumentError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    name = "auto" if dtype is None else str(dtype).replace("torch.", "")
    if name not in DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if has_bfloat16_units(device) else torch.float16
    return getattr(torch, name)


def has_bfloat16_units(device: torch.device) -> bool:
    """Whether a CUDA device computes in bfloat16 natively (compute capability 8.0 on: Ampere,
    Hopper, ...; ROCm). Older GPUs (T4, V100) only emulate it: slowly, and without the fused
    attention kernels, whose math fallback holds every attention score. Their fast half precision
    is float16, the one the official training ran in (fp16 autocast). Without CUDA there is no
    device to ask: the official choice, bfloat16."""
    if torch.version.hip or not torch.cuda.is_available():
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def check_model(model: object) -> torch.device:
    """The device of a model to run, after the checks of what callers get wrong, each of which
    failed deep inside (an AttributeError, a dtype mismatch in the first convolution, a meta
    tensor copied) or, for a model in training mode, gave random results without a word (its
    memory attention's dropout is on). Returns the device of its weights."""
    if not isinstance(model, EntitySAM):
        raise InvalidArgumentError(f"model must be an EntitySAM model (EntitySAM.from_pretrained(name) or "
                                   f"from_checkpoint(path)), got {type(model).__name__}")
    first = next(model.parameters())
    if first.device.type == "meta":
        raise InvalidArgumentError("model is on the meta device: it has no weights (load it with "
                                   "EntitySAM.from_pretrained or from_checkpoint)")
    if model.training:
        raise InvalidArgumentError("model is in training mode (model.train()): its dropout would make the results "
                                   "random; call model.eval() first")
    other = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()} - {"float32"})
    if other:
        raise InvalidArgumentError(f"model weights are {', '.join(other)}: keep them float32 (model.float()) and "
                                   "choose the compute precision with dtype= (e.g. dtype='float16')")
    return first.device


def check_exact(exact: bool, compute_dtype: torch.dtype) -> None:
    """Refuse exact mode with a low-precision compute dtype (exact is the official float32 arithmetic)."""
    if exact and compute_dtype != torch.float32:
        name = str(compute_dtype).replace("torch.", "")
        raise EntitySAMError(f"exact mode computes in float32 (the official CPU arithmetic), not {name}",
                             Remedy("dtype", "float32"))


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
    kernels = cudnn_autotuning() if device_type == "cuda" and not exact and CUDNN_AUTOTUNE else contextlib.nullcontext()
    if compute_dtype == torch.float32:
        return _both(kernels, tf32_matmuls() if device_type == "cuda" and not exact else contextlib.nullcontext()), None
    if compute_dtype == torch.bfloat16 and device_type == "cpu" and not batched:
        return contextlib.nullcontext(), torch.bfloat16
    return _both(kernels, autocast_for(device_type, compute_dtype)), None


@contextlib.contextmanager
def _both(first: contextlib.AbstractContextManager, second: contextlib.AbstractContextManager):
    with first, second:
        yield


def memory_dtype_for(compute_dtype: torch.dtype) -> torch.dtype | None:
    """dtype of the tracker's stored memories for a compute dtype: float16 under float16 (autocast
    cannot mix bfloat16 memories into float16 matmuls), else None (the tracker's default, bfloat16
    as the official code stores them)."""
    return torch.float16 if compute_dtype == torch.float16 else None


def autocast_for(device_type: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """The autocast region of the low-precision plans (tests stand CUDA's rules in here)."""
    return torch.autocast(device_type=device_type, dtype=dtype)


@contextlib.contextmanager
def tf32_matmuls():
    """TF32 for float32 matmuls and convolutions on CUDA (the official evaluation switches it on
    for compute capability >= 8), restored afterwards.

    torch (2.9 on) has two views of these switches, the older ``allow_tf32`` flags and the newer
    ``fp32_precision`` settings, and raises a RuntimeError ("mix of the legacy and new APIs") at
    any read of the older view that disagrees with the newer one. Setting only the newer one made
    that mix: inside a float32 video on CUDA ``torch.get_float32_matmul_precision()`` raised, and
    torch.compile's autotuning (mode "max-autotune...") reads it. So where the older flag reads
    (the views agree), it is switched through its setter, which sets the newer settings too, and
    put back the same way. Where it does not (the program mixed them already: its reads fail
    either way) only the newer setting is switched, as before. A switch already "tf32" is left
    alone; the newer settings are put back as they were."""
    restore = []
    for flags, settings in _tf32_switches():
        if settings and settings[0].fp32_precision == "tf32":
            continue
        try:
            before = flags.allow_tf32
        except RuntimeError:
            before = None
        if before or (before is None and not settings):
            continue
        saved = [(owner, owner.fp32_precision) for owner in settings]
        if before is None:
            settings[0].fp32_precision = "tf32"
        else:
            flags.allow_tf32 = True
        restore.append((flags, before, saved))
    try:
        yield
    finally:
        for flags, before, saved in reversed(restore):
            if before is not None:
                flags.allow_tf32 = before
            for owner, value in saved:
                owner.fp32_precision = value


def _tf32_switches() -> list[tuple[object, tuple]]:
    """Per switch (cuBLAS matmuls, cuDNN): the object with the older `allow_tf32` flag, and the
    objects with the newer `fp32_precision` settings that its setter sets too, the one for the
    operation switched first (cuDNN's also sets the RNNs'); none before torch 2.9."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    conv, rnn = getattr(cudnn, "conv", None), getattr(cudnn, "rnn", None)
    if hasattr(matmul, "fp32_precision") and all(hasattr(o, "fp32_precision") for o in (conv, rnn)):
        return [(matmul, (matmul,)), (cudnn, (conv, rnn))]
    return [(matmul, ()), (cudnn, ())]


@contextlib.contextmanager
def cudnn_autotuning():
    """cuDNN's autotuner on (`torch.backends.cudnn.benchmark`), restored afterwards."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
