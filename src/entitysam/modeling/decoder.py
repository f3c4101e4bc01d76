"""The entity decoder: SAM's two-way transformer turned into a query decoder.

Q entity queries, Q IoU queries and 2Q prompt tokens (a point and a padding token per query)
form one sequence of 4Q tokens. In every block they first self-attend all together (so objects
"talk"), then the sequence is cut into 4 chunks of Q that are stacked so that group b holds
tokens {b, Q+b, 2Q+b, 3Q+b}, and each group exchanges information with image row b.

Because the prompt tokens are laid out query-major (point_j, pad_j, point_j+1, ...), group b
gets the prompt tokens of queries b//2 and Q/2 + b//2, not its own. The official checkpoints
were trained with this grouping; it is reproduced exactly.

State-dict names follow the official `sam_mask_decoder.*`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm2d

NUM_GROUPS = 4  # token chunks per sequence: queries, IoU queries, 2 x prompts


def group_tokens(x: torch.Tensor) -> torch.Tensor:
    """[4Q, C] -> [Q, 4, C]: row b gets tokens b, Q+b, 2Q+b, 3Q+b."""
    return x.unflatten(0, (NUM_GROUPS, -1)).transpose(0, 1)


def ungroup_tokens(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `group_tokens`: [Q, 4, C] -> [4Q, C]."""
    return x.transpose(0, 1).flatten(0, 1)


class Attention(nn.Module):
    """SAM attention with an optional down-projection of the internal width."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1):
        super().__init__()
        inner = dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, h, N, d]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, Nq, C], k/v [B, Nk, C] -> [B, Nq, C]."""
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class QueryTwoWayBlock(nn.Module):
    """Global token self-attention, then grouped token->image, MLP and image->token attention."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool):
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, 2)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, tokens: torch.Tensor, image: torch.Tensor, token_pe: torch.Tensor,
                image_pe: torch.Tensor, batched: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens/token_pe [4Q, C]; image [Q, N, C]; image_pe [1, N, C].

        batched: (inference) all groups at once, as in training (the device path)."""
        seq = tokens.unsqueeze(0)
        if self.skip_first_layer_pe:  # first block: no PE and no residual
            seq = self.self_attn(seq, seq, seq)
        else:
            q = seq + token_pe.unsqueeze(0)
            seq = seq + self.self_attn(q, q, seq)
        tokens = self.norm1(seq[0])

        t, pe = group_tokens(tokens), group_tokens(token_pe)  # [Q, 4, C]
        if batched or torch.is_grad_enabled():
            # contiguous, as the official concatenation: the projections of a strided [Q, 4, C]
            # round otherwise on some BLAS paths (oneMKL's Intel AVX-512 one)
            t, pe = t.contiguous(), pe.contiguous()
            t, image = self.exchange(t, pe, image, image_pe)
            return ungroup_tokens(t), image
        # Inference: group by group, so each group's [N, C] maps stay in cache between the
        # element-wise steps instead of streaming [Q, N, C] through memory at every step.
        t_out, image_out = torch.empty_like(t), image.new_empty(image.shape)
        for i in range(t.shape[0]):
            t_out[i:i + 1], image_out[i:i + 1] = self.exchange(t[i:i + 1], pe[i:i + 1], image[i:i + 1], image_pe)
        return ungroup_tokens(t_out), image_out

    def exchange(self, t: torch.Tensor, pe: torch.Tensor, image: torch.Tensor,
                 image_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token -> image attention, token MLP, image -> token attention for groups of rows.

        t / pe [b, 4, C] grouped tokens, image [b, N, C], image_pe [1, N, C].
        """
        k = image + image_pe
        t = self.norm2(t + self.cross_attn_token_to_image(t + pe, k, image))
        t = self.norm3(t + self.mlp(t))
        image = self.norm4(image + self.cross_attn_image_to_token(k, t + pe, t))
        return t, image


class QueryTwoWayTransformer(nn.Module):
    """`depth` QueryTwoWayBlocks, then a final token -> image attention: image [Q, C, g, g] and
    tokens [4Q, C] (4 per query) -> (tokens [4Q, C], image [Q, g*g, C]); see `forward`."""

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(QueryTwoWayBlock(dim, num_heads, mlp_dim, skip_first_layer_pe=(i == 0))
                                    for i in range(depth))
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor,
                batched: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """image [Q, C, g, g], image_pe [1, C, g, g], tokens [4Q, C] -> (tokens [4Q, C], image [Q, g*g, C]).

        batched: see `QueryTwoWayBlock.forward`."""
        image = image.flatten(2).transpose(1, 2)
        image_pe = image_pe.flatten(2).transpose(1, 2)
        token_pe = tokens
        for layer in self.layers:
            tokens, image = layer(tokens, image, token_pe, image_pe, batched)
        # contiguous, as the official concatenation: the projection of a strided view rounds differently
        q = group_tokens(tokens + token_pe).contiguous()
        out = ungroup_tokens(self.final_attn_token_to_image(q, image + image_pe, image))
        return self.norm_final_attn(tokens + out), image


class EntityDecoder(nn.Module):
    """Predicts Q mask logits [Q, 1, 4g, 4g] and Q IoU estimates [Q, 1].

    `iou_token`, `mask_tokens`, hypernetworks 1-3 and `cls_prediction_head` are unused at
    inference (EntitySAM classifies with the prompt generator's head) but are in the
    checkpoints.
    """

    def __init__(self, dim: int, num_queries: int, depth: int, num_heads: int = 8, mlp_dim: int = 2048,
                 num_mask_tokens: int = 4):
        super().__init__()
        self.num_queries = num_queries
        self.transformer = QueryTwoWayTransformer(depth, dim, num_heads, mlp_dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim)
        self.queries = nn.Embedding(num_queries, dim)
        self.iou_queries = nn.Embedding(num_queries, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(num_mask_tokens))
        self.iou_prediction_head = MLP(dim, 256, num_mask_tokens, 3, sigmoid_output=True)
        self.cls_prediction_head = MLP(dim, 256, 2, 3)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                high_res: tuple[torch.Tensor, torch.Tensor],
                batched: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """image [Q, C, g, g] (dense prompt already added), image_pe [1, C, g, g],
        sparse prompts [Q, 2, C], high_res (s4' [1|Q, C/8, 4g, 4g], s8' [1|Q, C/4, 2g, 2g]).
        batched: (inference) every query's image updates and upscaling at once (the device
        path); else one query at a time, which keeps their maps in a CPU's cache.

        Returns mask logits [Q, 1, 4g, 4g] and IoU estimates [Q, 1] (after sigmoid).
        """
        q = self.num_queries
        tokens = torch.cat([self.queries.weight, self.iou_queries.weight, sparse.flatten(0, 1)], dim=0)
        hs, image = self.transformer(image, image_pe, tokens, batched)

        b, c, g = image.shape[0], image.shape[2], image_pe.shape[-1]
        image = image.transpose(1, 2).reshape(b, c, g, g)
        hyper = self.output_hypernetworks_mlps[0](hs[:q])  # [Q, C/8]
        # Upscaling is per query: one at a time keeps its [C/8, 4g, 4g] maps in cache (all Q at
        # once would be ~400 MiB per intermediate for the published models).
        chunk = q if batched or torch.is_grad_enabled() else 1
        masks = torch.cat([self._masks(image[i:i + chunk], hyper[i:i + chunk],
                                       [f if f.shape[0] == 1 else f[i:i + chunk] for f in high_res])
                           for i in range(0, q, chunk)])
        iou = self.iou_prediction_head(hs[q:2 * q])[:, :1]
        return masks, iou

    def _masks(self, image: torch.Tensor, hyper: torch.Tensor, high_res) -> torch.Tensor:
        """image [b, C, g, g], hyper [b, C/8] -> mask logits [b, 1, 4g, 4g]."""
        up1, norm1, act1, up2, act2 = self.output_upscaling
        s4, s8 = high_res
        upscaled = act1(norm1(up1(image) + s8))
        upscaled = act2(up2(upscaled) + s4)  # [b, C/8, 4g, 4g]
        return (hyper.unsqueeze(1) @ upscaled.flatten(2)).unflatten(-1, upscaled.shape[-2:])
