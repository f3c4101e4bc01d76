"""SAM prompt encoder (points only) and EntitySAM's prompt generator.

The prompt generator finds one point per entity query on the first frame and moves it by a
predicted offset on every later step. Its parameters sit at the top level of the official
state dict (`point_sampler_net`, `offset_attention`, ...), so `EntitySAM` owns them and calls
the functions below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, PositionEmbeddingRandom


class PromptEncoder(nn.Module):
    """Encodes point prompts; EntitySAM never passes boxes or masks.

    `mask_downscaling` and `point_embeddings[0, 2, 3]` are unused here but are part of the
    checkpoints.
    """

    def __init__(self, embed_dim: int, image_embedding_size: int, input_image_size: int,
                 mask_in_chans: int = 16):
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_pe(self) -> torch.Tensor:
        """Position encoding of the image-embedding grid: [1, C, g, g]."""
        g = self.image_embedding_size
        return self.pe_layer.grid(g, g).unsqueeze(0)

    def dense_embedding(self) -> torch.Tensor:
        """The 'no mask' dense prompt, [1, C, 1, 1] (broadcasts over the grid)."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def embed_positive_points(self, points: torch.Tensor) -> torch.Tensor:
        """One positive point per batch row plus SAM's padding point.

        points [B, 2] in input-image pixels, read as (x, y) -> sparse embeddings [B, 2, C]
        (row 0: the point, row 1: the padding token).
        """
        # Pixel-centre shift in the points' own dtype (bfloat16 under autocast, as official),
        # normalisation in float32.
        coords = (points + 0.5).float() / self.input_image_size
        # encoded beside the padding point (at 0, 0), as SAM's prompt encoder does: one
        # [2B, 2] @ [2, F] product, whose rows a BLAS may round otherwise than those of [B, 2] @ [2, F]
        # (oneMKL's Intel AVX2 path does); the padding's encoding is then dropped, as there
        with_pad = torch.stack([coords, torch.zeros_like(coords)], dim=1)  # [B, 2, 2]
        point = self.pe_layer.encode(with_pad)[:, 0] + self.point_embeddings[1].weight
        pad = self.not_a_point_embed.weight.expand(points.shape[0], -1)
        return torch.stack([point, pad], dim=1)


def sample_points(tokens: torch.Tensor, grid: tuple[int, int], sampler: nn.MultiheadAttention,
                  head: nn.Linear, image_size: int, need_weights: bool = False) -> torch.Tensor:
    """Initial point of every query from the first frame's features.

    tokens [g*g, C] (row-major grid positions) -> points [Q, 2] in input-image pixels.

    Self-attention over the g*g positions, a linear head gives Q scores per position, a softmax
    over positions gives one distribution per query and its expectation over the grid is the
    point. The grid is (row, col) and the result is later read as (x, y): the official model
    transposes its points, and was trained that way. `need_weights=True` is the official call
    (its unread head-averaged weights too): a PyTorch build may run the two on other kernels.
    """
    gh, gw = grid
    x = tokens.unsqueeze(0)  # [1, N, C]
    # The module itself, not an equivalent re-implementation: at inference PyTorch runs its fused
    # self-attention kernel, as in the official model. The points are a softmax-weighted mean over
    # 4096 positions fed to random Fourier features, so a re-implementation's rounding (1e-4 here)
    # moves them by up to 6e-3 px and every logit after them by ~1e-3 (ViT-L reference fixture).
    attended, _ = sampler(x, x, x, need_weights=need_weights)  # [1, N, C]
    weights = F.softmax(head(attended), dim=1)  # [1, N, Q]
    rows, cols = torch.meshgrid(torch.arange(gh, device=x.device), torch.arange(gw, device=x.device),
                                indexing="ij")
    grid = torch.stack([rows, cols], dim=-1).reshape(1, -1, 2).float()  # [1, N, 2] as (row, col)
    points = torch.bmm(weights.transpose(1, 2), grid)[0]  # [Q, 2]
    # Scaled in the points' own dtype (bfloat16 under autocast, as the official in-place
    # scaling: a float32 factor tensor would promote them to float32), by a Python number
    # where the grid is square (always, for the published models): a tensor made from a
    # list would be a blocking host-to-device copy on a GPU.
    if gw == gh:
        return points * (image_size / gw)
    return points * torch.tensor([image_size / gw, image_size / gh], device=x.device, dtype=points.dtype)


def fused_linear(linear: nn.Linear, sam: torch.Tensor, semantic: torch.Tensor,
                 batched: bool = False) -> torch.Tensor:
    """`linear(cat([sam, semantic], -1))` for the fused [SAM, DINOv2] features.

    sam [B, N, C], semantic [1, N, Cs] (shared by all B) -> [B, N, out]. One product over the
    concatenation, as the official model computes it: adding the products of the two halves
    instead rounds differently (1e-5), and through the bfloat16 memory that grows step by step
    past the reference tolerances on the ViT-L fixture. Built one row of B at a time, so the
    [B, N, C + Cs] concatenation (420 MiB for 50 queries) never exists whole, unless `batched`
    (the device path: one kernel rather than B).
    """
    if batched:
        return linear(torch.cat([sam, semantic.expand(sam.shape[0], -1, -1)], dim=-1))
    return torch.stack([linear(torch.cat([s, semantic[0]], dim=-1)) for s in sam])


def offset_attention(attn: nn.MultiheadAttention, queries: torch.Tensor, sam: torch.Tensor,
                     semantic: torch.Tensor) -> torch.Tensor:
    """Each entity query attends over its own fused features `[sam, semantic]`.

    queries [Q, E] (`offset_embedding.weight`), sam [Bf, N, E/2] with Bf in {1, Q} (1 when all
    queries see the same features, i.e. on the first step), semantic [1, N, E/2] -> [Q, E].
    Equals `nn.MultiheadAttention(queries, fused, fused)` row by row.

    Each query is a single token, so the key and value projections are moved to its side:
    `q . (W_k z + b_k) = (W_k^T q) . z + const` (the constant cancels in the softmax) and
    `sum a (W_v z + b_v) = W_v (sum a z) + b_v` (weights sum to one). Scores and weighted
    sums then run over the raw 2C-wide features, and the [Q, N, E] key and value tensors
    (2 x 107 GFLOP per step for the published models) are never built.
    """
    e, h = attn.embed_dim, attn.num_heads
    d, c = e // h, sam.shape[-1]
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, _, b_v = attn.in_proj_bias.chunk(3)
    q = F.linear(queries, w_q, b_q).unflatten(-1, (h, d)) * d ** -0.5  # [Q, h, d]
    u = torch.einsum("qhd,hdc->qhc", q, w_k.unflatten(0, (h, d)))  # [Q, h, E]: queries in feature space
    # scores [Q, h, N]: the semantic half is one product for all queries
    scores = (semantic[0] @ u[..., c:].flatten(0, 1).t()).t().unflatten(0, (-1, h))
    scores = scores + torch.matmul(u[..., :c], sam.transpose(1, 2))
    weights = torch.softmax(scores, dim=-1)
    mean_sem = (weights.flatten(0, 1) @ semantic[0]).unflatten(0, (-1, h))  # [Q, h, C]
    mean_sam = torch.matmul(weights, sam)  # [Q, h, C]
    pooled = torch.cat([mean_sam, mean_sem], dim=-1)  # [Q, h, E]: attention-weighted fused features
    out = torch.einsum("qhc,hdc->qhd", pooled, w_v.unflatten(0, (h, d))).flatten(1) + b_v
    return attn.out_proj(out)


def offset_attention_as_official(attn: nn.MultiheadAttention, queries: torch.Tensor, sam: torch.Tensor,
                                 semantic: torch.Tensor) -> torch.Tensor:
    """`offset_attention` computed as the official model does: the module called once on all
    queries' concatenated features [Q, N, E], with its default `need_weights=True` (the explicit
    attention path). Same arguments and result; it builds the [Q, N, E] features and their
    [N, Q, 2E] key/value projections (1.3 GB for the published models). The whole batch is
    needed for the official rounding: the module projects the sequence-first view of its input
    as N products of [Q, E] rows, whose rounding depends on Q."""
    q = queries.shape[0]
    fused = torch.cat([sam.expand(q, -1, -1), semantic.expand(q, -1, -1)], dim=-1)
    attended, _ = attn(queries.unsqueeze(1), fused, fused)  # [Q, 1, E]
    return attended[:, 0]
