"""DINOv2 ViT (hub `dinov2_vits14` / `dinov2_vitl14`), the semantic encoder of EntitySAM.

Only what EntitySAM uses: patch tokens of the last block after the final LayerNorm.
State-dict names follow the hub model (`cls_token`, `pos_embed`, `blocks.i.ls1.gamma`, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DinoConfig
from .common import kept_while_frozen


class LayerScale(nn.Module):
    """A learned per-channel scale of a residual branch: [..., C] -> [..., C]."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Global multi-head self-attention over the tokens: [B, N, C] -> [B, N, C]."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Linear, GELU, linear per token: [..., C] -> [..., hidden] -> [..., C]."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """One pre-norm ViT block (attention, then MLP, each a layer-scaled residual): [B, N, C] -> [B, N, C]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches, linearly embedded: [B, 3, H, W] -> [B, (H / p) * (W / p), C], row-major."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, C]


class DinoV2(nn.Module):
    """ViT with a class token and learned position embeddings for a `pretrain_grid`^2 patch grid."""

    def __init__(self, cfg: DinoConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pretrain_grid**2 + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # unused at inference; in checkpoints
        self.patch_embed = PatchEmbed(cfg.patch_size, dim)
        self.blocks = nn.ModuleList(Block(dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """[1, 1 + grid_h * grid_w, C], kept while the weights stand (`kept_while_frozen`):
        CUDA's bicubic kernel took 2.4 ms (ViT-S) to 6 ms (ViT-L) of every H200 step for it."""
        return kept_while_frozen(self, (self.pos_embed,), (grid_h, grid_w),
                                 lambda: self._make_position_embedding(grid_h, grid_w))

    def _make_position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """[1, 1 + grid_h * grid_w, C]: class embedding + patch embeddings resized to the grid.

        DINOv2 resizes with a scale factor `(grid + 0.1) / M` rather than to a target size, and
        PyTorch then maps output to input pixels with that factor: reproduce it, not `size=`.
        """
        m = self.cfg.pretrain_grid
        pos = self.pos_embed.float()
        if grid_h == m and grid_w == m:
            return self.pos_embed
        off = self.cfg.interpolate_offset
        patch = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, mode="bicubic", antialias=False,
                              scale_factor=((grid_h + off) / m, (grid_w + off) / m))
        assert patch.shape[-2:] == (grid_h, grid_w)
        patch = patch.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([pos[:, :1], patch], dim=1).to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, S, S] (S a multiple of the patch size) -> normalised patch tokens [B, N, C]."""
        gh, gw = x.shape[-2] // self.cfg.patch_size, x.shape[-1] // self.cfg.patch_size
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(gh, gw)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 1:]
