"""Training configuration: dataclasses, the named recipes, yaml/json files and `key=value` overrides.

The named configurations are the two stages of the official recipe (TRAIN.md of the official
repository) for ViT-S and ViT-L, plus `tiny-*` configurations for tests:

* `vit-s-stage1` / `vit-l-stage1`: 81 000 iterations, one frame per clip, LR step at 60 000,
  checkpoint every 10 000, initialised from SAM 2.1 + DINOv2.
* `vit-s-stage2` / `vit-l-stage2`: 10 100 iterations, eight frames per clip, LR step at 7 500,
  checkpoint every 2 000, initialised from stage 1's `model_0079999.pth`.

A file config (`.yaml`/`.yml` needs PyYAML; `.json` always works) is a nested mapping with the
same sections as `TrainConfig`, optionally with `base: <named config>` to start from a recipe.
Overrides are `section.key=value` (values parsed as YAML/JSON scalars or lists).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_checks import coerce, expansion_problem, parse_value, read_file, validate

__all__ = ["TrainConfig", "NAMED_CONFIGS", "load_config", "parse_overrides", "config_from_dict", "validate"]

# Parameter-name prefixes the official train_net.py marks trainable (everything else is frozen).
OFFICIAL_TRAINABLE_PREFIXES = (
    "sam_mask_decoder.transformer",
    "sam_mask_decoder.queries",
    "sam_mask_decoder.iou_queries",
    "sam_mask_decoder.output_upscaling",
    "sam_mask_decoder.conv_s0",
    "sam_mask_decoder.conv_s1",
    "sam_mask_decoder.output_hypernetworks_mlps.0",
    "sam_mask_decoder.cls_prediction_head",
    "sam_mask_decoder.iou_prediction_head",
    "sam_mask_decoder.level_embed",  # matches nothing (kept as in the official list)
    "sam_mask_decoder.mask_embed",  # matches nothing
    "point_sampler_net",
    "point_sampler_num",
    "offset_attention",
    "offset_embedding",
    "offset_fc",
    "offset_cls",
    "dinov2_projector",
    "backbone_feature_enhancement",
)


@dataclass
class ModelSection:
    name: str = "vit-s"  # model configuration (entitysam.config): vit-s, vit-l, tiny
    overrides: dict = field(default_factory=dict)  # EntitySAMConfig fields to replace (tests)
    sam2: str = ""  # SAM 2.1 checkpoint: path, URL or known file name ("" = none)
    dinov2: str = ""  # DINOv2 hub checkpoint: path, URL or known file name ("" = none)
    weights: str = ""  # EntitySAM checkpoint to start from (model weights only), e.g. stage 1's
    trainable: str = "official"  # "official" parameter groups, or "all" (tests, experiments)
    memory_grad: bool = False  # True: gradients through memory attention / no-mem path (from scratch)


@dataclass
class DataSection:
    root: str = "datasets/coco"  # dataset root; the three paths below are relative to it
    image_dir: str = "train2017"
    panoptic_dir: str = "panoptic_train2017"
    json: str = "annotations/panoptic_train2017.json"
    frames: int = 8  # INPUT.SAMPLING_FRAME_NUM: pseudo-video length T
    max_instances: int = 30  # PrepareTargets max_num_masks: the first N (file order) are kept
    augment: bool = True  # False: no flip/rotation/scale/jitter (pad or crop at scale 1; tests)
    flip_prob: float = 0.5
    rotation: float = 15.0  # degrees, angles uniform in [-rotation, rotation]
    rotation_center: tuple = (0.4, 0.6)  # relative range of the rotation centre (both axes)
    min_scale: float = 0.25  # large-scale jitter range
    max_scale: float = 4.0
    temporal_shift: float = 0.1  # crop jitter of later frames, fraction of the image size
    num_workers: int = 2


@dataclass
class SolverSection:
    max_iter: int = 10000
    ims_per_batch: int = 4  # clips per iteration, over all processes (one clip per forward)
    base_lr: float = 5e-5
    steps: tuple = (7500,)
    gamma: float = 0.1
    warmup_iters: int = 10
    warmup_factor: float = 1.0  # 1.0 = no warm-up in effect (official)
    warmup_method: str = "linear"
    weight_decay: float = 0.05
    weight_decay_norm: float = 0.0
    weight_decay_embed: float = 0.0
    backbone_multiplier: float = 0.1  # LR factor for modules named *image_encoder*
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad_norm: float = 0.01  # full-model L2 clipping; <= 0 disables
    amp: str = "fp16"  # CUDA only: fp16 (official, with GradScaler), bf16, or off
    checkpoint_period: int = 2000


@dataclass
class CriterionConfig:
    """The loss weights and point sampling of `criterion.Criterion`."""

    class_weight: float = 5.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    iou_weight: float = 5.0
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.5
    focal_alpha: float = 0.5
    focal_gamma: float = 2.0


@dataclass
class LossSection(CriterionConfig):
    """The config file's ``loss`` section: the criterion's settings and the matcher's costs."""

    matcher_class: float = 3.0
    matcher_mask: float = 5.0
    matcher_dice: float = 5.0

    def criterion_config(self) -> CriterionConfig:
        return CriterionConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(CriterionConfig)})


@dataclass
class TrainConfig:
    name: str = "custom"
    output_dir: str = "output/entitysam"
    seed: int = 0
    resume: str = "auto"  # auto: continue from output_dir/last_checkpoint if present; never; or a path
    device: str = "auto"  # auto: cuda:LOCAL_RANK when available, else cpu
    num_threads: int = 0  # torch.set_num_threads (0: leave as is)
    log_period: int = 20
    tensorboard: bool = True  # only if tensorboard is installed
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    solver: SolverSection = field(default_factory=SolverSection)
    loss: LossSection = field(default_factory=LossSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        from .. import jsonio  # noqa: PLC0415

        return jsonio.dumps(self.to_dict(), indent=2, ensure_ascii=True)


# ---------------------------------------------------------------------------- named configs
def _stage(model: str, stage: int) -> dict:
    big = model == "vit-l"
    sam2 = "checkpoints/sam2.1_hiera_large.pt" if big else "checkpoints/sam2.1_hiera_small.pt"
    dino = "dinov2_vitl14_pretrain.pth" if big else "dinov2_vits14_pretrain.pth"
    out1 = f"output/{model}-stage1"
    if stage == 1:
        return {
            "name": f"{model}-stage1", "output_dir": out1,
            "model": {"name": model, "sam2": sam2, "dinov2": dino},
            "data": {"frames": 1},
            "solver": {"max_iter": 81000, "steps": (60000,), "checkpoint_period": 10000, "ims_per_batch": 4},
        }
    return {
        "name": f"{model}-stage2", "output_dir": f"output/{model}-stage2",
        "model": {"name": model, "weights": f"{out1}/model_0079999.pth"},
        "data": {"frames": 8},
        "solver": {"max_iter": 10100, "steps": (7500,), "checkpoint_period": 2000, "ims_per_batch": 4},
    }


def _tiny(stage: int) -> dict:
    return {
        "name": f"tiny-stage{stage}", "output_dir": f"output/tiny-stage{stage}",
        "model": {"name": "tiny"},
        "data": {"frames": 1 if stage == 1 else 3, "max_instances": 8, "num_workers": 0,
                 "root": "datasets/synthetic"},
        "solver": {"max_iter": 6, "steps": (4,), "checkpoint_period": 3, "ims_per_batch": 2,
                   "base_lr": 1e-4},
        "loss": {"num_points": 256},
        "log_period": 1,
    }


def _demo(stage: int) -> dict:
    """The shipped demo model (docs/demo-model.md): everything from scratch on synthetic scenes.

    Deviations from the official recipe, because no pretrained backbone exists at these sizes:
    all parameters train (`trainable=all`), gradients flow through memory attention and the
    no-memory path (`memory_grad`), a 10x higher LR with a short warm-up, milder scale jitter
    (the scenes are already at the inference scale), 2048 loss points (64x64 low-res masks).
    Stage 2 starts from stage 1's final weights.
    """
    data = {"root": "datasets/demo-synthetic", "frames": 1 if stage == 1 else 3, "max_instances": 16,
            "num_workers": 0, "min_scale": 0.75, "max_scale": 1.33}
    solver = ({"max_iter": 6000, "steps": (4800,), "checkpoint_period": 50, "ims_per_batch": 4,
               "base_lr": 5e-4, "warmup_iters": 100, "warmup_factor": 0.01}
              if stage == 1 else
              {"max_iter": 1500, "steps": (1200,), "checkpoint_period": 25, "ims_per_batch": 2,
               "base_lr": 2e-4, "warmup_iters": 20, "warmup_factor": 0.1})
    model = {"name": "demo", "trainable": "all", "memory_grad": True}
    if stage == 2:
        model["weights"] = "output/demo-stage1/model_final.pth"
    return {
        "name": f"demo-stage{stage}", "output_dir": f"output/demo-stage{stage}", "seed": stage,
        "model": model, "data": data, "solver": solver, "loss": {"num_points": 2048},
        "num_threads": 2, "log_period": 10, "tensorboard": False,
    }


NAMED_CONFIGS: dict[str, dict] = {
    "vit-s-stage1": _stage("vit-s", 1),
    "vit-s-stage2": _stage("vit-s", 2),
    "vit-l-stage1": _stage("vit-l", 1),
    "vit-l-stage2": _stage("vit-l", 2),
    "tiny-stage1": _tiny(1),
    "tiny-stage2": _tiny(2),
    "demo-stage1": _demo(1),
    "demo-stage2": _demo(2),
}


# ---------------------------------------------------------------------------- merging
def _apply(obj: Any, changes: dict, prefix: str = "", texts: dict | None = None, file_base: bool = False) -> None:
    """texts: the overrides' values as typed (parse_overrides), in the shape of `changes`;
    file_base: `changes` is a config file's mapping, whose top-level `base` load_config applied."""
    texts = texts if isinstance(texts, dict) else {}
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in changes.items():
        if key == "base" and not prefix:
            if file_base:
                continue
            # an override base=NAME (or solver.base=...) was skipped without a word
            raise KeyError("base: only a config file starts from a named config (base: NAME); load the named "
                           "config itself as the config instead")
        if key not in names:
            raise KeyError(f"unknown config key {prefix}{key!r}; known: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{prefix}{key} is a section; give a mapping or use {prefix}{key}.field=value")
            _apply(current, value, f"{prefix}{key}.", texts.get(key))
        elif isinstance(current, dict) and isinstance(value, dict) and key == "overrides":
            current.update(value)
        else:
            text = texts.get(key)
            if isinstance(current, str) and isinstance(text, str) and isinstance(value, (bool, int, float)):
                # a string as typed: YAML 1.1 read output_dir=2024_01_15 as 20240115, 007 as 7,
                # resume=no as false (then "False")
                value = text.strip()
            setattr(obj, key, coerce(value, current, prefix + key))


def parse_overrides(items: list[str], texts: dict | None = None) -> dict:
    """`["a.b=1", "c=x"]` -> nested dict `{"a": {"b": 1}, "c": "x"}`. A key given twice: the last
    value wins; a key given both a value and sub-keys, or an empty key, is refused. `texts`, when
    given, is filled alike with the values as typed (`{"a": {"b": "1"}, "c": "x"}`)."""
    out: dict = {}
    texts = {} if texts is None else texts
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(p.strip() for p in parts):
            raise ValueError(f"override {item!r}: empty key (expected section.key=value)")
        node, raw = out, texts
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if not last and part in node and not isinstance(node[part], dict):
                raise ValueError(f"override {item!r}: {'.'.join(parts[:i + 1])} was given a value; "
                                 "it cannot also be a section")
            if last:
                raw[part] = text
                node[part] = parse_value(text)
                problem = expansion_problem(node[part])
                if problem:
                    raise ValueError(f"override {key.strip()}: {problem}")
            else:
                node = node.setdefault(part, {})
                if not isinstance(raw.get(part), dict):
                    raw[part] = {}
                raw = raw[part]
    return out


def load_config(config: str | os.PathLike | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """A named config or a yaml/json file, then overrides (list of `key=value` or nested dict)."""
    cfg = TrainConfig()
    if config:
        name = str(config)
        if name in NAMED_CONFIGS:
            _apply(cfg, NAMED_CONFIGS[name])
        else:
            path = Path(name)
            if not path.is_file():
                raise FileNotFoundError(f"config {name!r} is neither a named config "
                                        f"({', '.join(NAMED_CONFIGS)}) nor a file")
            data = read_file(path)
            base = data.get("base")
            if base:
                if base not in NAMED_CONFIGS:
                    raise KeyError(f"{path}: unknown base config {base!r}")
                _apply(cfg, NAMED_CONFIGS[base])
            if "name" not in data:
                data = {**data, "name": path.stem}
            _apply(cfg, data, file_base=True)
    if overrides:
        texts: dict = {}
        _apply(cfg, parse_overrides(overrides, texts) if isinstance(overrides, list) else overrides, texts=texts)
    validate(cfg)
    return cfg


def config_from_dict(data: dict) -> TrainConfig:
    cfg = TrainConfig()
    _apply(cfg, data, file_base=True)
    return cfg
