"""The training forward pass over one clip: the model's own step, with the official gradient flow.

Every frame goes through `EntitySAM.encode_frame` and `EntitySAM.step`, the step inference runs;
this module only orchestrates frames, memories and the loss. Training differs from inference
only where the official training does (section 6 of the training specification,
shared/spec/TRAINING.md, which lies beside this repository, not in it):

* frames 0 .. T-1 are visited once each (no warm-up passes); frame 0 is the initial step
  (point sampler on `V + no_mem_embed`), frame t >= 1 reads the memory of frames t-7 .. t-1
  (`recall_memories`, the inference rule);
* memory conditioning and memory encoding build no autograd graph (the step's
  `conditioning_grad=False`, `memory_encoding_grad=False`); memory is encoded from the model's
  own raw mask logits and stored in bfloat16 (`MEMORY_DTYPE`), and the last frame's memory,
  never read, is not encoded;
* frame 0's points stay in the graph (the point sampler learns through the prompt encoder); on
  later frames P_t = P_(t-1).detach() + offset_t;
* no hole filling;
* the module is expected in `train()` mode (memory-attention dropout is active, as official).

Frozen encoders (Hiera + FPN, DINOv2) build no graph under grad mode: none of their parameters
requires a gradient and the image never does.

`memory_grad=True` (training config `model.memory_grad`, used by the demo recipe, which starts
from random weights) lets gradients flow through the memory conditioning: frame 0's
`V + no_mem_embed` and the memory attention of later frames. Officially these run under
`no_grad` because they are frozen SAM 2.1 parts; trained from scratch, the stride-16 image
features and the memory attention would otherwise never learn. The memory itself stays
detached (the memory encoder gets no gradient either way).
"""

from __future__ import annotations

import torch
from torch import nn

from ..modeling.entitysam import MEMORY_DTYPE, EntitySAM, StepOutput, recall_memories
from .criterion import Criterion


def clip_forward(model: EntitySAM, images: torch.Tensor, memory_grad: bool = False) -> dict:
    """images [T, 3, S, S] normalised -> outputs of the whole clip.

    pred_logits [Q, 2] (mean over frames), pred_iou [Q, T], pred_masks [Q, T, h, w] (float32),
    points [T, Q, 2] (detached).
    """
    num_frames = images.shape[0]
    capacity = model.cfg.num_maskmem
    stored: list[tuple[int, torch.Tensor]] = []  # (frame, memory), the last `capacity` frames
    points = None
    steps: list[StepOutput] = []
    for t in range(num_frames):
        frame = model.encode_frame(images[t:t + 1])
        out = model.step(frame, recall_memories(stored, t, capacity), points,
                         encode_memory=t + 1 < num_frames,  # the last frame's memory is never read
                         conditioning_grad=memory_grad, memory_encoding_grad=False)
        points = out.points
        if out.memory is not None:
            stored.append((t, out.memory.to(MEMORY_DTYPE)))
            del stored[:-capacity]
        steps.append(out)
    return {
        "pred_logits": torch.stack([s.class_logits for s in steps]).mean(0),
        "pred_iou": torch.stack([s.iou for s in steps], dim=1),
        "pred_masks": torch.stack([s.mask_logits[:, 0] for s in steps], dim=1),
        "points": torch.stack([s.points for s in steps]),
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
