"""`torch.compile` of the model's heavy modules (`entitysam segment --compile`).

What is compiled: the modules a tracker step calls through their ``forward`` and that hold almost
all of its arithmetic - the Hiera image encoder, the DINOv2 encoder, the memory attention and the
entity decoder. The tracker's bookkeeping (memory bank, points, hole filling) stays eager Python:
compiling it would only move its few operations into graphs that break at every data-dependent
branch.

Shapes are compiled statically (``dynamic=False``): one graph per distinct input shape, i.e. one
per number of memories (1 to ``num_maskmem``) for the memory attention and one per frame size for
nothing (frames are resized to the model's square input first). The first video pays the
compilation (tens of seconds on a GPU, minutes on a CPU); later videos of the same process reuse it.

Why it is opt-in: it has not been measured on a GPU yet (``benchmarks/gpu.py``'s ``compile``
section measures it), and the compiled kernels reorder and fuse floating-point operations, so it
cannot honour exact mode (:func:`check_compiled_exact`).
"""

from __future__ import annotations

import weakref

from ..errors import EntitySAMError
from ..modeling.entitysam import EntitySAM

__all__ = ["COMPILED_MODULES", "compile_model", "is_compiled", "check_compiled_exact"]

COMPILED_MODULES = ("image_encoder", "dinov2_feature_extractor", "memory_attention", "sam_mask_decoder")
# torch.compile's backend. Tests set "eager" (graph capture only, no code generation: seconds, not
# minutes, and the eager arithmetic exactly).
BACKEND = "inductor"

_compiled: "weakref.WeakSet[EntitySAM]" = weakref.WeakSet()


def compile_model(model: EntitySAM, mode: str | None = None) -> EntitySAM:
    """Compile `model`'s heavy modules in place with ``torch.compile`` and return the model.

    mode: ``torch.compile``'s mode (None: its default; ``"max-autotune-no-cudagraphs"``, ...).
    Calling it again on a compiled model does nothing. Compilation happens lazily, at the first
    step of the first video.
    """
    if model in _compiled:
        return model
    for name in COMPILED_MODULES:
        getattr(model, name).compile(backend=BACKEND, mode=mode, dynamic=False)
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

