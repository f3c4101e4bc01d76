"""The checks behind `train.config`: override values, config files, field types and ranges.

Every user mistake raises a ValueError (or KeyError) with a one-line message naming the key or
file; `entitysam train` prints it as ``error: ...`` and exits with code 2 before any work.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

from ..argtypes import INT64_MAX, MAX_THREADS, check_int

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


class _DuplicateKey(ValueError):
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


def read_file(path: Path) -> dict:
    """A config file's mapping; unreadable files, bad YAML/JSON and non-mappings are one-line errors."""
    try:
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
    if "base" in data and not isinstance(data["base"], (str, type(None))):
        raise ValueError(f"{path}: base must be the name of a named config, got {data['base']!r}")
    return data


# Integer settings and their least sensible value (0 where 0 means "off" / "leave as is").
_MINIMUM = {"solver.max_iter": 1, "solver.warmup_iters": 0, "solver.checkpoint_period": 1, "log_period": 1,
            "data.num_workers": 0, "data.max_instances": 1, "loss.num_points": 1, "num_threads": 0, "seed": 0,
            "data.frames": 1, "solver.ims_per_batch": 1}
_MAXIMUM = {"data.num_workers": MAX_THREADS, "num_threads": MAX_THREADS}


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
    for key, value in _numbers(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value}")
        if isinstance(value, int):  # every integer fits an int64; counts have their minimum
            check_int(value, key, _MINIMUM.get(key, -INT64_MAX - 1), _MAXIMUM.get(key, INT64_MAX))
    if not cfg.solver.base_lr > 0:
        raise ValueError(f"solver.base_lr must be > 0, got {cfg.solver.base_lr}")
    if cfg.solver.amp not in ("fp16", "bf16", "off"):
        raise ValueError("solver.amp must be fp16, bf16 or off")
    if cfg.model.trainable not in ("official", "all"):
        raise ValueError("model.trainable must be 'official' or 'all'")
    if cfg.solver.warmup_method not in ("linear", "constant"):
        raise ValueError("solver.warmup_method must be linear or constant")


def check_dataset(data: Any) -> None:
    """Before training starts: the dataset root, its json file and image folders exist."""
    root = Path(data.root)
    if not root.is_dir():
        raise ValueError(f"data.root {str(root)!r}: no such folder (the dataset root)")
    for key in ("json", "image_dir", "panoptic_dir"):
        path = Path(getattr(data, key))
        path = path if path.is_absolute() else root / path
        if not (path.is_file() if key == "json" else path.is_dir()):
            raise ValueError(f"data.{key} {str(path)!r}: no such {'file' if key == 'json' else 'folder'}")
