"""SAM 2.1 memory attention: a RoPE transformer conditioning the current frame on the memory bank.

State-dict names follow SAM 2.1 (`memory_attention.layers.i.*`). The memory encoder is in
`memory_encoder.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import apply_rope, rope_table
from .cpu_attention import attend_float32, attend_low_precision, for_each_query


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

    def rotate(self, x: torch.Tensor, side: int) -> torch.Tensor:
        """Rotary encoding of x [..., k * side^2, dim]: each of the k grids gets the same table."""
        return apply_rope(x, rope_table(x.shape[-1], side, self.rope_theta, x.device))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                batch_chunk: int = 8) -> torch.Tensor:
        """q [Bq, N, C], k/v [Bk, M, Ckv] with M a multiple of N and Bq, Bk in {1, B}.

        Returns [max(Bq, Bk), N, C]. The batch is processed in chunks so that projected keys
        and values of all memory frames of all queries never exist at once. This is the
        differentiable path (training); inference uses `attend_raw_values` per query.
        """
        side = int(round(q.shape[1] ** 0.5))
        qr = self.rotate(self.q_proj(q), side)
        batch = max(q.shape[0], k.shape[0], v.shape[0])
        dropout = self.dropout_p if self.training else 0.0
        outs = []
        for s in range(0, batch, batch_chunk):
            e = min(s + batch_chunk, batch)
            kb = k if k.shape[0] == 1 else k[s:e]
            vb = v if v.shape[0] == 1 else v[s:e]
            qb = qr if qr.shape[0] == 1 else qr[s:e]
            m = e - s
            kb = self.rotate(self.k_proj(kb), side)
            vb = self.v_proj(vb)
            # contiguous: see `attend_batched` (cuDNN and stride-0 queries)
            out = F.scaled_dot_product_attention(
                qb.expand(m, -1, -1).contiguous().unsqueeze(1), kb.expand(m, -1, -1).unsqueeze(1),
                vb.expand(m, -1, -1).unsqueeze(1), dropout_p=dropout).squeeze(1)
            outs.append(out)
        return self.out_proj(torch.cat(outs, dim=0))

    def attend_raw_values(self, q_rot: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor,
                          rows: int | None = None, cols: int = 4096) -> torch.Tensor:
        """Inference path: `forward` for one batch row, with the value projection moved last.

        q_rot [N, C] (already projected and rotated), k_in / v_in [M, Ckv] -> [N, C]
        (for self-attention k_in = v_in = the normalised tokens).

        Attention rows sum to one and values carry no rotation, so
        `softmax(q k^T) (v W^T + b) = (softmax(q k^T) v) W^T + b`: the weighted sum runs over the
        raw Ckv-wide values (64 for memory instead of 256), 1.6x fewer FLOPs for the cross
        attention, which dominates the whole model. Scores are made and consumed in blocks of
        query rows, so [N, M] never exists (`rows`: default per dtype, see below).
        """
        side = int(round(q_rot.shape[0] ** 0.5))
        k = self.rotate(self.k_proj(k_in), side) * q_rot.shape[-1] ** -0.5
        v_in = v_in.to(q_rot.dtype)
        if q_rot.dtype == torch.float32:
            out = attend_float32(q_rot, k, v_in, rows or 512, cols)
        else:
            out = attend_low_precision(q_rot, k, v_in, rows or 256)
        return self.out_proj(self.v_proj(out.to(q_rot.dtype)))


def attend_batched(attn: "RoPEAttention", q_rot: torch.Tensor, k_in: torch.Tensor | None, v_in: torch.Tensor,
                   raw_values: bool = True, keys: torch.Tensor | None = None) -> torch.Tensor:
    """Inference, all batch rows at once: q_rot [Bq, N, C] (projected and rotated, Bq in
    {1, B}), k_in / v_in [B, M, Ckv] -> [B, N, C] through `scaled_dot_product_attention`
    (flash / memory-efficient kernels on a GPU).

    raw_values: weigh the raw Ckv-wide values and project after the sum (see
    `RoPEAttention.attend_raw_values`); else project the values first, as the official model.
    keys: the projected and rotated keys [B, M, C] if already known (`MemoryKeys`; k_in unused).
    """
    side = int(round(q_rot.shape[1] ** 0.5))
    k = attn.rotate(attn.k_proj(k_in), side) if keys is None else keys
    v = v_in if raw_values else attn.v_proj(v_in)
    # Materialised, not a stride-0 view: PyTorch lays out cuDNN's output like the query, and a
    # stride-0 batch put last makes cuDNN refuse it ("The stride for the last dimension ... should
    # be 1 for output_names::O", seen on an H200 in bfloat16); cuDNN is the fastest kernel there.
    q = q_rot.expand(k.shape[0], -1, -1).contiguous()
    # The scale is 1/sqrt(query width) whatever the width of the (raw) values.
    out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.to(k.dtype).unsqueeze(1)).squeeze(1)
    if raw_values:
        out = attn.v_proj(out)
    return attn.out_proj(out)


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

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor,
                batch_chunk: int = 8) -> torch.Tensor:
        """x [1 or B, N, C]; memory [B, M, mem_dim]; memory_pos [1 or B, M, mem_dim] -> [B, N, C].

        While x still has batch 1 (first layer: every query sees the same image features) the
        self-attention runs once instead of once per query. batch_chunk: see `RoPEAttention`.
        """
        x = self.self_attend(x, batch_chunk)
        h = self.norm2(x)
        x = x + self.dropout(self.cross_attn_image(h, memory + memory_pos, memory, batch_chunk))
        return self.feed_forward(x)

    def self_attend(self, x: torch.Tensor, batch_chunk: int = 8) -> torch.Tensor:
        h = self.norm1(x)
        return x + self.dropout(self.self_attn(h, h, h, batch_chunk))

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm3(x)
        return x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(h)))))

    def feed_forward_one(self, x: torch.Tensor, rows: int = 1024) -> torch.Tensor:
        """Inference: `feed_forward` for one query, x [N, C], in row chunks.

        The [N, ffn] hidden activation of a whole query is 32 MiB, just above the size glibc
        keeps in its heap: allocated whole, every call maps fresh pages and faults them in,
        which cost as much as the matmuls here. Chunks of `rows` are reused from the heap.
        """
        out = torch.empty_like(x)
        for a in range(0, x.shape[0], rows):
            xa = x[a:a + rows]
            out[a:a + rows] = xa + self.linear2(F.relu_(self.linear1(self.norm3(xa))))
        return out

    # Inference, one query at a time: x [N, C] (see MemoryAttention._forward_per_query).
    def self_attend_one(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        return x + self.self_attn.attend_raw_values(self.query_one(self.self_attn, h), h, h)

    def cross_attend_one(self, x: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor,
                         q_rot: torch.Tensor | None = None) -> torch.Tensor:
        """memory / memory_pos [M, mem_dim]; q_rot: the rotated query projection if already known
        (first layer: shared by all queries)."""
        if q_rot is None:
            q_rot = self.query_one(self.cross_attn_image, self.norm2(x))
        return x + self.cross_attn_image.attend_raw_values(q_rot, memory + memory_pos, memory)

    def self_attend_batched(self, x: torch.Tensor, raw_values: bool) -> torch.Tensor:
        """Inference: `self_attend` for x [B, N, C] through `attend_batched`."""
        h = self.norm1(x)
        return x + attend_batched(self.self_attn, self.query_batched(self.self_attn, h), h, h, raw_values)

    @staticmethod
    def query_batched(attn: RoPEAttention, h: torch.Tensor) -> torch.Tensor:
        """h [B, N, C] -> rotated query projection [B, N, C]."""
        return attn.rotate(attn.q_proj(h), int(round(h.shape[1] ** 0.5)))

    @staticmethod
    def query_one(attn: RoPEAttention, h: torch.Tensor) -> torch.Tensor:
        return attn.rotate(attn.q_proj(h), int(round(h.shape[0] ** 0.5)))


class MemoryKeys:
    """Each layer's cross-attention keys for a list of memories, from parts kept across steps.

    A memory's keys in layer l are `rotate(k_proj_l(memory + pe + tpos_r))` with tpos_r the
    temporal embedding of its age r, which changes at every step. The projection is linear and
    the rotation too, so they are `base_l + offset_l(r)`: `base_l = rotate(k_proj_l(memory +
    pe))` [B, N, C] is computed once per memory (`MemoryAttention.key_bases`) and kept while the
    memory stays in the bank, `offset_l(r) = rotate(W_l tpos_r)` [N, C] is the same for all
    memories of that age (`MemoryAttention.key_offsets`). A step then adds the two instead of
    projecting and rotating the keys of all its memories again (7 x 50 x 4096 per layer at the
    published sizes, 6 of the 7 memories' the same as at the previous step but for the offset).
    Same maths as projecting `memory + memory_pos`; rounding differs (the sum is rounded once
    more in low precision).

    bases: per layer the bases of the memories, in the order of `memory` along M, [B, M, C];
    offsets: per layer the offsets of their ages in that order, [M, C].
    """

    def __init__(self, bases: list[torch.Tensor], offsets: list[torch.Tensor]):
        self.bases = bases
        self.offsets = offsets

    def layer(self, index: int) -> torch.Tensor:
        """Keys [B, M, C] of layer `index`."""
        return self.bases[index] + self.offsets[index]


class MemoryAttention(nn.Module):
    """Conditions the current frame's features on the memory bank.

    curr [1, N, C] (shared by all queries), curr_pos [1, N, C], memory [B, M, mem_dim] (any
    float dtype: the bank stores bfloat16, it is used in the dtype of `curr`),
    memory_pos [1 or B, M, mem_dim] -> [B, N, C].
    """

    def __init__(self, d_model: int, mem_dim: int, num_layers: int, ffn_dim: int, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(d_model, mem_dim, ffn_dim, dropout)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def key_bases(self, memory: torch.Tensor, pe: torch.Tensor) -> list[torch.Tensor]:
        """memory [B, N, mem_dim] (one frame's memory tokens), pe [N, mem_dim] -> per layer the
        rotated key projection of `memory + pe`, [B, N, C] (see `MemoryKeys`)."""
        side = int(round(memory.shape[1] ** 0.5))
        k_in = memory + pe
        return [layer.cross_attn_image.rotate(layer.cross_attn_image.k_proj(k_in), side) for layer in self.layers]

    def key_offsets(self, tpos: torch.Tensor, tokens: int) -> list[torch.Tensor]:
        """tpos [mem_dim] (a temporal embedding) -> per layer its rotated key projection without
        bias at each of `tokens` positions, [N, C] (see `MemoryKeys`)."""
        side = int(round(tokens ** 0.5))
        out = []
        for layer in self.layers:
            attn = layer.cross_attn_image
            projected = F.linear(tpos, attn.k_proj.weight)  # [C]
            out.append(attn.rotate(projected.expand(tokens, -1), side))
        return out

    def forward(self, curr: torch.Tensor, curr_pos: torch.Tensor, memory: torch.Tensor,
                memory_pos: torch.Tensor, exact: bool = False, batched: bool = False,
                query_chunk: int | None = None, raw_values: bool = True,
                keys: MemoryKeys | None = None) -> torch.Tensor:
        """Inference options (ignored when training or with grad enabled):
        exact: the official order of operations, see `_forward_as_official` (wins over batched);
        batched: all queries at once (`_forward_batched`, the device path), `query_chunk` at a
        time (None: all) with `raw_values` as in `attend_batched`; else one query at a time
        (`_forward_per_query`, the CPU path). keys: the batched path's cross-attention keys from
        parts kept across steps (`MemoryKeys`; only with all queries at once)."""
        x = curr + 0.1 * curr_pos
        if not self.training and not torch.is_grad_enabled():
            if exact:
                return self._forward_as_official(x, memory, memory_pos)
            if batched:
                return self._forward_batched(x, memory, memory_pos, query_chunk, raw_values, keys)
            return self._forward_per_query(x, memory, memory_pos)
        memory = memory.to(x.dtype)
        for layer in self.layers:
            x = layer(x, memory, memory_pos)
        return self.norm(x)

    def _forward_per_query(self, x: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor) -> torch.Tensor:
        """Inference: the same maths, one query at a time through all layers.

        The batched path holds [B, N, ffn] activations (1.7 GB for the published models) and
        streams them through memory several times per layer; one query at a time keeps every
        intermediate small. Work identical for all queries (first layer's self-attention and
        its cross-attention query projection) is done once.
        """
        first = self.layers[0]
        x = first.self_attend_one(x[0])  # [N, C], identical for every query
        q_rot = first.query_one(first.cross_attn_image, first.norm2(x))
        out = x.new_empty(memory.shape[0], *x.shape)

        def one_query(b: int) -> None:
            pos = memory_pos[0] if memory_pos.shape[0] == 1 else memory_pos[b]
            mem = memory[b].to(x.dtype)  # stored in bfloat16: converted one query at a time
            y = first.feed_forward_one(first.cross_attend_one(x, mem, pos, q_rot))
            for layer in self.layers[1:]:
                y = layer.feed_forward_one(layer.cross_attend_one(layer.self_attend_one(y), mem, pos))
            out[b] = self.norm(y)

        for_each_query(one_query, memory.shape[0], x.device)
        return out

    def _forward_batched(self, x: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor,
                         query_chunk: int | None, raw_values: bool, keys: MemoryKeys | None = None) -> torch.Tensor:
        """Inference on a device: the maths of `_forward_per_query` with every operation over a
        chunk of queries at once, so a step is a few hundred kernel launches, not one per query
        and row block. The first layer's self-attention and cross-attention query projection are
        the same for every query and run once."""
        first = self.layers[0]
        x = first.self_attend(x)  # [1, N, C]: still the same for every query
        attn = first.cross_attn_image
        q_rot = first.query_batched(attn, first.norm2(x))
        count = memory.shape[0]
        chunk = count if query_chunk is None else max(1, query_chunk)
        if keys is not None and chunk < count:
            raise ValueError("precomputed keys need all queries at once (query_chunk None)")
        outs = []
        for s in range(0, count, chunk):
            mem = memory[s:s + chunk].to(x.dtype)
            k_in = None if keys is not None else \
                mem + (memory_pos if memory_pos.shape[0] == 1 else memory_pos[s:s + chunk])
            y = first.feed_forward(x + attend_batched(attn, q_rot, k_in, mem, raw_values,
                                                       None if keys is None else keys.layer(0)))
            for i, layer in enumerate(self.layers[1:], start=1):
                y = layer.self_attend_batched(y, raw_values)
                q = layer.query_batched(layer.cross_attn_image, layer.norm2(y))
                y = layer.feed_forward(y + attend_batched(layer.cross_attn_image, q, k_in, mem, raw_values,
                                                          None if keys is None else keys.layer(i)))
            outs.append(self.norm(y))
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _forward_as_official(self, x: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor) -> torch.Tensor:
        """Inference in the official order of operations and batch shapes: all queries at once.

        Every layer of every query is recomputed, keys and values are projected to 256-d before
        `scaled_dot_product_attention`: the rounding of the official model (the per-step outputs
        on CPU are bit-identical to it), at its speed and memory. All queries go through each
        product together, as there: a BLAS may round a row otherwise with the number of rows
        (oneMKL's Intel AVX-512 path does, in the feed-forward's second product, one query's
        4096 rows against the official 50 x 4096). `_forward_per_query` is faster (fewer FLOPs)
        and differs by ~1e-5 per step, which the bfloat16 memory carries forward.
        """
        y = x.expand(memory.shape[0], -1, -1)
        mem = memory.to(x.dtype)
        for layer in self.layers:
            # keys and values projected for all queries in one product each, as there (oneMKL's
            # calls, seen with scripts/reference/kernel_trace.py, then have the official row counts)
            y = layer(y, mem, memory_pos, batch_chunk=memory.shape[0])
        return self.norm(y)
