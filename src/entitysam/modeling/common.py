"""Small building blocks shared by several modules: MLP, LayerNorm2d, position encodings, RoPE."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def kept_while_frozen(owner: nn.Module, params: tuple[torch.Tensor, ...], key: tuple,
                      make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`make()`, a value derived from `params` alone, remade only when needed: while gradients
    are off it is kept on `owner` (one entry), keyed by `key` and by the parameters' storage,
    in-place version, device and dtype, so loading weights or an optimizer step renews it.
    With gradients on it is always remade (training must see the graph), and so it is inside
    torch.compile's tracing, where it becomes part of the graph: a key of addresses and versions
    would make every new model recompile."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return make()
    full = (key, *((p.data_ptr(), p._version, p.device, p.dtype) for p in params))
    kept = owner.__dict__.get("_kept_while_frozen")
    if kept is None or kept[0] != full:
        kept = (full, make())
        owner.__dict__["_kept_while_frozen"] = kept
    return kept[1]


class MLP(nn.Module):
    """`num_layers` linear layers with an activation between them (SAM's MLP; keys `layers.i`)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int,
                 activation: type[nn.Module] = nn.ReLU, sigmoid_output: bool = False):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a [B, C, H, W] map."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            # Autograd: the same statistics through the fused layer_norm kernel.
            x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
            return x.permute(0, 3, 1, 2)
        # SAM's own formula: its op order, and 2-8x faster than permuting for the few-channel
        # maps of the memory encoder.
        u = x.mean(1, keepdim=True)
        d = x - u
        s = d.pow(2).mean(1, keepdim=True)
        if x.dtype != torch.float32:
            # Out of place as SAM writes it: under CUDA autocast `pow` returns float32, so the
            # official result is float32; in place it would be rounded back to x's dtype.
            return self.weight[:, None, None] * (d / torch.sqrt(s + self.eps)) + self.bias[:, None, None]
        return d.div_(torch.sqrt(s + self.eps)).mul_(self.weight[:, None, None]).add_(self.bias[:, None, None])


@lru_cache(maxsize=16)
@torch.inference_mode(False)  # cached tables must stay usable by autograd (training)
def _sine_position_encoding_cpu(channels: int, height: int, width: int,
                                temperature: float = 10000.0) -> torch.Tensor:
    half = channels // 2
    scale = 2 * math.pi
    eps = 1e-6
    y = torch.arange(1, height + 1, dtype=torch.float32).view(-1, 1).expand(height, width)
    x = torch.arange(1, width + 1, dtype=torch.float32).view(1, -1).expand(height, width)
    y = y / (y[-1:, :] + eps) * scale
    x = x / (x[:, -1:] + eps) * scale
    dim_t = torch.arange(half, dtype=torch.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / half)
    pos_x = x[:, :, None] / dim_t
    pos_y = y[:, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)
    pos_y = torch.stack((pos_y[:, :, 0::2].sin(), pos_y[:, :, 1::2].cos()), dim=3).flatten(2)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).contiguous()


@lru_cache(maxsize=32)
@torch.inference_mode(False)
def _on_device(table: Callable[..., torch.Tensor], device: torch.device, *args) -> torch.Tensor:
    # One copy per device: a table is used at every step, and a host-to-device copy of it
    # each time would be a blocking transfer on a GPU.
    return table(*args).to(device)


def sine_position_encoding(channels: int, height: int, width: int,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised 2-D sine position encoding (DETR / SAM 2 style), [channels, H, W] float32.

    The first half of the channels encodes y (row), the second half x (column).
    """
    return _on_device(_sine_position_encoding_cpu, torch.device(device), channels, height, width)


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier position encoding of SAM's prompt encoder.

    Coordinates in [0, 1] map to `[sin(2 pi (2c - 1) G), cos(...)]` with the fixed Gaussian
    matrix G [2, C/2] (a persistent buffer of the checkpoints).
    """

    def __init__(self, num_pos_feats: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """coords [..., 2] in [0, 1] as (x, y) -> [..., 2 * num_pos_feats]."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def grid(self, height: int, width: int) -> torch.Tensor:
        """Encoding of the pixel centres of an H x W grid: [C, H, W]."""
        device = self.positional_encoding_gaussian_matrix.device
        # (i + 0.5) / size from an arange, the values SAM's cumsum of ones gives bit for bit: a
        # float cumsum has no deterministic CUDA kernel, so every step on a GPU raised under
        # torch.use_deterministic_algorithms(True)
        y = (torch.arange(1, height + 1, device=device, dtype=torch.float32) - 0.5) / height
        x = (torch.arange(1, width + 1, device=device, dtype=torch.float32) - 0.5) / width
        grid = torch.stack([x.view(1, -1).expand(height, width), y.view(-1, 1).expand(height, width)], dim=-1)
        return self.encode(grid).permute(2, 0, 1)


@lru_cache(maxsize=16)
@torch.inference_mode(False)  # cached tables must stay usable by autograd (training)
def _rope_table_cpu(dim: int, side: int, theta: float) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(side * side, dtype=torch.float32)
    t_x = t % side  # column
    t_y = torch.div(t, side, rounding_mode="floor")  # row
    # Through torch.polar, as the official tables: its cos/sin differ from torch.cos/torch.sin in
    # the last bit for some angles, which moves rotated keys by up to 5e-7. One call per axis, as
    # there (the same kernel calls; kernel_trace.py --level aten).
    per_axis = [torch.outer(t, freqs) for t in (t_x, t_y)]  # [N, dim/4] each
    return torch.cat([torch.polar(torch.ones_like(a), a) for a in per_axis], dim=-1)  # [N, dim/2]


def rope_table(dim: int, side: int, theta: float = 10000.0,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Axial rotary table for a side x side grid in row-major order: complex64 [side^2, dim/2],
    `cos + i sin` of each angle.

    The first dim/4 frequency pairs rotate with the column index, the last dim/4 with the row.
    """
    return _on_device(_rope_table_cpu, torch.device(device), dim, side, theta)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x [..., k * N, dim] by the angles of table [N, dim/2]
    (each of the k grids of N tokens by the same table).

    A complex product as in the official code: bit-identical to `(a cos - b sin, a sin + b cos)`
    written out, and one kernel instead of six (9x faster in bfloat16).
    """
    n, half = table.shape
    xc = torch.view_as_complex(x.float().contiguous().unflatten(-1, (half, 2)))  # [..., k * N, dim/2]
    out = torch.view_as_real(xc.unflatten(-2, (-1, n)) * table).reshape(x.shape)
    return out.type_as(x)


def _onednn_linear_available() -> bool:
    try:
        x = torch.ones(2, 4)
        return bool(torch.backends.mkldnn.is_available()
                    and torch.equal(torch.ops.mkldnn._linear_pointwise(x, x, None, "none", [], ""), x @ x.t()))
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_LINEAR = _onednn_linear_available()


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [r, d] @ b [c, d]^T -> [r, c] (both operands row-major, as F.linear's input and weight).

    On x86 CPUs oneDNN's linear kernel runs the attention products here (scores with d = 256,
    weighted sums with d = a few thousand) at 180-200 GFLOP/s on 2 threads in float32 where
    the default BLAS call reaches 110-170. Other devices and builds use `matmul`.
    """
    if _ONEDNN_LINEAR and a.device.type == "cpu" and a.dtype in (torch.float32, torch.bfloat16) \
            and b.dtype == a.dtype and a.dim() == 2:
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return torch.matmul(a, b.transpose(-1, -2))
