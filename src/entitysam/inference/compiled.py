"""`torch.compile` of the part of the model where it pays (`entitysam segment --compile`).

What is compiled: the memory encoder's `fuse` (mask downsampler, fuser, output projection:
convolutions, LayerNorm2d and GELU over the full-resolution maps of all queries, elementwise
passes that inductor fuses). Measured on an H200 in bfloat16 (benchmarks/gpu.py, `ab` section):
13 ms less per steady step for vit-s (93.7 -> 80.8 ms) and 14 ms for vit-l (118 -> 104 ms), after
about 17 s of compilation in the first video of a process (inductor's on-disk cache makes later
processes faster). Compiling the encoders, the memory attention and the decoder as well was
measured slower (vit-s 0.69x eager, 223 s of compilation: inductor generates no code for the
rotary encoding's complex product and replaces cuDNN's attention), so they stay eager. The
tracker's bookkeeping (memory bank, points, hole filling) stays eager Python.

Shapes are compiled statically (``dynamic=False``): one graph per query-chunk size (one when all
queries run at once). It cannot honour exact mode (:func:`check_compiled_exact`): compiled
kernels fuse and reorder floating-point operations.
"""

from __future__ import annotations

import weakref

import torch

from ..errors import EntitySAMError
from ..modeling.entitysam import EntitySAM

__all__ = ["COMPILED_METHODS", "compile_model", "is_compiled", "check_compiled_exact"]

# (submodule, method) pairs compiled in place: the compiled function becomes an instance attribute
# of the submodule, over its method, so the state dict and every other call stay as they are.
COMPILED_METHODS = (("memory_encoder", "fuse"),)
# torch.compile's backend. Tests set "eager" (graph capture only, no code generation: seconds, not
# minutes, and the eager arithmetic exactly).
BACKEND = "inductor"

_compiled: "weakref.WeakSet[EntitySAM]" = weakref.WeakSet()


def compile_model(model: EntitySAM, mode: str | None = None) -> EntitySAM:
    """Compile the methods of :data:`COMPILED_METHODS` of `model` in place with ``torch.compile``
    and return the model.

    mode: ``torch.compile``'s mode (None: its default; ``"max-autotune-no-cudagraphs"``, ...).
    Calling it again on a compiled model does nothing. Compilation happens lazily, at the first
    step of the first video.
    """
    if model in _compiled:
        return model
    for module_name, method in COMPILED_METHODS:
        module = getattr(model, module_name)
        setattr(module, method, torch.compile(getattr(module, method), backend=BACKEND, mode=mode, dynamic=False))
    _compiled.add(model)
    return model


def is_compiled(model: EntitySAM) -> bool:
    """Whether :func:`compile_model` compiled `model`."""
    return model in _compiled


def check_compiled_exact(model: EntitySAM, exact: bool) -> None:
    """Refuse exact mode on a compiled model: compiled kernels fuse and reorder the arithmetic, so
    the official outputs bit for bit cannot be promised."""
    if exact and is_compiled(model):
        raise EntitySAMError("exact mode needs a model that compile_model has not compiled: compiled kernels "
                             "fuse and reorder floating-point operations (load the model again for exact mode)")

