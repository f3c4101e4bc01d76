"""Model construction for training, trainable parameter groups, optimizer and LR schedule."""

from __future__ import annotations

import bisect
import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import load_dinov2_pretrained, load_entitysam, load_sam2_pretrained
from ..errors import CheckpointMismatchError, CheckpointReadError, printable
from ..config import EntitySAMConfig, get_config
from ..modeling.entitysam import EntitySAM
from .config import OFFICIAL_TRAINABLE_PREFIXES, TrainConfig

log = logging.getLogger("entitysam.train")

# Public download locations of the pretrained parts (used when a known file name is not found locally).
KNOWN_URLS = {
    "sam2.1_hiera_small.pt": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_small.pt",
    "sam2.1_hiera_large.pt": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt",
    "sam2.1_hiera_base_plus.pt": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_base_plus.pt",
    "sam2.1_hiera_tiny.pt": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt",
    "dinov2_vits14_pretrain.pth": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
    "dinov2_vitl14_pretrain.pth": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
}

NORM_MODULES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)


def model_config(cfg: TrainConfig) -> EntitySAMConfig:
    mc = get_config(cfg.model.name)
    if cfg.model.overrides:
        mc = _replaced(mc, cfg.model.overrides)
    return mc


def _replaced(config, overrides: dict):
    """`config` with `overrides`; a mapping for a nested config (hiera, dino) replaces its fields
    (it replaced the whole config object with the mapping: an AttributeError traceback)."""
    return dataclasses.replace(config, **{
        key: _replaced(getattr(config, key), value) if isinstance(value, dict) else value
        for key, value in overrides.items()})


def resolve_pretrained(spec: str, is_main: bool = True) -> str:
    """A local path, or a URL / known file name downloaded once into torch.hub's cache."""
    if not spec:
        return ""
    if Path(spec).is_file():
        return spec
    name = Path(spec).name
    url = spec if spec.startswith(("http://", "https://")) else KNOWN_URLS.get(name)
    if url is None:
        raise CheckpointReadError(f"pretrained checkpoint not found: {spec}")
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not target.is_file():
        if not is_main:
            raise FileNotFoundError(f"{target} (the first process of the node downloads it)")
        log.info("downloading %s -> %s", url, target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(target), progress=True)
        except OSError as err:  # a node without internet access: was urllib's URLError traceback
            reason = getattr(err, "reason", None) or err.strerror or err
            raise CheckpointReadError(f"cannot download {url} to {target} ({printable(str(reason), 300)}): put the "
                                      f"file there, or pass its path in place of {printable(spec, 300)!r}") from None
    return str(target)


def build_model(cfg: TrainConfig, is_main: bool = True) -> EntitySAM:
    """The model a run starts from (before any resume).

    * `model.weights` set: an EntitySAM checkpoint, loaded strictly (stage 2 starts from stage 1).
    * otherwise: fresh construction seeded with `seed` (PyTorch default initialisation, as the
      official builder), then SAM 2.1 (`model.sam2`) and DINOv2 (`model.dinov2`) weights.
    """
    mc = model_config(cfg)
    if cfg.model.weights:
        model = load_entitysam(cfg.model.weights, mc)
        log.info("initialised from EntitySAM checkpoint %s", cfg.model.weights)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = EntitySAM(mc)
        if cfg.model.sam2:
            path = resolve_pretrained(cfg.model.sam2, is_main)
            report = load_sam2_pretrained(model, path)
            log.info("SAM 2.1 weights from %s: %s", path, report.summary())
            if report.shape_mismatch:
                raise CheckpointMismatchError(f"SAM 2.1 checkpoint {path} does not fit: "
                                              f"{printable(str(report.shape_mismatch[:5]), 600)}")
        if cfg.model.dinov2:
            path = resolve_pretrained(cfg.model.dinov2, is_main)
            report = load_dinov2_pretrained(model, path)
            log.info("DINOv2 weights from %s: %s", path, report.summary())
            if report.shape_mismatch or report.not_filled:
                wrong = (report.shape_mismatch or report.not_filled)[:5]
                raise CheckpointMismatchError(f"DINOv2 checkpoint {path} does not fit: {printable(str(wrong), 600)}")
    return model.float()


def set_trainable(model: EntitySAM, mode: str = "official") -> list[str]:
    """Mark parameters trainable ("official" prefix list, or "all"); returns the trainable names."""
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(mode == "all" or name.startswith(OFFICIAL_TRAINABLE_PREFIXES))
        if p.requires_grad:
            names.append(name)
    return names


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """One group per trainable tensor with the official LR / weight-decay rules (train_net.py).

    Weight decay 0 for parameters owned by torch norm modules (nn.LayerNorm, ...) and by
    nn.Embedding; LR x backbone_multiplier for modules whose name contains `image_encoder`.
    """
    s = cfg.solver
    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            lr, wd = s.base_lr, s.weight_decay
            if "image_encoder" in module_name:
                lr = lr * s.backbone_multiplier
            if "relative_position_bias_table" in pname or "absolute_pos_embed" in pname:
                wd = 0.0
            if isinstance(module, NORM_MODULES):
                wd = s.weight_decay_norm
            if isinstance(module, nn.Embedding):
                wd = s.weight_decay_embed
            full = f"{module_name}.{pname}" if module_name else pname
            groups.append({"params": [p], "lr": lr, "weight_decay": wd, "name": full})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg)
    s = cfg.solver
    return torch.optim.AdamW(groups, lr=s.base_lr, betas=tuple(s.betas), eps=s.eps)


def lr_factor(iteration: int, cfg: TrainConfig) -> float:
    """detectron2 WarmupMultiStepLR: warm-up factor times gamma ** (#milestones passed)."""
    s = cfg.solver
    factor = s.gamma ** bisect.bisect_right(sorted(s.steps), iteration)
    if iteration < s.warmup_iters:
        if s.warmup_method == "constant":
            factor *= s.warmup_factor
        else:
            alpha = iteration / s.warmup_iters
            factor *= s.warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Full-model L2 clipping (official FullModelGradientClippingOptimizer); returns the norm."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
    return float(torch.nn.utils.get_total_norm([p.grad for p in grads]))
