"""The EntitySAM model: module tree of the official checkpoints and the per-step computation.

One step turns the current frame's features, the memory bank and the points of the previous
step into Q = 50 entity masks:

1. `F`: image features conditioned on memory (memory attention); on the first step
   `V + no_mem_embed` instead.
2. `Z = [F, DINOv2]`, 2C wide. Offset attention of Q learned queries over `Z` gives
   classification logits and (after the first step) point offsets; on the first step the point
   sampler places the points. `Y = Linear(Z)` is the decoder's image embedding.
3. Prompt encoder (one positive point per query) and entity decoder -> mask logits and IoU.
4. Memory encoder on the upsampled logits -> this step's memory.

The model holds no per-video state: the caller owns the memory bank and the points. Inference
(`entitysam.inference.tracker`) and training (`entitysam.train.forward`) run this same step; which
memories a step reads is `recall_memories`, and training only switches off gradients where the
official training does (see `EntitySAM.step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EntitySAMConfig
from .decoder import EntityDecoder
from .dinov2 import DinoV2
from .hiera import ImageEncoder
from .memory import MemoryAttention, MemoryKeys
from .memory_encoder import MemoryEncoder
from .prompt import PromptEncoder, fused_linear, offset_attention, offset_attention_as_official, sample_points

# The official code stores every step's memory in bfloat16 (inference and training alike): the
# next steps read it rounded, which is part of the model's results.
MEMORY_DTYPE = torch.bfloat16


def official_token_rows(tokens: torch.Tensor, batch: int) -> torch.Tensor:
    """tokens [N, C] -> the same values, each row `batch * C` elements after the previous one.

    The official point sampler reads the first query's features out of the [N, B, C] token
    layout of SAM 2 (B = Q queries), and a BLAS may round a product whose rows sit at another
    stride otherwise (MKL_VERBOSE shows the leading dimension it is handed). Only the rows are
    written, so the [N, batch, C] buffer behind them costs about one page a row.
    """
    buffer = tokens.new_empty(tokens.shape[0], batch, tokens.shape[1])
    buffer[:, 0] = tokens
    return buffer[:, 0]


def recall_memories(stored: Iterable[tuple[int, torch.Tensor]], step: int,
                    capacity: int) -> list[tuple[torch.Tensor, int]]:
    """The memories step `step` reads: those stored by steps `step - capacity ... step - 1`.

    stored: (step index, memory [Q, mem_dim, g, g]) pairs, oldest first (older or later entries
    are skipped). Returns (memory, steps_back r) pairs, oldest first, the form
    `EntitySAM.condition_on_memory` takes: r >= 1 selects `maskmem_tpos_enc[r - 1]`, so
    `capacity` is at most `cfg.num_maskmem` (the official bank: the last 7 steps).
    """
    return [(memory, step - s) for s, memory in stored if 1 <= step - s <= capacity]


@dataclass
class FrameFeatures:
    """Everything a step needs from one input frame (batch 1, shared by all queries).

    vision [1, C, g, g] (stride 16), vision_pos [1, C, g, g], high_res (s4' [1, C/8, 4g, 4g],
    s8' [1, C/4, 2g, 2g]) already projected by the decoder's conv_s0/conv_s1,
    semantic [1, g*g, C] DINOv2 tokens after the projector.
    """

    vision: torch.Tensor
    vision_pos: torch.Tensor
    high_res: tuple[torch.Tensor, torch.Tensor]
    semantic: torch.Tensor


@dataclass
class StepOutput:
    """Per-step results for the Q queries.

    mask_logits [Q, 1, 4g, 4g] raw low-res logits (before hole filling), iou [Q],
    class_logits [Q, 2], points [Q, 2] (the prompt coordinates used, input-image pixels),
    memory [Q, mem_dim, g, g] (None when not requested).
    """

    mask_logits: torch.Tensor
    iou: torch.Tensor
    class_logits: torch.Tensor
    points: torch.Tensor
    memory: torch.Tensor | None

    @property
    def entity_scores(self) -> torch.Tensor:
        """eIoU [Q] = IoU * sigmoid(max over both class logits), as the official model."""
        return self.iou * torch.sigmoid(self.class_logits.max(dim=-1).values)


class EntitySAM(nn.Module):
    """EntitySAM with the official state-dict layout (see `checkpoints.py` for loading)."""

    def __init__(self, cfg: EntitySAMConfig):
        super().__init__()
        self.cfg = cfg
        c, m, q, g = cfg.hidden_dim, cfg.mem_dim, cfg.num_queries, cfg.grid_size
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(cfg.num_maskmem, 1, 1, m))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, c))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, c))  # unused, in checkpoints
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, m))  # adds exactly 0 here

        self.image_encoder = ImageEncoder(cfg.hiera, c)
        self.memory_attention = MemoryAttention(c, m, cfg.memory_attention_layers, cfg.memory_attention_ffn_dim)
        self.memory_encoder = MemoryEncoder(c, m, cfg.fuser_layers)
        self.sam_prompt_encoder = PromptEncoder(c, g, cfg.image_size)
        self.sam_mask_decoder = EntityDecoder(c, q, cfg.decoder_depth, cfg.decoder_heads, cfg.decoder_mlp_dim)
        self.obj_ptr_tpos_proj = nn.Linear(c, m)  # unused (no object pointers), in checkpoints

        self.dinov2_feature_extractor = DinoV2(cfg.dino)
        self.dinov2_projector = nn.Linear(cfg.dino.embed_dim, c)
        self.point_sampler_net = nn.MultiheadAttention(c, cfg.offset_heads, batch_first=True)
        self.point_sampler_num = nn.Linear(c, q)
        self.offset_attention = nn.MultiheadAttention(2 * c, cfg.offset_heads, batch_first=True)
        self.offset_fc = nn.Linear(2 * c, 2)
        self.offset_embedding = nn.Embedding(q, 2 * c)
        self.offset_cls = nn.Linear(2 * c, 2)
        self.backbone_feature_enhancement = nn.Linear(2 * c, c)

    # ------------------------------------------------------------------ per frame
    def encode_frame(self, image: torch.Tensor) -> FrameFeatures:
        """image [1, 3, S, S], normalised -> FrameFeatures (Hiera + FPN, DINOv2).

        Under grad mode (training) an encoder builds an autograd graph only if one of its
        parameters requires a gradient: the image never does, so frozen encoders cost no graph.
        """
        features, pos = self.image_encoder(image)
        s4 = self.sam_mask_decoder.conv_s0(features[0])
        s8 = self.sam_mask_decoder.conv_s1(features[1])
        dino_in = F.interpolate(image, size=(self.cfg.dino_input_size,) * 2, mode="bilinear", align_corners=False)
        semantic = self.dinov2_projector(self.dinov2_feature_extractor(dino_in))
        return FrameFeatures(features[2], pos[2], (s4, s8), semantic)

    # ------------------------------------------------------------------ memory keys kept across steps
    def _memory_pe(self, device: torch.device) -> torch.Tensor:
        g = self.cfg.grid_size
        return self.memory_encoder.position_encoding(g, g, device).flatten(1).transpose(0, 1)  # [N, m]

    def memory_key_bases(self, memory: torch.Tensor) -> list[torch.Tensor]:
        """memory [Q, mem_dim, g, g] (as stored) -> per memory-attention layer the part of its
        keys that does not depend on its age, [Q, g*g, C] (`MemoryKeys`)."""
        tokens = memory.flatten(2).transpose(1, 2)
        return self.memory_attention.key_bases(tokens, self._memory_pe(memory.device))

    def memory_key_offsets(self) -> list[torch.Tensor]:
        """Per memory-attention layer the age-dependent part of the keys, [num_maskmem, g*g, C]:
        row r - 1 for a memory r steps back (`MemoryKeys`)."""
        per_age = [self.memory_attention.key_offsets(self.maskmem_tpos_enc[r, 0, 0], self.cfg.grid_size ** 2)
                   for r in range(self.cfg.num_maskmem)]
        return [torch.stack(layer) for layer in zip(*per_age)]

    # ------------------------------------------------------------------ per step
    def condition_on_memory(self, frame: FrameFeatures, memories: list[tuple[torch.Tensor, int]],
                            attention_dtype: torch.dtype | None = None, exact: bool = False,
                            batched: bool = False, query_chunk: int | None = None,
                            key_parts: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
                            ) -> torch.Tensor:
        """Memory-conditioned features [B, N, C] (B = 1 without memory, else Q).

        memories: (memory [Q, mem_dim, g, g], steps_back r >= 1) pairs (the bank gives them oldest
        first; the tracker reorders them with key_parts, see below). The
        temporal embedding of a memory r steps back is `maskmem_tpos_enc[r - 1]`.
        attention_dtype: run the memory attention alone under autocast in this dtype (the CPU
        bfloat16 mode: it is ~85% of the arithmetic, and the only part whose reduced precision
        leaves the masks within 1% of float32).
        exact: the official order of operations (see `MemoryAttention._forward_as_official`).
        batched, query_chunk: all queries at once (`query_chunk` at a time), the device path.
        key_parts: (per layer the `memory_key_bases` of these memories in their order along the
        tokens [Q, M, C], `memory_key_offsets`): the batched path's keys from parts kept across
        steps instead of projected again (`MemoryKeys`). Attention does not depend on the order
        of the memories (keys, values and positions follow the list), so any order may be given.
        """
        curr = frame.vision.flatten(2).transpose(1, 2)  # [1, N, C]
        if not memories:
            return curr + self.no_mem_embed
        pos = frame.vision_pos.flatten(2).transpose(1, 2)
        mem_pe = self._memory_pe(curr.device)
        if exact:
            # the official bank's sequence-first layout [M, Q, m], read batch-first: the key and
            # value projections then take the official path (matmul, bias added after), not one
            # addmm over contiguous rows (seen with kernel_trace.py --level aten)
            memory = torch.cat([mem.flatten(2).permute(2, 0, 1) for mem, _ in memories]).transpose(0, 1)
        else:
            memory = torch.cat([mem.flatten(2).transpose(1, 2) for mem, _ in memories], dim=1)
        memory_pos = torch.cat([mem_pe + self.maskmem_tpos_enc[r - 1, 0] for _, r in memories], dim=0)
        keys = None
        if key_parts is not None and batched and not exact:
            bases, offsets = key_parts
            keys = MemoryKeys(bases, [torch.cat([layer[r - 1] for _, r in memories]) for layer in offsets])
        if attention_dtype is None:
            return self.memory_attention(curr, pos, memory, memory_pos.unsqueeze(0), exact=exact,
                                         batched=batched, query_chunk=query_chunk, keys=keys)
        if exact:
            raise ValueError("exact mode runs in float32 (the official CPU arithmetic)")
        with torch.autocast(curr.device.type, dtype=attention_dtype):
            return self.memory_attention(curr, pos, memory, memory_pos.unsqueeze(0), batched=batched,
                                         query_chunk=query_chunk, keys=keys).float()

    def step(self, frame: FrameFeatures, memories: list[tuple[torch.Tensor, int]],
             points: torch.Tensor | None, encode_memory: bool = True,
             attention_dtype: torch.dtype | None = None, exact: bool = False,
             batched: bool = False, query_chunk: int | None = None,
             conditioning_grad: bool = True, memory_encoding_grad: bool = True,
             key_parts: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None) -> StepOutput:
        """One tracking step (inference and training).

        memories, attention_dtype, key_parts: see `condition_on_memory` (memories empty on the
        first step).
        exact: the official order of operations in the memory and offset attentions, where the
        default reorders them for speed (same maths, rounding differs by ~1e-5 per step).
        points [Q, 2]: the previous step's points, or None on the first step, where the point
        sampler places them.
        batched: (inference) every part over all queries at once, `query_chunk` queries at a
        time in the memory attention and memory encoder (None: all): the device path, a few
        thousand kernel launches per step. Else one query at a time where that keeps a CPU's
        caches warm. Same maths; rounding differs (~1e-6 per step in float32).
        conditioning_grad, memory_encoding_grad: (training, under grad mode) False runs
        `condition_on_memory` (memory attention; on the first step `V + no_mem_embed`) or this
        step's memory encoding without an autograd graph. The official training does both:
        these are frozen SAM 2.1 parts, and no gradient flows from one step to the next.
        Everything else builds the graph: the first step's points (point sampler) and later
        steps' offsets reach the masks through the prompt encoder. The returned points are
        detached; pass them back as `points` (the official training detaches them too).
        """
        cfg = self.cfg
        q, g = cfg.num_queries, cfg.grid_size
        with torch.set_grad_enabled(torch.is_grad_enabled() and conditioning_grad):
            feats = self.condition_on_memory(frame, memories, attention_dtype, exact,
                                             batched and not exact, query_chunk, key_parts)  # [B, N, C]

        attend = offset_attention_as_official if exact else offset_attention
        attended = attend(self.offset_attention, self.offset_embedding.weight, feats, frame.semantic)
        # After the offset attention: the order of the uses of `feats` is the order in which
        # autograd sums their gradients (training with conditioning_grad: kept bit for bit).
        if points is None:
            tokens = official_token_rows(feats[0], q) if exact else feats[0]
            points = sample_points(tokens, (g, g), self.point_sampler_net, self.point_sampler_num,
                                   cfg.image_size, need_weights=exact)
        if memories:
            points = points + self.offset_fc(attended)
        class_logits = self.offset_cls(attended)  # [Q, 2]

        # exact: the official batch shapes (all queries in one product): BLAS kernels may round a
        # row differently with the number of rows (oneMKL's Intel AVX-512 path does, for 4 rows)
        official_shapes = batched or exact
        enhance = self.backbone_feature_enhancement
        if exact:
            # the first step too: the official model projects all Q (equal) rows in one product
            feats = feats.expand(q, -1, -1)
        image = fused_linear(enhance, feats, frame.semantic, official_shapes)  # [B, N, C]
        image = image.transpose(1, 2).unflatten(-1, (g, g))
        image = (image + self.sam_prompt_encoder.dense_embedding()).expand(q, -1, -1, -1)
        if exact:
            # one copy per query, laid out as the official [Q, g*g, C] token rows (a BLAS may round
            # strided or stride-0 rows otherwise)
            image = image.contiguous(memory_format=torch.channels_last)
        sparse = self.sam_prompt_encoder.embed_positive_points(points)
        masks, iou = self.sam_mask_decoder(image, self.sam_prompt_encoder.dense_pe(), sparse, frame.high_res,
                                           official_shapes)
        masks = masks.float()

        memory = None
        if encode_memory:
            chunk = (query_chunk or q) if batched else 1
            with torch.set_grad_enabled(torch.is_grad_enabled() and memory_encoding_grad):
                memory = self.encode_memory(frame, masks, chunk, exact)
        return StepOutput(masks, iou[:, 0], class_logits, points.detach(), memory)

    def encode_memory(self, frame: FrameFeatures, mask_logits: torch.Tensor, chunk: int = 1,
                      exact: bool = False) -> torch.Tensor:
        """mask_logits [Q, 1, 4g, 4g] -> memory [Q, mem_dim, g, g] from the raw (unfilled) logits.

        Queries are encoded `chunk` at a time: each is independent, and the full-resolution
        intermediates of all 50 at once (up to 800 MiB each) would be written to and read back
        from main memory at every layer instead of staying in cache.

        exact: the official batch shapes: all Q queries at once, and the image features projected
        as the official model gives them, broadcast to Q rows. On AVX-512 CPUs these convolutions
        round differently for a batch of 1 than for the same rows among 50 (seen on an AMD EPYC
        Zen 4 with scripts/reference/intermediates.py: the mask downsampler's last 1x1
        convolution and this projection, ~1e-5).
        """
        size = self.cfg.image_size
        if exact:
            chunk = mask_logits.shape[0]
            # rows of a stride-0 batch, all equal: one is kept, `fuse` broadcasts it
            projected = self.memory_encoder.pix_feat_proj(frame.vision.expand(chunk, -1, -1, -1))[:1]
        else:
            # The image encoder's features are channels-last; the official model feeds this 1x1
            # convolution a default-layout copy ((HW, B, C) tokens viewed back as (B, C, H, W)), and
            # the convolution kernel, hence its rounding, depends on the layout.
            projected = self.memory_encoder.pix_feat_proj(frame.vision.contiguous())
        out = []
        for logits in mask_logits.split(chunk):
            high = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
            mask = torch.sigmoid(high) * self.cfg.sigmoid_scale_for_mem_enc + self.cfg.sigmoid_bias_for_mem_enc
            out.append(self.memory_encoder.fuse(projected, mask))
        return torch.cat(out)

