"""What the commands share: options (each defined once), argument types, error printing, and
loading the model with the command-line wording of its errors and warnings.

Nothing here imports torch at import time: `entitysam -h` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import decimal
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterator

from ..argtypes import path_text, thread_count
from ..errors import EntitySAMError
from ..errors import say_on_stderr as say  # what every command prints its lines with

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SAVE_CHOICES = ("panoptic", "entities", "overlay")
DEFAULT_MAX_PIXELS_TEXT = "50M"  # = entitysam.io.sources.DEFAULT_MAX_PIXELS (not imported here: keeps -h fast)
TRUST_FLAG = "--trust-checkpoint-code"


def print_err(msg: str | BaseException, prefix: str = "") -> None:
    """``error: [prefix: ]message`` on stderr; an EntitySAMError is worded with the flags. The prefix
    (which input failed) is left out when the message begins with it already: an empty folder
    `x.mp4`, whose result is named `x.mp4`, said "error: x.mp4: x.mp4: empty folder"."""
    from .wording import user_message

    text = user_message(msg)
    named = not prefix or text.startswith(f"{prefix}: ")
    say(f"error: {text}" if named else f"error: {prefix}: {text}")


def sayer(quiet: bool) -> Callable[[str], None]:
    """Progress messages on stderr, or nothing with -q."""
    return (lambda msg: None) if quiet else say


# ----------------------------------------------------------------------------- argument types


def pixel_count(text: str) -> int | None:
    """--max-pixels: "50000000", "50M", "800k", or "none" (no limit)."""
    s = text.strip().lower()
    if s in ("none", "off", "unlimited"):
        return None
    scale = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    try:  # decimal: "1.1M" is exactly 1100000 (as a float, 1100000.0000000002)
        value = decimal.Decimal(s[:-1] if scale != 1 else s) * scale
    except (decimal.DecimalException, ValueError):  # not a number, or past decimal's exponent range
        value = decimal.Decimal(-1)
    # (the exponent first: the integer of "1e999999999" takes minutes to make)
    if not value.is_finite() or value.adjusted() > 30 or value < 1 or value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"expected a whole, positive number of pixels (e.g. 50000000 or 50M; at "
                                         f"most 1e30) or none (no limit), got {text!r}")
    return int(value)


# ----------------------------------------------------------------------------- shared options


def add_checkpoint(p, help: str) -> None:
    p.add_argument("--checkpoint", type=path_text, default=None, metavar="PATH", help=help)


def add_trust_checkpoint_code(p, help: str) -> None:
    p.add_argument(TRUST_FLAG, action="store_true", help=help)


def add_device(p, default: str = "auto", help: str = "auto (default): cuda, else mps, else cpu") -> None:
    p.add_argument("--device", default=default, choices=DEVICES, help=help)


def add_dtype(p) -> None:
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="auto (default): bfloat16 autocast on CUDA (as the official evaluation; float16 on GPUs "
                        "before Ampere), float32 elsewhere; "
                        "bfloat16 on CPU: the memory attention alone in bfloat16 (about 2.5x the official speed on "
                        "ViT-S, over 99%% of mask pixels as float32)")


def add_threads(p, help: str = "CPU threads for torch") -> None:
    p.add_argument("--threads", type=thread_count, default=None, metavar="N", help=help)


def add_save(p, help: str) -> None:
    p.add_argument("--save", default="all", metavar="LIST", help=help)


def add_labels(p) -> None:
    p.add_argument("--labels", action="store_true", help="draw entity ids on overlay.mp4")


def add_overwrite(p, help: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=help)


def add_quiet(p, help: str) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help=help)


def set_threads(threads: int | None) -> None:
    """--threads N: torch's CPU threads (default: torch's choice)."""
    if threads:
        import torch

        torch.set_num_threads(max(1, threads))


# ----------------------------------------------------------------------------- model


def check_model_args(args) -> None:
    """What can be refused about the model options before loading it: an unavailable device,
    --exact with a dtype other than float32 (also --dtype auto, a half precision on CUDA)."""
    from ..inference.precision import check_exact, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    check_exact(getattr(args, "exact", False), resolve_dtype(getattr(args, "dtype", "auto"), device))


def load_model(args, config: str | None, say: Callable[[str], None] | None = None):
    """The model of a command (`entitysam.pipeline.loading.load_model`): --checkpoint (with the
    configuration `config`), else the published model `config`. The warning of
    --trust-checkpoint-code becomes one plain stderr line; a refused checkpoint names the flag.
    say: the command's progress lines (a slow check of a cached checkpoint says so)."""
    from ..pipeline.loading import load_model as load

    with checkpoint_wording():
        return load(args.checkpoint, config=config, device=args.device,
                    allow_pickle=bool(args.checkpoint) and args.trust_checkpoint_code, say=say)


@contextlib.contextmanager
def checkpoint_wording() -> Iterator[None]:
    """Around a model load of a command: the warning of a checkpoint loaded with
    --trust-checkpoint-code becomes one plain stderr line (a refused one names the flag through
    `print_err`)."""
    from ..checkpoints import UnsafeLoadWarning

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as recording:
            warnings.simplefilter("always", UnsafeLoadWarning)
            try:
                yield
            finally:
                caught = list(recording)
    finally:
        # Shown once recording has stopped: shown inside it, a warning would be recorded again
        # and the loop would never end.
        for w in caught:
            if issubclass(w.category, UnsafeLoadWarning):
                print(f"warning: {w.message.path}: loading with the full pickle loader ({TRUST_FLAG} / "
                      "allow_pickle=True): this file can run any code on this machine; do this only for files "
                      "you trust", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def check_output_root(out_root: Path) -> None:
    """-o DIR must be a folder or creatable as one: a file there (or above it) is a usage error."""
    if out_root.exists() and not out_root.is_dir():
        raise EntitySAMError(f"--output {out_root} is an existing file, not a folder: choose a folder for the results")
    if out_root.is_symlink() and not out_root.exists():  # mkdir cannot create through it
        raise EntitySAMError(f"--output {out_root} is a symbolic link to nowhere (or a link loop): "
                             "create its target folder first, or choose another folder")
    for parent in out_root.parents:
        if parent.is_symlink() and not parent.exists():
            raise EntitySAMError(f"--output {out_root}: {parent} is a symbolic link to nowhere (or a link loop)")
        if parent.exists():
            if not parent.is_dir():
                raise EntitySAMError(f"--output {out_root}: {parent} is a file, not a folder")
            break
