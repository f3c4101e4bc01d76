"""The training forward pass over one clip, with the official gradient flow.

It calls the model's submodules directly (the inference `EntitySAM.step` stays untouched) and
differs from inference only where the official training differs (TRAINING.md 6):

* frames 0 .. T-1 are visited once each (no warm-up passes); frame 0 is the initial step
  (point sampler on `V + no_mem_embed`), frame t >= 1 reads the memory of frames t-7 .. t-1;
* memory attention and memory encoding run under `no_grad`; memory is encoded from the model's
  own raw mask logits and stored in bfloat16;
* frame 0's point coordinates stay attached to the graph (the point sampler learns through the
  prompt encoder); on later frames P_t = P_(t-1).detach() + offset_t;
* no hole filling;
* the module is expected in `train()` mode (memory-attention dropout is active, as official).

Frozen encoders (Hiera + FPN, DINOv2) run without building a graph when none of their
parameters requires a gradient (their inputs never do), which gives the same values.

`memory_grad=True` (training config `model.memory_grad`, used by the demo recipe, which starts
from random weights) lets gradients flow through `condition_on_memory`: frame 0's
`V + no_mem_embed` and the memory attention of later frames. Officially these run under
`no_grad` because they are frozen SAM 2.1 parts; trained from scratch, the stride-16 image
features and the memory attention would otherwise never learn. The memory itself stays
detached (the memory encoder gets no gradient either way).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.entitysam import EntitySAM, FrameFeatures
from ..modeling.prompt import fused_linear, offset_attention, sample_points
from .criterion import Criterion


def _needs_grad(module: nn.Module) -> bool:
    return torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())


def encode_frame_train(model: EntitySAM, image: torch.Tensor) -> FrameFeatures:
    """Same values as `EntitySAM.encode_frame`; graphs only where parameters are trainable."""
    with torch.set_grad_enabled(_needs_grad(model.image_encoder)):
        features, pos = model.image_encoder(image)
    s4 = model.sam_mask_decoder.conv_s0(features[0])
    s8 = model.sam_mask_decoder.conv_s1(features[1])
    dino_in = F.interpolate(image, size=(model.cfg.dino_input_size,) * 2, mode="bilinear", align_corners=False)
    with torch.set_grad_enabled(_needs_grad(model.dinov2_feature_extractor)):
        tokens = model.dinov2_feature_extractor(dino_in)
    return FrameFeatures(features[2], pos[2], (s4, s8), model.dinov2_projector(tokens))


def train_step(model: EntitySAM, frame: FrameFeatures, memories: list[tuple[torch.Tensor, int]],
               prev_points: torch.Tensor | None, memory_grad: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One frame of a training clip.

    prev_points None marks the initial frame. Returns mask logits [Q, 1, h, w] (float32),
    IoU [Q], class logits [Q, 2], points [Q, 2] (attached to the graph).
    """
    cfg = model.cfg
    q, g = cfg.num_queries, cfg.grid_size
    # official: memory attention (and frame 0's no-mem path) without grad
    with torch.set_grad_enabled(memory_grad and torch.is_grad_enabled()):
        feats = model.condition_on_memory(frame, memories)  # [B, N, C]; the semantic half is [1, N, C]
    attended = offset_attention(model.offset_attention, model.offset_embedding.weight, feats, frame.semantic)
    if prev_points is None:
        points = sample_points(feats[0], (g, g), model.point_sampler_net, model.point_sampler_num, cfg.image_size)
    else:
        points = prev_points.detach() + model.offset_fc(attended)
    class_logits = model.offset_cls(attended)

    enhance = model.backbone_feature_enhancement
    image = fused_linear(enhance, feats, frame.semantic).transpose(1, 2).unflatten(-1, (g, g))
    image = (image + model.sam_prompt_encoder.dense_embedding()).expand(q, -1, -1, -1)
    sparse = model.sam_prompt_encoder.embed_positive_points(points)
    masks, iou = model.sam_mask_decoder(image, model.sam_prompt_encoder.dense_pe(), sparse, frame.high_res)
    return masks.float(), iou[:, 0], class_logits, points


def clip_forward(model: EntitySAM, images: torch.Tensor, memory_grad: bool = False) -> dict:
    """images [T, 3, S, S] normalised -> outputs of the whole clip.

    pred_logits [Q, 2] (mean over frames), pred_iou [Q, T], pred_masks [Q, T, h, w] (float32),
    points [T, Q, 2] (detached).
    """
    num_frames = images.shape[0]
    capacity = model.cfg.num_maskmem
    bank: list[tuple[int, torch.Tensor]] = []
    points = None
    masks_all, iou_all, cls_all, pts_all = [], [], [], []
    for t in range(num_frames):
        frame = encode_frame_train(model, images[t:t + 1])
        memories = [(mem, t - s) for s, mem in bank if 1 <= t - s <= capacity]
        masks, iou, cls, points = train_step(model, frame, memories, points, memory_grad)
        masks_all.append(masks[:, 0])
        iou_all.append(iou)
        cls_all.append(cls)
        pts_all.append(points.detach())
        if t + 1 < num_frames:  # the last frame's memory is never read
            with torch.no_grad():
                memory = model.encode_memory(frame, masks)
            bank.append((t, memory.to(torch.bfloat16)))
            bank = bank[-capacity:]
    return {
        "pred_logits": torch.stack(cls_all).mean(0),
        "pred_iou": torch.stack(iou_all, dim=1),
        "pred_masks": torch.stack(masks_all, dim=1),
        "points": torch.stack(pts_all),
    }


class TrainingModule(nn.Module):
    """Model + criterion as one module, so that DDP sees the whole training forward.

    `forward(images, target_masks, num_masks)` returns the dict of weighted losses; the last
    call's statistics are kept in `self.last_stats` (not part of the graph).
    """

    def __init__(self, model: EntitySAM, criterion: Criterion, memory_grad: bool = False):
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.memory_grad = memory_grad
        self.last_stats: dict = {}

    def forward(self, images: torch.Tensor, target_masks: torch.Tensor, num_masks: float) -> dict:
        outputs = clip_forward(self.model, images, self.memory_grad)
        losses, stats = self.criterion(outputs, target_masks, num_masks)
        self.last_stats = stats
        return losses
