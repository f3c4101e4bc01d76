"""Quick training-set diagnostics: matched-mask IoU of a model on training clips."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ..modeling.entitysam import EntitySAM
from .data import clip_targets, normalize_images
from .forward import clip_forward


def mask_iou_matrix(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred [Q, ...] bool, target [N, ...] bool -> IoU [Q, N] over all remaining axes."""
    p = pred.flatten(1).float()
    t = target.flatten(1).float()
    inter = p @ t.T
    union = p.sum(1)[:, None] + t.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def match_ious(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """IoU of every target with its Hungarian-matched prediction (max total IoU); 0 if unmatched."""
    if target.shape[0] == 0:
        return np.zeros(0)
    iou = mask_iou_matrix(pred, target).cpu().numpy()
    rows, cols = linear_sum_assignment(-iou)
    out = np.zeros(target.shape[0])
    out[cols] = iou[rows, cols]
    return out


@torch.no_grad()
def clip_matched_iou(model: EntitySAM, clip: dict) -> np.ndarray:
    """Per-entity IoU (over all frames, at input resolution) of the training forward's masks
    (logit > 0), each entity matched one-to-one to a query by maximum total IoU."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = clip_forward(model, normalize_images(clip["images"].to(device)))
        size = clip["images"].shape[-1]
        pred = F.interpolate(out["pred_masks"], size=(size, size), mode="bilinear", align_corners=False) > 0
        target = clip_targets(clip, device) > 0.5
        return match_ious(pred, target)
    finally:
        model.train(was_training)
