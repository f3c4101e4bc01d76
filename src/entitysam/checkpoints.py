"""Loading EntitySAM checkpoints and the pretrained parts a training run starts from.

* `load_entitysam(path_or_state, config=None)`: an official `model_0009999.pth`
  (`{"model": state_dict, ...}`) or a bare state dict, loaded strictly. The config is inferred
  from the keys when not given. Any mismatch raises `CheckpointMismatchError` listing missing
  keys, unexpected keys and shape mismatches, and naming the configuration that would fit.
* `load_sam2_pretrained(model, path)`: a SAM 2.1 checkpoint (`sam2.1_hiera_*.pt`) into the
  SAM parts; `load_dinov2_pretrained(model, path)`: a DINOv2 hub checkpoint into the semantic
  encoder. Both return a `LoadReport` of what was and was not filled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from .config import CONFIGS, EntitySAMConfig, get_config
from .modeling.entitysam import EntitySAM

PUBLISHED = ("vit-s", "vit-l")


class CheckpointMismatchError(RuntimeError):
    """The state dict does not fit the model; the message lists every difference."""


@dataclass
class LoadReport:
    """What a partial (pretrained) load filled in."""

    loaded: list[str] = field(default_factory=list)
    not_filled: list[str] = field(default_factory=list)  # model keys the file did not provide
    ignored: list[str] = field(default_factory=list)  # file keys the model has no use for
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)} tensors; {len(self.not_filled)} model tensors not filled; "
                f"{len(self.ignored)} checkpoint tensors ignored; {len(self.shape_mismatch)} shape mismatches")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file  # noqa: PLC0415
    except ImportError as err:  # a core dependency; only a broken install gets here
        raise CheckpointMismatchError(f"cannot read {path}: the safetensors package is missing "
                                      "(pip install safetensors)") from err
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - SafetensorError for truncated or foreign files
        raise CheckpointMismatchError(f"cannot read checkpoint {path}: {err}") from err


def read_state_dict(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict from a file (`.pth`/`.pt` pickle or `.safetensors`) or mapping; unwraps
    `{"model": ...}` and DDP `module.` prefixes."""
    if isinstance(source, Mapping):
        obj = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if path.suffix == ".safetensors":
            return _read_safetensors(path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - truncated/corrupt files raise many types
            # Checkpoints written by detectron2 trainers may pickle non-tensor objects; those
            # need the full unpickler, which is only safe for files you trust.
            if "weights_only" in str(err) or "Unsupported global" in str(err):
                obj = torch.load(path, map_location="cpu", weights_only=False)
            else:
                raise CheckpointMismatchError(f"cannot read checkpoint {path}: {err}") from err
    if "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    state = {}
    for key, value in obj.items():
        if key.startswith("module."):
            key = key[len("module."):]
        state[key] = value
    return state


def _shapes(cfg: EntitySAMConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in EntitySAM(cfg).state_dict().items()}


def infer_config(state: Mapping[str, torch.Tensor]) -> EntitySAMConfig | None:
    """The named configuration whose keys and shapes fit `state` exactly, or None."""
    got = {k: tuple(v.shape) for k, v in state.items()}
    for cfg in CONFIGS.values():
        if _shapes(cfg) == got:
            return cfg
    return None


def _closest_config_name(state: Mapping[str, torch.Tensor]) -> str:
    """Name of the configuration with the largest key overlap (for error messages)."""
    keys = set(state)
    best = max(CONFIGS.values(), key=lambda c: len(keys & set(_shapes(c))))
    return best.name


def check_state_dict(model: EntitySAM, state: Mapping[str, torch.Tensor]) -> None:
    """Raise CheckpointMismatchError unless `state` has exactly the model's keys and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [(k, tuple(state[k].shape), expected[k]) for k in expected
                  if k in state and tuple(state[k].shape) != expected[k]]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"checkpoint does not fit the '{model.cfg.name}' model:"]

    def listing(title: str, items: list) -> None:
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {item}" for item in items[:20])
            if len(items) > 20:
                lines.append(f"    ... and {len(items) - 20} more")

    listing("missing keys", missing)
    listing("unexpected keys", unexpected)
    listing("shape mismatches (key, checkpoint, model)", mismatched)
    fit = infer_config(state)
    if fit is not None and fit.name != model.cfg.name:
        lines.append(f"  the checkpoint fits the '{fit.name}' configuration: use --model {fit.name}")
    elif fit is None:
        closest = _closest_config_name(state)
        lines.append(f"  no known configuration fits exactly; closest: '{closest}' "
                     "(a truncated or foreign checkpoint?)")
    raise CheckpointMismatchError("\n".join(lines))


def load_entitysam(source: str | os.PathLike | Mapping[str, torch.Tensor],
                   config: EntitySAMConfig | str | None = None,
                   device: str | torch.device = "cpu") -> EntitySAM:
    """Build the model for `config` (inferred from the keys if None) and load `source` strictly."""
    state = read_state_dict(source)
    if config is None:
        config = infer_config(state)
        if config is None:
            closest = _closest_config_name(state)
            model_cfg = get_config(closest)
            with torch.device("meta"):
                check_state_dict(EntitySAM(model_cfg), state)  # raises with the full listing
            raise AssertionError("unreachable")
    elif isinstance(config, str):
        config = get_config(config)
    with torch.device("meta"):
        model = EntitySAM(config)
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=torch.float32).eval()


# ---------------------------------------------------------------------- pretrained parts
# SAM 2.1 key prefixes EntitySAM keeps under the same names.
_SAM2_SHARED_PREFIXES = ("image_encoder.", "memory_attention.", "memory_encoder.", "sam_prompt_encoder.",
                         "maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc", "no_obj_embed_spatial",
                         "obj_ptr_tpos_proj.", "sam_mask_decoder.")


def _partial_load(model: torch.nn.Module, state: Mapping[str, torch.Tensor], prefix: str,
                  accept: tuple[str, ...] | None = None) -> LoadReport:
    own = model.state_dict()
    report = LoadReport()
    filled = set()
    with torch.no_grad():
        for key, value in state.items():
            target = prefix + key
            if accept is not None and not key.startswith(accept):
                report.ignored.append(key)
                continue
            if target not in own:
                report.ignored.append(key)
                continue
            if tuple(own[target].shape) != tuple(value.shape):
                report.shape_mismatch.append((target, tuple(value.shape), tuple(own[target].shape)))
                continue
            own[target].copy_(value.to(own[target].dtype))
            filled.add(target)
            report.loaded.append(target)
    scope = [k for k in own if k.startswith(prefix)] if prefix else list(own)
    if accept is not None:
        scope = [k for k in scope if k.startswith(accept)]
    report.not_filled = [k for k in scope if k not in filled]
    return report


def load_sam2_pretrained(model: EntitySAM, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> LoadReport:
    """Fill the SAM parts from a SAM 2.1 checkpoint (`{"model": ...}`).

    SAM 2.1 tensors EntitySAM does not have (object pointers, object-score head, ...) are
    reported as ignored; EntitySAM's own parts (queries, prompt generator, DINOv2) are not filled.
    """
    state = read_state_dict(source)
    return _partial_load(model, state, "", accept=_SAM2_SHARED_PREFIXES)


def load_dinov2_pretrained(model: EntitySAM, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> LoadReport:
    """Fill the semantic encoder from a DINOv2 hub checkpoint (`dinov2_vit*14_pretrain.pth`)."""
    state = read_state_dict(source)
    return _partial_load(model, state, "dinov2_feature_extractor.")
