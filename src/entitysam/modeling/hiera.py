"""SAM 2.1 image encoder: the Hiera trunk and the FPN neck.

State-dict names follow SAM 2.1 (`image_encoder.trunk.*`, `image_encoder.neck.*`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HieraConfig
from .common import MLP, kept_while_frozen, sine_position_encoding


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, H, W, C] -> [B * nW, window, window, C] (zero-padded to a multiple of `window`)."""
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(x: torch.Tensor, window: int, padded: tuple[int, int],
                       size: tuple[int, int]) -> torch.Tensor:
    """Inverse of `window_partition`: [B * nW, window, window, C] -> [B, H, W, C]."""
    hp, wp = padded
    h, w = size
    b = x.shape[0] // (hp * wp // window // window)
    x = x.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous() if (hp > h or wp > w) else x


def _max_pool(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pool of a [B, H, W, C] map."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head attention whose queries are optionally 2x2 max-pooled (stage transitions)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: bool):
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(2)
        if self.q_pool:
            q = _max_pool(q.reshape(b, h, w, -1))
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block with windowed attention; the first block of a stage pools."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float,
                 q_pool: bool, window_size: int):
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_pool = q_pool
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, 2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x  # [B, H, W, C]
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.q_pool:
                shortcut = _max_pool(shortcut)
        window = self.window_size
        h, w = x.shape[1:3]
        if window > 0:
            x, padded = window_partition(x, window)
        x = self.attn(x)
        if self.q_pool:
            # The pooled queries live on a grid half the size, in windows half the size.
            window = self.window_size // 2
            h, w = shortcut.shape[1:3]
            padded = (h + (window - h % window) % window, w + (window - w % window) % window) \
                if window > 0 else (h, w)
        if self.window_size > 0:
            x = window_unpartition(x, window, padded, (h, w))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """Hierarchical ViT trunk. Input [B, 3, S, S]; outputs one map per stage, strides 4..32."""

    def __init__(self, cfg: HieraConfig):
        super().__init__()
        stages = cfg.stages
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][: cfg.q_pool]
        self.patch_embed = PatchEmbed(cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.embed_dim, *cfg.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, cfg.embed_dim, cfg.window_spec[0], cfg.window_spec[0]))

        dim, heads, stage = cfg.embed_dim, cfg.num_heads, 0
        self.blocks = nn.ModuleList()
        for i in range(sum(stages)):
            dim_out = dim
            # The window size is read before the stage counter moves, so the first block of a
            # stage (the one that pools) keeps the previous stage's window: SAM 2 does this.
            window = 0 if i in cfg.global_att_blocks else cfg.window_spec[stage]
            if i - 1 in self.stage_ends:
                dim_out, heads, stage = dim * 2, heads * 2, stage + 1
            self.blocks.append(MultiScaleBlock(dim, dim_out, heads, cfg.mlp_ratio,
                                               q_pool=i in q_pool_blocks, window_size=window))
            dim = dim_out
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """[1, h, w, C], kept while the weights stand (see `kept_while_frozen`)."""
        return kept_while_frozen(self, (self.pos_embed, self.pos_embed_window), (h, w),
                                 lambda: self._make_pos_embed(h, w))

    def _make_pos_embed(self, h: int, w: int) -> torch.Tensor:
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        win = self.pos_embed_window
        pos = pos + win.tile([1, 1, h // win.shape[-2], w // win.shape[-1]])
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)  # [B, H/4, W/4, C]
        x = x + self._pos_embed(*x.shape[1:3])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution, output channels-last [B, H/4, W/4, C]."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class _Lateral(nn.Module):
    """Holds the 1x1 lateral conv under the key `conv` (SAM 2's nn.Sequential naming)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FpnNeck(nn.Module):
    """1x1 laterals to `d_model`; top-down nearest x2 fusion only into the two coarsest levels."""

    def __init__(self, d_model: int, backbone_channel_list: list[int],
                 top_down_levels: tuple[int, ...] = (2, 3)):
        super().__init__()
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList(_Lateral(c, d_model) for c in backbone_channel_list)
        self.top_down_levels = top_down_levels

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """xs: fine-to-coarse trunk maps -> fine-to-coarse [B, d_model, H_i, W_i] maps."""
        n = len(self.convs) - 1
        out: list[torch.Tensor] = [None] * len(xs)  # type: ignore[list-item]
        prev = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.top_down_levels and prev is not None:
                prev = lateral + F.interpolate(prev.float(), scale_factor=2.0, mode="nearest")
            else:
                prev = lateral
            out[i] = prev
        return out


class ImageEncoder(nn.Module):
    """Hiera + FPN. Returns the three finest levels (strides 4, 8, 16) and their sine PEs.

    Output: `features` [s4 [B,C,S/4,S/4], s8 [B,C,S/8,S/8], s16 [B,C,S/16,S/16]] with
    C = d_model, and `pos` the matching [B, C, h, w] position encodings.
    """

    def __init__(self, cfg: HieraConfig, d_model: int):
        super().__init__()
        self.trunk = Hiera(cfg)
        self.neck = FpnNeck(d_model, self.trunk.channel_list)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features = self.neck(self.trunk(x))[:-1]  # "scalp": the stride-32 level is dropped
        pos = [sine_position_encoding(f.shape[1], f.shape[2], f.shape[3], f.device)
               .to(f.dtype).expand(f.shape[0], -1, -1, -1) for f in features]
        return features, pos
