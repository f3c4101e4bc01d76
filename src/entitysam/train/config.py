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
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
def _parse_value(text: str) -> Any:
    try:
        import yaml  # noqa: PLC0415

        return yaml.safe_load(text)
    except ImportError:
        pass
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("null", "none", "~"):
            return None
        return text


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Convert a parsed value to the type of the field's current value."""
    if isinstance(current, bool):
        if isinstance(value, str):
            return value.lower() in ("1", "true", "yes", "on")
        return bool(value)
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{key}: expected an integer, got {value}")
        return int(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, tuple):
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
            value = [_parse_value(v.strip()) for v in value]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(value)
    if isinstance(current, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping")
        return dict(value)
    if isinstance(current, str):
        return "" if value is None else str(value)
    return value


def _apply(obj: Any, changes: dict, prefix: str = "") -> None:
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in changes.items():
        if key == "base":
            continue
        if key not in names:
            raise KeyError(f"unknown config key {prefix}{key!r}; known: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{prefix}{key} is a section; give a mapping or use {prefix}{key}.field=value")
            _apply(current, value, f"{prefix}{key}.")
        elif isinstance(current, dict) and isinstance(value, dict) and key == "overrides":
            current.update(value)
        else:
            setattr(obj, key, _coerce(value, current, prefix + key))


def _read_file(path: Path) -> dict:
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # noqa: PLC0415
        except ImportError as err:
            raise RuntimeError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); "
                               "or write the config as JSON") from err
        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping")
    return data


def parse_overrides(items: list[str]) -> dict:
    """`["a.b=1", "c=x"]` -> nested dict `{"a": {"b": 1}, "c": "x"}`."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_value(text)
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
            data = _read_file(path)
            base = data.get("base")
            if base:
                if base not in NAMED_CONFIGS:
                    raise KeyError(f"{path}: unknown base config {base!r}")
                _apply(cfg, NAMED_CONFIGS[base])
            if "name" not in data:
                data = {**data, "name": path.stem}
            _apply(cfg, data)
    if overrides:
        _apply(cfg, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    validate(cfg)
    return cfg


def config_from_dict(data: dict) -> TrainConfig:
    cfg = TrainConfig()
    _apply(cfg, data)
    return cfg


# Integer settings and their least sensible value (0 where 0 means "off" / "leave as is").
_MINIMUM = {"solver.max_iter": 1, "solver.warmup_iters": 0, "solver.checkpoint_period": 1, "log_period": 1,
            "data.num_workers": 0, "data.max_instances": 1, "loss.num_points": 1, "num_threads": 0, "seed": 0}


def _numbers(obj: Any, prefix: str = ""):
    """(dotted key, value) of every number in the config, tuples included."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _numbers(value, key + ".")
        elif isinstance(value, (tuple, list)):
            yield from ((f"{key}[{i}]", v) for i, v in enumerate(value) if isinstance(v, (int, float)))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, value


def validate(cfg: TrainConfig) -> None:
    for key, value in _numbers(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value}")
        if key in _MINIMUM and value < _MINIMUM[key]:
            raise ValueError(f"{key} must be >= {_MINIMUM[key]}, got {value}")
    if not cfg.solver.base_lr > 0:
        raise ValueError(f"solver.base_lr must be > 0, got {cfg.solver.base_lr}")
    if cfg.data.frames < 1:
        raise ValueError("data.frames must be >= 1")
    if cfg.solver.ims_per_batch < 1:
        raise ValueError("solver.ims_per_batch must be >= 1")
    if cfg.solver.amp not in ("fp16", "bf16", "off"):
        raise ValueError("solver.amp must be fp16, bf16 or off")
    if cfg.model.trainable not in ("official", "all"):
        raise ValueError("model.trainable must be 'official' or 'all'")
    if cfg.solver.warmup_method not in ("linear", "constant"):
        raise ValueError("solver.warmup_method must be linear or constant")
