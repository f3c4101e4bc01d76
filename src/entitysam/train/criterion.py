"""Hungarian matching and the training losses of the official recipe (class-agnostic).

Per clip (one query <-> one entity over all T frames):

* matcher (no gradient): cost = 5 * sigmoid-BCE + 5 * dice (both on 12544 random points shared by
  all queries, targets and frames, mask logits and targets sampled bilinearly) + 3 * class cost
  `-softmax(5 * sigmoid(logits))[:, 1]`; solved with scipy's `linear_sum_assignment`;
* `loss_ce`: sigmoid focal loss (alpha 0.5, gamma 2) on both logit columns of all queries
  (target: column 1 = 1 for matched queries, everything else 0) / max(#matched, 1), plus softmax
  cross-entropy of the matched queries towards class 1;
* `loss_mask` / `loss_dice`: per matched pair and frame, BCE / dice on 12544 points (6272 most
  uncertain of 37632 random ones + 6272 random), summed and divided by `num_masks`;
* `loss_iou`: half squared error between the predicted IoU and the IoU of the binarised
  prediction with the (nearest-downsampled) target, over pairs whose IoU is > 0;
* every loss multiplied by 5.

`num_masks` = max(mean number of entities per clip over the global batch, 1) * T.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ..errors import TrainingDivergedError
from .config import CriterionConfig


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """detectron2's `point_sample`: inputs [B, C, H, W], coords [B, P, 2] in [0, 1] as (x, y)
    -> [B, C, P], bilinear, align_corners=False, zero padding."""
    return F.grid_sample(inputs, 2.0 * coords.unsqueeze(2) - 1.0, align_corners=False).squeeze(3)


def uncertain_points(logits: torch.Tensor, num_points: int, oversample_ratio: float,
                     importance_sample_ratio: float) -> torch.Tensor:
    """detectron2's `get_uncertain_point_coords_with_randomness` with uncertainty -|logit|.

    logits [B, 1, h, w] -> coords [B, num_points, 2].
    """
    b = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(b, num_sampled, 2, device=logits.device)
    uncertainty = -point_sample(logits, coords).abs()  # [B, 1, num_sampled]
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(uncertainty[:, 0, :], k=num_uncertain, dim=1)[1]
    chosen = torch.gather(coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        chosen = torch.cat([chosen, torch.rand(b, num_random, 2, device=logits.device)], dim=1)
    return chosen


def batch_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[Q, P] logits x [N, P] targets -> [Q, N] mean BCE-with-logits."""
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / inputs.shape[1]


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[Q, P] logits x [N, P] targets -> [Q, N] dice loss (+1 smoothing)."""
    p = inputs.sigmoid()
    numerator = 2 * (p @ targets.T)
    denominator = p.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def class_cost(pred_logits: torch.Tensor, num_targets: int) -> torch.Tensor:
    """[Q, 2] logits -> [Q, N]: -softmax(5 * sigmoid(logits))[:, 1] for every (foreground) target."""
    prob = (pred_logits.float().sigmoid() * 5).softmax(-1)
    return -prob[:, 1:2].expand(-1, num_targets)


class HungarianMatcher:
    """One-to-one matching of Q queries to N entities of a clip (at most min(Q, N) pairs)."""

    def __init__(self, cost_class: float = 3.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int = 12544):
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrix(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, target_masks: torch.Tensor,
                    coords: torch.Tensor | None = None) -> torch.Tensor:
        """pred_logits [Q, 2], pred_masks [Q, T, h, w] logits, target_masks [N, T, H, W] -> C [Q, N].

        coords [1, P, 2]: the shared sample points (drawn with torch.rand when None).
        """
        q, n = pred_masks.shape[0], target_masks.shape[0]
        if coords is None:
            coords = torch.rand(1, self.num_points, 2, device=pred_masks.device)
        tgt = point_sample(target_masks.to(pred_masks.dtype), coords.expand(n, -1, -1)).flatten(1)
        out = point_sample(pred_masks, coords.expand(q, -1, -1)).flatten(1)
        with torch.autocast(device_type=pred_masks.device.type, enabled=False):
            out, tgt = out.float(), tgt.float()
            c_mask = batch_sigmoid_ce_cost(out, tgt)
            c_dice = batch_dice_cost(out, tgt)
        c_class = class_cost(pred_logits, n)
        return self.cost_mask * c_mask + self.cost_dice * c_dice + self.cost_class * c_class

    @torch.no_grad()
    def __call__(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                 target_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (query indices ascending, matched target indices), int64 on CPU."""
        if target_masks.shape[0] == 0 or pred_masks.numel() == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return empty, empty
        cost = self.cost_matrix(pred_logits, pred_masks, target_masks).cpu().numpy()
        if not np.isfinite(cost).all():  # scipy's "matrix contains invalid numeric entries" said nothing of why
            raise TrainingDivergedError("the model's predictions became infinite or NaN")
        rows, cols = linear_sum_assignment(cost)
        return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.5,
                       gamma: float = 2.0) -> torch.Tensor:
    """The official `focal_conf_sigmoid_loss(is_cls=True)`: per row, summed over the columns."""
    t = targets.to(logits.dtype)
    logpt = F.logsigmoid(logits * (t * 2 - 1))
    pt = logpt.exp()
    at = alpha * t + (1 - alpha) * (1 - t)
    return (-at * (1 - pt) ** gamma * logpt).sum(-1)


def mask_iou(pred_logits: torch.Tensor, target_masks: torch.Tensor) -> torch.Tensor:
    """IoU of sigmoid(pred) > 0.5 with the target nearest-resized to the prediction size.

    pred_logits [N, T, h, w], target_masks [N, T, H, W] -> [N, T] (NaN where both are empty).
    """
    pred = torch.sigmoid(pred_logits) > 0.5
    tgt = F.interpolate(target_masks.to(pred_logits.dtype), size=pred_logits.shape[-2:], mode="nearest") > 0.5
    inter = (pred & tgt).sum(dim=(2, 3))
    union = (pred | tgt).sum(dim=(2, 3))
    return (inter / union).detach()


def point_mask_losses(logits: torch.Tensor, labels: torch.Tensor, num_masks: float) -> tuple[torch.Tensor, torch.Tensor]:
    """logits, labels [K, P] at the sampled points -> (sum of mean BCE, sum of dice) / num_masks."""
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    loss_mask = (bce.sum(1) / max(1, bce.shape[1])).sum() / num_masks
    p = logits.sigmoid()
    dice = 1 - (2 * (p * labels).sum(1) + 1) / (p.sum(1) + labels.sum(1) + 1)
    return loss_mask, dice.sum() / num_masks


class Criterion:
    """The four weighted losses of one clip (see the module docstring)."""

    def __init__(self, matcher: HungarianMatcher, cfg: CriterionConfig | None = None):
        self.matcher = matcher
        self.cfg = cfg or CriterionConfig()

    def loss_labels(self, logits: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """logits [Q, 2] (frame-averaged), src matched query indices."""
        k = len(src)
        targets = torch.zeros(logits.shape, dtype=torch.int64, device=logits.device)
        targets[src.to(logits.device), 1] = 1
        focal = sigmoid_focal_loss(logits, targets, self.cfg.focal_alpha, self.cfg.focal_gamma).sum() / max(k, 1)
        if k:
            ce = F.cross_entropy(logits[src.to(logits.device)], torch.ones(k, dtype=torch.int64, device=logits.device))
            loss = focal + ce
        else:
            loss = focal
        return k / max(k, 1) * loss  # the official per-GPU batch weighting with one clip: 1 or 0

    def loss_masks(self, src_masks: torch.Tensor, tgt_masks: torch.Tensor,
                   num_masks: float) -> tuple[torch.Tensor, torch.Tensor]:
        """src_masks [K, T, h, w] logits, tgt_masks [K, T, H, W] -> (BCE, dice) summed / num_masks."""
        src = src_masks.flatten(0, 1)[:, None]
        tgt = tgt_masks.flatten(0, 1)[:, None].to(src.dtype)
        with torch.no_grad():
            coords = uncertain_points(src, self.cfg.num_points, self.cfg.oversample_ratio,
                                      self.cfg.importance_sample_ratio)
            labels = point_sample(tgt, coords).squeeze(1)
        logits = point_sample(src, coords).squeeze(1)
        return point_mask_losses(logits, labels, num_masks)

    def loss_iou(self, src_masks: torch.Tensor, src_iou: torch.Tensor, tgt_masks: torch.Tensor) -> torch.Tensor:
        """Half squared error over entries whose target IoU is > 0 (NaN and 0 excluded)."""
        target = mask_iou(src_masks, tgt_masks).flatten()
        pred = src_iou.flatten()
        pos = target > 0.0
        count = int(pos.sum())
        if count == 0:
            return (pred * 0.0).sum()
        return (0.5 * (pred[pos] - target[pos].to(pred.dtype)) ** 2 / count).sum()

    def __call__(self, outputs: dict, target_masks: torch.Tensor, num_masks: float) -> tuple[dict, dict]:
        """outputs: pred_logits [Q, 2], pred_iou [Q, T], pred_masks [Q, T, h, w];
        target_masks [N, T, H, W]. Returns (weighted losses, statistics)."""
        logits, masks, iou = outputs["pred_logits"], outputs["pred_masks"], outputs["pred_iou"]
        src, tgt = self.matcher(logits, masks, target_masks)
        dev = masks.device
        src_d, tgt_d = src.to(dev), tgt.to(dev)
        loss_ce = self.loss_labels(logits, src)
        src_masks, tgt_masks = masks[src_d], target_masks[tgt_d]
        loss_mask, loss_dice = self.loss_masks(src_masks, tgt_masks, num_masks)
        loss_iou = self.loss_iou(src_masks, iou[src_d], tgt_masks)
        c = self.cfg
        losses = {
            "loss_ce": loss_ce * c.class_weight,
            "loss_mask": loss_mask * c.mask_weight,
            "loss_dice": loss_dice * c.dice_weight,
            "loss_iou": loss_iou * c.iou_weight,
        }
        with torch.no_grad():
            ious = mask_iou(src_masks.float(), tgt_masks) if len(src) else torch.zeros(0, 1)
            stats = {"num_matched": len(src),
                     "matched_iou": float(np.nanmean(ious.cpu().numpy())) if ious.numel() else float("nan")}
        return losses, {**stats, "indices": (src, tgt)}
