"""SAM 2.1 memory attention (RoPE transformer) and memory encoder.

State-dict names follow SAM 2.1 (`memory_attention.layers.i.*`, `memory_encoder.*`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, apply_rope, rope_tables, sine_position_encoding


class RoPEAttention(nn.Module):
    """Single-head attention with axial rotary encoding on queries and keys.

    Queries cover one side x side grid; keys may cover several grids (one per memory frame),
    each rotated with the same table. Values carry no rotation.
    """

    def __init__(self, dim: int, kv_in_dim: int | None = None, num_heads: int = 1,
                 dropout: float = 0.0, rope_theta: float = 10000.0):
        super().__init__()
        kv_in_dim = kv_in_dim or dim
        assert num_heads == 1, "SAM 2.1 memory attention is single-head"
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_in_dim, dim)
        self.v_proj = nn.Linear(kv_in_dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout_p = dropout
        self.rope_theta = rope_theta

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                batch_chunk: int = 8) -> torch.Tensor:
        """q [Bq, N, C], k/v [Bk, M, Ckv] with M a multiple of N and Bq, Bk in {1, B}.

        Returns [max(Bq, Bk), N, C]. The batch is processed in chunks so that projected keys
        and values of all memory frames of all queries never exist at once.
        """
        n = q.shape[1]
        side = int(round(n**0.5))
        cos, sin = rope_tables(self.q_proj.out_features, side, self.rope_theta, q.device)
        qr = apply_rope(self.q_proj(q), cos, sin)
        reps = k.shape[1] // n
        cos_k, sin_k = (cos.repeat(reps, 1), sin.repeat(reps, 1)) if reps > 1 else (cos, sin)
        batch = max(q.shape[0], k.shape[0], v.shape[0])
        dropout = self.dropout_p if self.training else 0.0
        # Under bfloat16/float16 autocast CPU SDPA runs far below the low-precision matmul
        # rate: use plain matmuls, attending over the raw values (see _attend_then_project).
        low_precision = qr.dtype in (torch.bfloat16, torch.float16) and qr.device.type == "cpu" and not dropout
        outs = []
        for s in range(0, batch, batch_chunk):
            e = min(s + batch_chunk, batch)
            kb = k if k.shape[0] == 1 else k[s:e]
            vb = v if v.shape[0] == 1 else v[s:e]
            qb = qr if qr.shape[0] == 1 else qr[s:e]
            kb = apply_rope(self.k_proj(kb), cos_k, sin_k)
            m = e - s
            if low_precision:
                outs.append(self._attend_then_project(qb.expand(m, -1, -1), kb.expand(m, -1, -1),
                                                      vb.expand(m, -1, -1).to(qb.dtype)))
                continue
            vb = self.v_proj(vb)
            out = F.scaled_dot_product_attention(
                qb.expand(m, -1, -1).unsqueeze(1), kb.expand(m, -1, -1).unsqueeze(1),
                vb.expand(m, -1, -1).unsqueeze(1), dropout_p=dropout).squeeze(1)
            outs.append(out)
        return self.out_proj(torch.cat(outs, dim=0))


    def _attend_then_project(self, q: torch.Tensor, k: torch.Tensor, v_in: torch.Tensor,
                             chunk: int = 1024) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v_proj(v_in) for q [m, N, d], k [m, M, d], v_in [m, M, c].

        Attention rows sum to one, so the value projection commutes with the weighted sum:
        the sum runs over the raw c-dim values (64 for memory instead of 256) and v_proj is
        applied once to the result. Scores are softmaxed in float32.
        """
        scale = q.shape[-1] ** -0.5
        out = torch.empty(q.shape[0], q.shape[1], v_in.shape[-1], dtype=q.dtype, device=q.device)
        for i in range(q.shape[0]):
            kt = k[i].transpose(0, 1)
            for a in range(0, q.shape[1], chunk):
                scores = torch.matmul(q[i, a:a + chunk], kt)
                weights = torch.softmax(scores.float() * scale, dim=-1).to(q.dtype)
                out[i, a:a + chunk] = torch.matmul(weights, v_in[i])
        return self.v_proj(out)


class MemoryAttentionLayer(nn.Module):
    """Pre-norm: RoPE self-attention, RoPE cross-attention to memory, ReLU FFN."""

    def __init__(self, d_model: int, mem_dim: int, ffn_dim: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = RoPEAttention(d_model, dropout=dropout)
        self.cross_attn_image = RoPEAttention(d_model, kv_in_dim=mem_dim, dropout=dropout)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor) -> torch.Tensor:
        """x [1 or B, N, C]; memory [B, M, mem_dim]; memory_pos [1 or B, M, mem_dim] -> [B, N, C].

        While x still has batch 1 (first layer: every query sees the same image features) the
        self-attention runs once instead of once per query.
        """
        h = self.norm1(x)
        x = x + self.dropout(self.self_attn(h, h, h))
        h = self.norm2(x)
        x = x + self.dropout(self.cross_attn_image(h, memory + memory_pos, memory))
        h = self.norm3(x)
        return x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(h)))))


class MemoryAttention(nn.Module):
    """Conditions the current frame's features on the memory bank.

    curr [1, N, C] (shared by all queries), curr_pos [1, N, C], memory [B, M, mem_dim],
    memory_pos [1 or B, M, mem_dim] -> [B, N, C].
    """

    def __init__(self, d_model: int, mem_dim: int, num_layers: int, ffn_dim: int, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(d_model, mem_dim, ffn_dim, dropout)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, curr: torch.Tensor, curr_pos: torch.Tensor, memory: torch.Tensor,
                memory_pos: torch.Tensor) -> torch.Tensor:
        x = curr + 0.1 * curr_pos
        for layer in self.layers:
            x = layer(x, memory, memory_pos)
        return self.norm(x)


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
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        h = self.gamma * self.pwconv2(self.act(self.pwconv1(h)))
        return x + h.permute(0, 3, 1, 2)


class Fuser(nn.Module):
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
        x = self.pix_feat_proj(pix_feat) + self.mask_downsampler(masks)
        return self.out_proj(self.fuser(x))

    def position_encoding(self, h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Sine encoding of the memory grid, [mem_dim, h, w] (identical for every memory)."""
        return sine_position_encoding(self.out_proj.out_channels, h, w, device)
