"""Every ATen operator call that can round, as the problem handed to torch's kernel.

    ENTITYSAM_ATEN_TRACE=FILE python scripts/reference/harness.py official|ours ...

`kernel_trace.py --level aten` sets this for both programs and compares the two files. It sees what
oneMKL's and oneDNN's own logs do not: the sizes inside batched products (`bmm`, `baddbmm`, which
oneMKL logs only as addresses) and torch's own CPU kernels (reductions, softmax, normalisation,
transcendental functions, attention, interpolation), whose rounding depends on the ISA torch
dispatches to (the machine's) and on the shapes, strides and alignment they are given (the
program's). Same operator, same arguments, same layouts in both programs: same kernel arithmetic on
any CPU.

A call is written as `aten.softmax.int(f32[50,8,4096,64]/(...)@0, -1, False)`: each tensor's dtype,
shape, strides and address within a 64-byte line; every other argument as its repr. Calls that
cannot round are not written: views, copies, indexing, comparisons, selections, integer maths, and
the IEEE operations that round once and alike on every CPU (add/sub with alpha 1, mul, div, sqrt,
casts). Only the calling thread is traced (torch's dispatch modes are per thread).
"""

from __future__ import annotations

import contextlib
import os
import re

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ENVIRONMENT = "ENTITYSAM_ATEN_TRACE"

# Results fixed to the bit by their inputs on any CPU and for any layout: no arithmetic, or one
# correctly rounded IEEE operation per element.
EXACT = frozenset("""
    view _unsafe_view as_strided expand permute transpose t unsqueeze squeeze select slice detach alias
    split split_with_sizes chunk unbind unfold narrow diagonal view_as_real view_as_complex lift_fresh
    copy_ clone _to_copy empty empty_like empty_strided new_empty new_empty_strided zeros zeros_like ones
    ones_like full full_like new_zeros new_ones new_full fill_ zero_ scalar_tensor _local_scalar_dense
    cat stack index index_select index_put_ index_put gather scatter scatter_ masked_fill masked_fill_
    masked_select where nonzero repeat repeat_interleave flip roll constant_pad_nd slice_scatter
    select_scatter _reshape_alias set_ resize_ eq ne lt le gt ge logical_and logical_or logical_not
    logical_xor bitwise_and bitwise_or bitwise_not bitwise_xor isnan isinf isfinite any all max min amax
    amin argmax argmin maximum minimum topk sort argsort clamp clamp_ clamp_min clamp_min_ clamp_max
    clamp_max_ relu relu_ abs abs_ neg neg_ sign floor ceil round trunc mul mul_ div div_ sqrt sqrt_
    sym_size sym_stride sym_numel sym_storage_offset is_nonzero equal detach_ _unsafe_index
    upsample_nearest1d upsample_nearest2d upsample_nearest3d
""".split())
# a + alpha * b: one rounding only when alpha is 1 or -1 (otherwise fused or not, by ISA)
ADDITIVE = frozenset("add add_ sub sub_ rsub".split())
# Element by element through TensorIterator, which drops size-1 dimensions before it chooses a loop,
# and layer norm, which normalises rows whatever the leading dimensions: [1, H, W, C] and [H, W, C]
# (same strides) are one problem to these kernels.
SIZE_ONE_BLIND = frozenset("""
    sin cos tan exp exp2 expm1 log log1p log2 tanh sigmoid gelu erf erfinv pow rsqrt reciprocal silu atan
    atan2 floor_divide remainder lerp addcmul addcdiv softplus hardtanh add add_ sub sub_ rsub
    native_layer_norm
""".split())
# Kernels that make their input contiguous before any arithmetic (layer_norm_cpu calls
# `input.expect_contiguous()`): any layout of the input is an exact copy away from that one.
CONTIGUOUS_FIRST = frozenset({"native_layer_norm"})


def rounds(func, args, kwargs) -> bool:
    name = func.overloadpacket.__name__
    if name in ADDITIVE:
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
        if alpha in (1, -1):
            return False
    elif name in EXACT:
        return False
    tensors = [a for a in _leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
    return any(t.is_floating_point() or t.is_complex() for t in tensors)


def _leaves(value):
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    elif isinstance(value, dict):
        for k in sorted(value):
            yield from _leaves(value[k])
    else:
        yield value


_SHORT = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16", torch.float16: "f16",
          torch.int64: "i64", torch.int32: "i32", torch.uint8: "u8", torch.bool: "b8"}


def describe(value, scalar: bool = True, size_one_blind: bool = False) -> str:
    """One argument as the kernel sees it: a tensor's dtype, shape, strides, line offset."""
    if isinstance(value, torch.Tensor):
        try:
            line = value.data_ptr() % 64
        except RuntimeError:  # no storage (e.g. a meta or functional tensor)
            line = "?"
        dtype = _SHORT.get(value.dtype, str(value.dtype))
        dims = [(n, st) for n, st in zip(value.shape, value.stride()) if n != 1 or not size_one_blind]
        shape = ",".join(str(n) for n, _ in dims)
        # a size-1 dimension's stride is never stepped over: any value is the same layout
        stride = ",".join(str(st) if n != 1 else "*" for n, st in dims)
        return f"{dtype}[{shape}]/({stride})@{line}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(describe(v, scalar=False) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={describe(value[k])}" for k in sorted(value)) + "}"
    if scalar and isinstance(value, int) and not isinstance(value, bool):
        return repr(float(value))  # a scalar enters a kernel as a float: 10000 and 10000.0 are one
    return repr(value)


_COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd


class AtenTrace(TorchDispatchMode):
    """Writes each rounding call (see module docstring) to `out`, one line each."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Composite operators (linear, layer_norm, reshape, ...) reach a dispatch mode whole under
        # inference mode; what runs is their C++ decomposition (not a Python one that
        # `func.decompose` would prefer), so trace that instead.
        if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), _COMPOSITE):
            with self:
                return func._op_dk(_COMPOSITE, *args, **kwargs)
        if rounds(func, args, kwargs):
            blind = func.overloadpacket.__name__ in SIZE_ONE_BLIND
            fields = [describe(a, size_one_blind=blind) for a in args]
            fields += [f"{k}={describe(kwargs[k], size_one_blind=blind)}" for k in sorted(kwargs)]
            self.out.write(f"{func}({', '.join(fields)})\n")
        return func(*args, **kwargs)


@contextlib.contextmanager
def recording():
    """Traces the calls of its body to the file named by ENTITYSAM_ATEN_TRACE (nothing when unset)."""
    path = os.environ.get(ENVIRONMENT)
    if not path:
        yield
        return
    with open(path, "a", buffering=1 << 20) as out, AtenTrace(out):
        yield


_FIRST_TENSOR = re.compile(r"^(aten\.(\w+)\.\w+\(\w+\[([\d,]*)\]/\()([\d*,]*)\)@(\d+|\?)")


def as_compared(call: str) -> str:
    """A call of a CONTIGUOUS_FIRST kernel with a non-contiguous input, written as the call on the
    contiguous copy the kernel makes (fresh allocations are 64-byte aligned: offset 0)."""
    match = _FIRST_TENSOR.match(call)
    if match is None or match.group(2) not in CONTIGUOUS_FIRST:
        return call
    shape = [int(n) for n in match.group(3).split(",") if n]
    contiguous, step = [], 1
    for n in reversed(shape):
        contiguous.append(str(step) if n != 1 else "*")
        step *= n
    contiguous = ",".join(reversed(contiguous))
    if contiguous == match.group(4):
        return call
    return f"{match.group(1)}{contiguous})@0{call[match.end():]}"


def calls(text: str) -> list[str]:
    """The traced calls of a log, as compared (`as_compared`)."""
    return [as_compared(line) for line in text.splitlines() if line.startswith("aten.")]
