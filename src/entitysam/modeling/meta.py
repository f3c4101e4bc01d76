"""Modules built on the ``meta`` device: shapes and dtypes only, no memory, no arithmetic."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["build_on_meta"]

Built = TypeVar("Built")


_NORMAL_FILLS = (torch.Tensor.normal_, torch.nn.init.normal_)


class _NoRandomFill(TorchFunctionMode):
    """`normal_` returns its tensor untouched. On a meta tensor it has nothing to fill, and
    torch's meta version imports ``torch._dynamo`` on first use: about 2 s of every process that
    loads a checkpoint (``nn.Embedding`` initialises with it)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _NORMAL_FILLS:
            tensor = args[0] if args else kwargs["tensor"]
            if tensor.device.type == "meta":
                return tensor
        return func(*args, **kwargs)


def build_on_meta(build: Callable[[], Built]) -> Built:
    """`build()` with every tensor it makes on the ``meta`` device, e.g. ``build_on_meta(lambda:
    EntitySAM(cfg))``: the module's structure, parameter shapes and dtypes without their values."""
    with torch.device("meta"), _NoRandomFill():
        return build()
