"""SAM 2.1 memory encoder: fuses a frame's image features with a mask into a compact memory.

State-dict names follow SAM 2.1 (`memory_encoder.*`).
"""

from __future__ import annotations

import torch
from torch import nn

from .common import LayerNorm2d, sine_position_encoding


class MaskDownSampler(nn.Module):
    """Four [conv 3x3 stride 2, LayerNorm2d, GELU] stages (1-4-16-64-256 ch) and a 1x1 conv."""

    def __init__(self, embed_dim: int, num_stages: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for _ in range(num_stages):
            cout = cin * 4
            layers += [nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1), LayerNorm2d(cout), nn.GELU()]
            cin = cout
        layers.append(nn.Conv2d(cin, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7, LayerNorm2d, 4x pointwise MLP with layer scale."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        h = self.gamma * self.pwconv2(self.act(self.pwconv1(h)))
        return x + h.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """`num_layers` CXBlocks (residual, shape-preserving): [B, C, h, w] -> [B, C, h, w]."""

    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Fuses image features with a mask into a compact memory.

    pix_feat [Bp, C, h, w] (Bp in {1, B}), masks [B, 1, 16h, 16w] (already squashed to
    20 * sigmoid(logit) - 10) -> memory features [B, mem_dim, h, w].
    """

    def __init__(self, in_dim: int, out_dim: int, fuser_layers: int):
        super().__init__()
        self.mask_downsampler = MaskDownSampler(in_dim)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(in_dim, fuser_layers)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, pix_feat: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.pix_feat_proj(pix_feat), masks)

    def fuse(self, projected: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """`forward` with `pix_feat_proj(pix_feat)` already computed (shared by every query)."""
        return self.out_proj(self.fuser(projected + self.mask_downsampler(masks)))

    def position_encoding(self, h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Sine encoding of the memory grid, [mem_dim, h, w] (identical for every memory)."""
        return sine_position_encoding(self.out_proj.out_channels, h, w, device)
