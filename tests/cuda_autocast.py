"""CUDA autocast's dtype rules, emulated on the CPU (test helper).

CPU autocast casts by other lists than CUDA autocast: on CUDA, softmax, layer_norm, exp, sum,
pow, ... return float32 for low-precision inputs; on CPU they keep the input dtype. Code that
passes every CPU test can therefore fail on a GPU (e.g. a float32 softmax fed to a
`matmul(..., out=<bfloat16>)`, which no autocast touches). `CudaAutocast(dtype)` applies
CUDA's rules to every ATen operation while it is active, in place of `torch.autocast`:

* operations of CUDA's lower-precision list get their floating-point inputs cast to `dtype`
  (float64 excepted, as autocast does);
* operations of its float32 list get their float16 / bfloat16 inputs cast to float32;
* in-place and `out=` calls are left alone, as autocast leaves them.

The lists follow PyTorch's autocast reference ("CUDA Ops that can autocast to float16 /
float32"), named here by the ATen operations a CPU run dispatches. Dispatch modes are
per thread: code that fans work out to other threads must run single-threaded under it.

Outside inference mode composite operations reach a dispatch mode decomposed, and the
convolutions and attention check their operands' dtypes before that (autocast, which sits above
them, casts first): they are therefore cast at the Python level too (`_CastAtPythonLevel`).

`float32_products=True` computes the lower-precision list's operations (products, convolutions,
attention) from float32 copies of their rounded operands and rounds the result to `dtype`: a
GPU's arithmetic there (half-precision operands, float32 accumulation, half-precision result),
and the only way to run float16 at the published sizes on a CPU, whose float16 products run at
about 1 GFLOP/s (x86 without AVX512-FP16). A result past float16's range becomes inf, as on the
GPU.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

LOWER_PRECISION = {
    aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.addbmm, aten.mv, aten.addmv, aten.addr,
    aten.matmul, aten.linear, aten.einsum, aten.prelu, aten.linalg_vecdot,
    aten.convolution, aten._convolution, aten.conv1d, aten.conv2d, aten.conv3d,
    aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d,
    aten.scaled_dot_product_attention, aten._scaled_dot_product_flash_attention_for_cpu,
}

FLOAT32 = {
    aten.softmax, aten._softmax, aten.log_softmax, aten._log_softmax,
    aten.layer_norm, aten.native_layer_norm, aten.group_norm, aten.native_group_norm,
    aten.exp, aten.expm1, aten.log, aten.log10, aten.log1p, aten.log2, aten.pow,
    aten.reciprocal, aten.rsqrt, aten.acos, aten.asin, aten.cosh, aten.sinh, aten.tan,
    aten.erfinv, aten.softplus, aten.sum, aten.prod, aten.cumsum, aten.cumprod, aten.norm,
    aten.linalg_vector_norm, aten.cdist, aten.dist, aten.logsumexp, aten.renorm,
    aten.cosine_similarity, aten.mse_loss, aten.l1_loss, aten.binary_cross_entropy_with_logits,
}

LOW = (torch.float16, torch.bfloat16)


def _cast(value, rule):
    if isinstance(value, torch.Tensor):
        return rule(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, rule) for v in value)
    return value


class CudaAutocast(TorchDispatchMode):
    """Context manager: CUDA autocast's dtype rules for `dtype` on any device.

    `casts` counts, per operation, the calls whose inputs were cast (tests check that the
    rules were exercised).
    """

    def __init__(self, dtype: torch.dtype = torch.bfloat16, float32_products: bool = False):
        super().__init__()
        self.dtype = dtype
        self.float32_products = float32_products
        self.casts: Counter[str] = Counter()
        self._python_level = _CastAtPythonLevel(self)

    def __enter__(self):
        self._python_level.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._python_level.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if not func._schema.is_mutable:  # in-place and out= calls are never autocast
            if packet in LOWER_PRECISION:
                rule = self._to_lower
            elif packet in FLOAT32 and "dtype" not in kwargs:
                rule = self._to_float32
            else:
                rule = None
            if rule is not None:
                new_args, new_kwargs = _cast(args, rule), {k: _cast(v, rule) for k, v in kwargs.items()}
                if any(a is not b for a, b in zip(new_args, args)):
                    self.casts[str(packet)] += 1
                args, kwargs = new_args, new_kwargs
                if self.float32_products and rule == self._to_lower:
                    return self._in_float32(func, args, kwargs)
        return func(*args, **kwargs)

    def _in_float32(self, func, args, kwargs):
        """func on float32 copies of its `dtype` operands, its (first) result rounded to `dtype`."""
        up = _cast(args, self._from_lower), {k: _cast(v, self._from_lower) for k, v in kwargs.items()}
        out = func(*up[0], **up[1])
        if isinstance(out, torch.Tensor):
            return out.to(self.dtype) if out.dtype == torch.float32 else out
        if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor) and out[0].dtype == torch.float32:
            return (out[0].to(self.dtype), *out[1:])  # (attention's log-sum-exp stays float32)
        return out

    def _from_lower(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() if t.dtype == self.dtype else t

    def _to_lower(self, t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() and t.dtype != torch.float64 and t.dtype != self.dtype:
            return t.to(self.dtype)
        return t

    @staticmethod
    def _to_float32(t: torch.Tensor) -> torch.Tensor:
        return t.float() if t.dtype in LOW else t


PYTHON_LEVEL = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
                F.scaled_dot_product_attention}


class _CastAtPythonLevel(TorchFunctionMode):
    """The lower-precision casts of `rules` (a CudaAutocast) for the functions that check their
    operands' dtypes before dispatch (see the module docstring)."""

    def __init__(self, rules: CudaAutocast):
        super().__init__()
        self.rules = rules

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PYTHON_LEVEL:
            new_args = _cast(args, self.rules._to_lower)
            new_kwargs = {k: _cast(v, self.rules._to_lower) for k, v in kwargs.items()}
            if any(a is not b for a, b in zip(new_args, args)):
                self.rules.casts[f"F.{func.__name__}"] += 1
            args, kwargs = new_args, new_kwargs
        return func(*args, **kwargs)
