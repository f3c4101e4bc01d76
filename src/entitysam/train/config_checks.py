"""The checks behind `train.config`: override values, config files, field types and ranges.

Every user mistake raises a ValueError (or KeyError) with a one-line message naming the key or
file; `entitysam train` prints it as ``error: ...`` and exits with code 2 before any work.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import math
import os
from pathlib import Path
from typing import Any

from ..argtypes import INT64_MAX, MAX_THREADS, check_int
from ..errors import InvalidArgumentError
from ..io.paths import nearest_existing
from ..regular_file import path_problem

_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def parse_value(text: str) -> Any:
    """An override's value as a YAML (else JSON) scalar or list; text that parses as neither is a string."""
    try:
        import yaml  # noqa: PLC0415

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text
    except ImportError:
        pass
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("null", "none", "~"):
            return None
        return text


def _scalar(value: Any, current: Any, key: str) -> Any:
    """`value` converted to the type of `current` (bool, int, float or str); anything else is refused."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).lower() in _BOOLS:
            return _BOOLS[str(value).lower()]
        raise ValueError(f"{key}: expected true or false, got {value!r}")
    if isinstance(current, int):
        if isinstance(value, str):  # "1e30" (YAML 1.1 reads it as a string), "1_000"
            try:
                value = float(value) if any(c in value.lower() for c in ".en") else int(value)
            except ValueError:
                raise ValueError(f"{key}: expected an integer, got {value!r}") from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return value
    if isinstance(current, float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"{key} must be a finite number, got {str(value)[:20]}...") from None
    if isinstance(current, str):
        if value is None:
            return ""
        if isinstance(value, (dict, list, tuple)):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def coerce(value: Any, current: Any, key: str) -> Any:
    """Convert a parsed value to the type of the field's current value (tuples element-wise)."""
    if isinstance(current, tuple):
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
            value = [parse_value(v.strip()) for v in value]
        if not isinstance(value, (list, tuple)):
            value = [value]
        if current and len(current) > 1 and len(value) != len(current):  # betas, rotation_center: pairs
            raise ValueError(f"{key}: expected {len(current)} values, got {len(value)}")
        kind = current[0] if current else 0.0
        return tuple(_scalar(v, kind, f"{key}[{i}]") for i, v in enumerate(value))
    if isinstance(current, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping")
        return dict(value)
    return _scalar(value, current, key)


class _DuplicateKey(InvalidArgumentError):
    """A key given twice in one mapping of a config file: the parsers would keep the last value
    without a word, so the user's first value (maybe the one they edited) would silently not count."""


def _unique_keys(pairs: list) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:  # the json module gives a hook no position
            raise _DuplicateKey(f"duplicate key {key!r}")
        out[key] = value
    return out


@functools.lru_cache(maxsize=None)  # made on first use: PyYAML is optional
def _unique_key_loader(yaml: Any) -> type:
    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # keys merged from `<<: *base` may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable: SafeLoader's own error says so
                    continue
                if duplicate:
                    mark = key_node.start_mark
                    raise _DuplicateKey(f"duplicate key {key!r} at line {mark.line + 1}, column {mark.column + 1}")
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


MAX_CONFIG_BYTES = 2**20  # a config file is a few hundred bytes
MAX_CONFIG_VALUES = 100_000  # values of a config file, shared ones (YAML aliases) counted at each use


def expansion_problem(data: Any) -> str | None:
    """Why `data` cannot be a config, or None: YAML aliases let a few hundred bytes describe a value
    of billions of items (each list holding the previous one nine times) or one that holds itself;
    every check and message that walks it would then run for ever. Counted once per distinct value."""
    sizes: dict[int, int] = {}

    def size(value: Any) -> int:
        if not isinstance(value, (dict, list, tuple)):
            return 1
        key = id(value)
        if key in sizes:
            if sizes[key] < 0:
                raise ValueError("holds itself (a YAML alias inside its own anchor)")
            return sizes[key]
        sizes[key] = -1
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        total = 1
        for item in items:
            total += size(item)
            if total > MAX_CONFIG_VALUES:
                break
        sizes[key] = total
        return total

    try:
        if size(data) > MAX_CONFIG_VALUES:
            return f"holds more than {MAX_CONFIG_VALUES} values (counting each use of a YAML alias)"
    except ValueError as err:
        return str(err)
    except RecursionError:
        return "nested too deeply"
    return None


def read_file(path: Path) -> dict:
    """A config file's mapping; unreadable files, bad YAML/JSON and non-mappings are one-line errors."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:  # read whole and parsed, gigabytes took hours and their size again in memory
            raise ValueError(f"{path}: {size} bytes, more than the {MAX_CONFIG_BYTES} bytes a config file may hold")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the config file ({err})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # noqa: PLC0415
        except ImportError as err:
            raise RuntimeError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); "
                               "or write the config as JSON") from err
        try:  # a SafeLoader: a python tag is refused, never run
            data = yaml.load(text, Loader=_unique_key_loader(yaml)) or {}
        except _DuplicateKey as err:
            raise ValueError(f"{path}: {err}") from None
        except (yaml.YAMLError, RecursionError) as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ValueError(f"{path}: not valid YAML{where} ({getattr(err, 'problem', None) or err})") from None
    else:
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except _DuplicateKey as err:
            raise ValueError(f"{path}: {err}") from None
        except (ValueError, RecursionError) as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping")
    problem = expansion_problem(data)
    if problem:
        raise ValueError(f"{path}: {problem}")
    if "base" in data and not isinstance(data["base"], (str, type(None))):
        raise ValueError(f"{path}: base must be the name of a named config, got {data['base']!r}")
    return data


@dataclasses.dataclass(frozen=True)
class _Range:
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value: float) -> bool:
        return ((value > self.lo if self.lo_open else value >= self.lo)
                and (value < self.hi if self.hi_open else value <= self.hi))

    def __str__(self) -> str:
        if self.hi == math.inf:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


_ANY, _NON_NEGATIVE, _POSITIVE, _UNIT = _Range(), _Range(0), _Range(0, lo_open=True), _Range(0, 1)
_COUNT, _THREADS = _Range(1), _Range(0, MAX_THREADS)

# The values that mean something, for every number in TrainConfig (tuples: each element); a test
# checks that each field has its rule. Integers are also bounded to int64. 0 is allowed where it
# means "off" or "leave as is".
_RANGES = {
    "seed": _NON_NEGATIVE, "num_threads": _THREADS, "log_period": _COUNT,
    "data.frames": _COUNT, "data.max_instances": _COUNT, "data.num_workers": _THREADS,
    "data.flip_prob": _UNIT,
    "data.rotation": _Range(0, 180),  # angles are drawn in [-rotation, rotation]; 180 covers every angle
    "data.rotation_center": _UNIT,  # relative to the image
    "data.min_scale": _POSITIVE, "data.max_scale": _POSITIVE,
    "data.temporal_shift": _UNIT,  # a fraction of the image size
    "solver.max_iter": _COUNT, "solver.ims_per_batch": _COUNT, "solver.checkpoint_period": _COUNT,
    "solver.base_lr": _POSITIVE, "solver.steps": _NON_NEGATIVE,
    "solver.gamma": _POSITIVE,  # LR factor at each step: <= 0 would zero or flip the LR
    "solver.warmup_iters": _NON_NEGATIVE,
    "solver.warmup_factor": _Range(0, 1, lo_open=True),  # 1 = no warm-up; 0 would leave the first step at LR 0
    "solver.weight_decay": _NON_NEGATIVE, "solver.weight_decay_norm": _NON_NEGATIVE,
    "solver.weight_decay_embed": _NON_NEGATIVE, "solver.backbone_multiplier": _NON_NEGATIVE,
    "solver.betas": _Range(0, 1, hi_open=True),  # Adam's moment decays; torch refuses 1 and above
    "solver.eps": _POSITIVE,  # it keeps Adam's division away from zero
    "solver.clip_grad_norm": _ANY,  # <= 0 disables clipping
    "loss.class_weight": _NON_NEGATIVE, "loss.mask_weight": _NON_NEGATIVE, "loss.dice_weight": _NON_NEGATIVE,
    "loss.iou_weight": _NON_NEGATIVE, "loss.num_points": _COUNT,
    "loss.oversample_ratio": _Range(1),  # fewer candidates than points: topk over too few (as detectron2)
    "loss.importance_sample_ratio": _UNIT, "loss.focal_alpha": _UNIT, "loss.focal_gamma": _NON_NEGATIVE,
    "loss.matcher_class": _NON_NEGATIVE, "loss.matcher_mask": _NON_NEGATIVE, "loss.matcher_dice": _NON_NEGATIVE,
}
# Pairs that are a range themselves (numpy's uniform(lo, hi) is undefined for lo > hi).
_ORDERED = (("data.min_scale", "data.max_scale"), ("data.rotation_center[0]", "data.rotation_center[1]"))


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


def validate(cfg: Any) -> None:
    numbers = dict(_numbers(cfg))
    for key, value in numbers.items():
        rule = _RANGES.get(key.split("[")[0], _ANY)
        if isinstance(value, int):  # every integer fits an int64
            check_int(value, key, -INT64_MAX - 1 if rule.lo == -math.inf else rule.lo,
                      INT64_MAX if rule.hi == math.inf else rule.hi)
        elif not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value}")
        elif value not in rule:
            raise ValueError(f"{key} must be {rule}, got {value}")
    for lo, hi in _ORDERED:
        if numbers[lo] > numbers[hi]:
            raise ValueError(f"{lo} must be <= {hi}, got {numbers[lo]} > {numbers[hi]}")
    _check_model(cfg.model)
    if not cfg.output_dir.strip():  # (output_dir=$OUT with OUT unset: checkpoints went to the current folder)
        raise ValueError("output_dir is empty: name the folder for the checkpoints and logs (output_dir=PATH)")
    if cfg.solver.amp not in ("fp16", "bf16", "off"):
        raise ValueError("solver.amp must be fp16, bf16 or off")
    if cfg.model.trainable not in ("official", "all"):
        raise ValueError("model.trainable must be 'official' or 'all'")
    if cfg.solver.warmup_method not in ("linear", "constant"):
        raise ValueError("solver.warmup_method must be linear or constant")


def _check_model(model: Any) -> None:
    """model.name and model.overrides, now: they were read only when the trainer built the model,
    and a wrong one ended the run with a KeyError or TypeError traceback."""
    from ..config import CONFIGS  # noqa: PLC0415

    if model.name not in CONFIGS:
        raise ValueError(f"model.name must be one of {', '.join(CONFIGS)}, got {model.name!r}")
    base = CONFIGS[model.name]
    known = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    _check_fields(model.overrides, known, "model.overrides.")


def _check_fields(overrides: dict, known: dict, prefix: str) -> None:
    """`overrides` of the fields `known` (name -> current value): keys and value types, in place;
    a nested config (hiera, dino) takes a mapping of its own fields."""
    for key, value in overrides.items():
        if key not in known:
            raise KeyError(f"unknown config key '{prefix}{key}'; known: {', '.join(sorted(known))}")
        current = known[key]
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{prefix}{key} is a section; give a mapping or use {prefix}{key}.field=value")
            _check_fields(value, {f.name: getattr(current, f.name) for f in dataclasses.fields(current)},
                          f"{prefix}{key}.")
        else:
            overrides[key] = coerce(value, current, f"{prefix}{key}")


def _folder_problem(path: Path) -> str | None:
    # is_dir() called a file, a link loop or a folder it may not enter "no such folder"
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:  # the CLI's one shortened line (cli.os_error_code), not
            raise                            # this one quoting all of the name
    problem = path_problem(path, folder=True)
    return "no such folder" if problem == "missing" else problem


def check_dataset(data: Any) -> None:
    """Before training starts: the dataset root, its json file and image folders exist, the json is
    of the COCO panoptic layout and every image and panoptic PNG it names exists."""
    root = Path(data.root)
    if problem := _folder_problem(root):
        raise ValueError(f"data.root {str(root)!r}: {problem} (the dataset root)")
    for key in ("json", "image_dir", "panoptic_dir"):
        path = Path(getattr(data, key))
        path = path if path.is_absolute() else root / path
        # the json only needs to be there: reading it names what else is wrong (is_file() called a
        # FIFO or a link loop "no such file")
        if key == "json" and not os.path.lexists(path):
            raise ValueError(f"data.json {str(path)!r}: no such file")
        if key != "json" and (problem := _folder_problem(path)):
            raise ValueError(f"data.{key} {str(path)!r}: {problem}")
    from .dataset_index import read_panoptic_dataset  # noqa: PLC0415

    # the json's layout and every file it names, now rather than at the iteration that needs one
    read_panoptic_dataset(root, data.image_dir, data.panoptic_dir, data.json)


def check_output_dir(output_dir: str) -> None:
    """Before training starts: output_dir is a folder or can be made one (its first existing
    ancestor a writable folder). A file there was a FileExistsError / NotADirectoryError traceback."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output_dir {str(path)!r}: exists and is not a folder")
    ancestor = nearest_existing(path)
    if not ancestor.is_dir():
        raise ValueError(f"output_dir {str(path)!r}: {str(ancestor)!r} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"output_dir {str(path)!r}: {str(ancestor)!r} is not writable (permission denied)")

