"""Validated argument types shared by every command line of the package.

Each is an ``argparse`` ``type=``: a bad value is reported by argparse (``error: argument
--fps: ...``, exit code 2) while parsing, that is before any model is loaded or any file written.
The same checks back the Python API (:func:`check_positive_float`, ...), which raises
:class:`InvalidArgumentError` instead.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InvalidArgumentError

__all__ = [
    "InvalidArgumentError",
    "INT64_MAX",
    "MAX_THREADS",
    "FPS_RANGE",
    "GPU_SHARE_RANGE",
    "as_int",
    "check_int",
    "check_positive_float",
    "check_range",
    "check_fps",
    "frame_problem",
    "check_gpu_share",
    "check_json_destination",
    "check_not_an_input",
    "positive_int",
    "non_negative_int",
    "thread_count",
    "positive_float",
    "fps",
    "hours",
    "gpu_share",
    "seed",
    "path_text",
    "host_name",
    "ArgumentParser",
]

# One bound per kind of number, the same for the command lines and the Python API:
INT64_MAX = 2**63 - 1  # counts, indices, frame positions, ids: what numpy, PyAV and JSON readers hold
MAX_THREADS = 1024  # threads, worker processes, Ray actors of one command
# Frame rates: 1/1000 fps is the slowest the overlay encoder's time base (denominator <= 1001)
# represents; above ~2000 fps the MP4 muxer's timestamps collide and frames are lost (measured
# with PyAV 18 / libx264), so 1000 fps is the fastest.
FPS_RANGE = (0.001, 1000.0)
HOURS_RANGE = (0.001, 100_000.0)  # waiting times in hours: 3.6 s to about 11 years
GPU_SHARE_RANGE = (0.0001, 1024.0)  # GPUs of a Ray actor besides 0: Ray's resource granularity is 0.0001


def as_int(value: Any) -> int | None:
    """`value` as an int if it is an integer, a numpy one too (notebooks pass ``np.int64``), else
    None: a bool is no count (``max_frames=True``) and a float no index (``stride=1.5``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return None
    return int(value)


def check_int(value: Any, name: str, minimum: int, maximum: int = INT64_MAX) -> int:
    """`value` as an int in [minimum, maximum] (see `as_int`: bools and floats are refused); the
    maximum defaults to 2**63 - 1, what int64 arrays and files hold."""
    if as_int(value) is None:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}".lstrip())
    value = as_int(value)
    if value < minimum:
        raise InvalidArgumentError(f"{name} must be >= {minimum}, got {value}".lstrip())
    if value > maximum:
        raise InvalidArgumentError(f"{name} must be <= {maximum}, got {_short(value)}".lstrip())
    return value


def check_flags(**flags: Any) -> None:
    """Each keyword's value is True or False (a numpy bool too): truthiness would take
    ``overwrite="no"`` for yes and replace a result. None is refused too; pass the default."""
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise InvalidArgumentError(f"{name} must be True or False, got {value!r}")


def frame_problem(shape: tuple[int, ...], dtype: Any) -> str | None:
    """Why an image of this shape and dtype is not a frame, in words, or None if it is one: the one
    rule of what every reader of frames gives and the model's preprocessing takes, an RGB uint8
    array [H, W, 3] of at least one pixel (Pillow took a float array as a bare TypeError, and
    resized an image of no pixel into a frame of zeros)."""
    if len(shape) != 3 or shape[2] != 3 or np.dtype(dtype) != np.uint8 or 0 in shape[:2]:
        return f"not an RGB uint8 image [H, W, 3] of H, W >= 1 (shape {tuple(shape)}, dtype {np.dtype(dtype)})"
    return None


def check_path_arg(value: Any, name: str) -> Path:
    """A path argument of the Python API as a Path. pathlib would raise a bare TypeError for None,
    a number or bytes, and read "" as the current folder (silently the wrong place): refused here
    with one message naming the argument."""
    if isinstance(value, str) and not value.strip():
        raise InvalidArgumentError(f"{name} is an empty path")
    if not isinstance(value, (str, os.PathLike)) or isinstance(os.fspath(value), bytes):
        raise InvalidArgumentError(f"{name} must be a path (str or os.PathLike), got {_short(value)} "
                                   f"({type(value).__name__})")
    return Path(value)


def _short(value: Any) -> str:
    """A number as a message shows it: an integer of thousands of digits is cut."""
    text = str(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} digits)"


def check_positive_float(value: Any, name: str) -> float:
    """`value` as a finite float > 0 (NaN, infinities, zero and negatives are refused; so are
    booleans: ``fps=True`` is a mistake, not 1 frame per second)."""
    if isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(f"{name} must be a positive number, got {value!r}".lstrip())
    if not isinstance(value, (int, float)):
        try:
            value = float(value)  # numpy scalars, strings of numbers
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"{name} must be a positive number, got {value!r}".lstrip()) from None
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a finite number > 0, got {value!r}".lstrip())
    return value


def check_range(value: Any, name: str, low: float, high: float, unit: str = "") -> float:
    """`value` as a finite float in [low, high] (:func:`check_positive_float` first)."""
    value = check_positive_float(value, name)
    if not low <= value <= high:
        raise InvalidArgumentError(f"{name} must be between {low:g} and {high:g}{unit}, got {value:g}".lstrip())
    return value


def check_fps(value: Any, name: str = "fps") -> float:
    """A frame rate in frames per second within :data:`FPS_RANGE`: every frame duration of it
    is representable by the overlay encoder and every frame time by a float."""
    return check_range(value, name, *FPS_RANGE, " frames per second")


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
    except ValueError:  # also a string of more digits than int() converts
        raise InvalidArgumentError(f"expected an integer, got {_short(text)!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidArgumentError(f"expected a number, got {text!r}") from None


# argparse puts "argument --fps: " before the message: the checks get no name of their own.
positive_int = _argparse_type(lambda s: check_int(_int(s), "", 1), "positive integer")
non_negative_int = _argparse_type(lambda s: check_int(_int(s), "", 0), "non-negative integer")
thread_count = _argparse_type(lambda s: check_int(_int(s), "", 1, MAX_THREADS), "number of threads")
positive_float = _argparse_type(lambda s: check_positive_float(_float(s), ""), "positive number")
fps = _argparse_type(lambda s: check_fps(_float(s), ""), "frame rate")
hours = _argparse_type(lambda s: check_range(_float(s), "", *HOURS_RANGE, " hours"), "hours")
gpu_share = _argparse_type(lambda s: check_gpu_share(_float(s)), "number of GPUs")
# numpy's generators take seeds in [0, 2**32) for the legacy API, >= 0 for default_rng
seed = _argparse_type(lambda s: _seed(_int(s)), "seed")


def _path_text(text: str) -> str:
    if not text.strip():
        # "" would be the current folder for pathlib and a default for `if path:` tests: never what was meant
        raise InvalidArgumentError(f"expected a path, got {text!r}")
    return text


def _host_name(text: str) -> str:
    if not text.strip():
        raise InvalidArgumentError(f"expected an address, got {text!r} (an empty host listens on every network "
                                   "interface: give 0.0.0.0 to mean that)")
    try:
        text.encode("idna")  # what the socket layer does with a name: a bare TypeError for what it cannot
        ok = text.isprintable() and not any(c.isspace() for c in text)
    except UnicodeError:
        ok = False
    if not ok:
        raise InvalidArgumentError(f"expected a host name or IP address, got {text[:60]!r}"
                                   f"{'...' if len(text) > 60 else ''}")
    return text


# A path (empty or blank refused) and a listening address (name or IP) of a command line.
path_text = _argparse_type(_path_text, "path")
host_name = _argparse_type(_host_name, "host")


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that refuses ``--option=--``: Python 3.11's argparse takes it
    for an empty list, skipping the option's type (``--workers=--`` reached the code as ``[]``)."""

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102
        namespace, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            value = getattr(namespace, action.dest, None)
            if action.option_strings and action.nargs is None and isinstance(value, list) and (
                    value == [] != action.default or [] in value):
                self.error(f"argument {'/'.join(action.option_strings)}: expected one argument")
        return namespace, extras


def check_gpu_share(value: Any, name: str = "") -> float:
    """0 (no GPU) or a share within :data:`GPU_SHARE_RANGE`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != 0 and not (
            math.isfinite(value) and GPU_SHARE_RANGE[0] <= value <= GPU_SHARE_RANGE[1]):
        raise InvalidArgumentError(f"{name} must be 0 or between {GPU_SHARE_RANGE[0]:g} and {GPU_SHARE_RANGE[1]:g} "
                                   f"GPUs, got {_short(value)}".lstrip())
    return float(value)


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


def check_not_an_input(path: str | Path, files: Sequence[str | Path] = (), folders: Sequence[str | Path] = (),
                       option: str = "--json") -> None:
    """A result file must not replace what the command reads: refuse an existing `path` that is one
    of `files` or lies inside one of `folders`."""
    import os  # noqa: PLC0415

    path = Path(path)
    if not path.exists():
        return
    for f in map(Path, files):
        if f.exists() and os.path.samefile(path, f):
            raise InvalidArgumentError(f"{option} {path}: is the input {f}; choose another file name")
    real = path.resolve()
    for d in map(Path, folders):
        if d.is_dir() and real.is_relative_to(d.resolve()):
            raise InvalidArgumentError(f"{option} {path}: is a file of the input folder {d}; choose another file name")

