"""Validated argument types shared by every command line of the package.

Each is an ``argparse`` ``type=``: a bad value is reported by argparse (``error: argument
--fps: ...``, exit code 2) while parsing, that is before any model is loaded or any file written.
The same checks back the Python API (:func:`check_positive_float`, ...), which raises
:class:`InvalidArgumentError` instead.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Callable

from .errors import InvalidArgumentError

__all__ = [
    "InvalidArgumentError",
    "check_int",
    "check_positive_float",
    "check_json_destination",
    "positive_int",
    "non_negative_int",
    "positive_float",
    "seed",
]


def check_int(value: Any, name: str, minimum: int) -> int:
    """`value` as an int >= minimum (bools and floats are refused: ``stride=1.5`` is a mistake)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}".lstrip())
    if value < minimum:
        raise InvalidArgumentError(f"{name} must be >= {minimum}, got {value}".lstrip())
    return value


def check_positive_float(value: Any, name: str) -> float:
    """`value` as a finite float > 0 (NaN, infinities, zero and negatives are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)  # numpy scalars, strings of numbers
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"{name} must be a positive number, got {value!r}".lstrip()) from None
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a finite number > 0, got {value!r}".lstrip())
    return value


def _argparse_type(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except InvalidArgumentError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    convert.__name__ = name  # argparse names the type in "invalid <name> value" messages
    return convert


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidArgumentError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidArgumentError(f"expected a number, got {text!r}") from None


# argparse puts "argument --fps: " before the message: the checks get no name of their own.
positive_int = _argparse_type(lambda s: check_int(_int(s), "", 1), "positive integer")
non_negative_int = _argparse_type(lambda s: check_int(_int(s), "", 0), "non-negative integer")
positive_float = _argparse_type(lambda s: check_positive_float(_float(s), ""), "positive number")
# numpy's generators take seeds in [0, 2**32) for the legacy API, >= 0 for default_rng
seed = _argparse_type(lambda s: _seed(_int(s)), "seed")


def _seed(value: int) -> int:
    if not 0 <= value < 2**32:
        raise InvalidArgumentError(f"the seed must be between 0 and {2**32 - 1}, got {value}")
    return value


def check_json_destination(path: str | Path, option: str = "--json") -> Path:
    """Fail now, not after hours of work, if a result file cannot be created at `path`:
    its folder must exist and be writable, and `path` must not be a folder."""
    import os  # noqa: PLC0415

    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InvalidArgumentError(f"{option} {path}: is a folder, expected a file name")
    if not parent.is_dir():
        raise InvalidArgumentError(f"{option} {path}: the folder {parent} does not exist (create it first)")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InvalidArgumentError(f"{option} {path}: not writable (permission denied)")
    return path
