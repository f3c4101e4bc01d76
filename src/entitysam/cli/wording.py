"""The command line's words for the library's errors: each `Remedy` (a Python argument to pass)
becomes the flag that passes it. The library never names flags (`entitysam.errors`); this table
is the one place that knows which flag sets which argument."""

from __future__ import annotations

from ..errors import EntitySAMError, Remedy, join_remedies

__all__ = ["FLAGS", "MODEL_CHOICES", "flag_words", "user_message"]

# Python argument -> flag. A flag that sets the argument to False is spelled with its value:
# ("metrics", False) -> --no-metrics.
FLAGS: dict[str | tuple[str, object], str] = {
    "allow_pickle": "--trust-checkpoint-code",
    "overwrite": "--overwrite",
    "skip_existing": "--skip-existing",
    "wait": "--wait-lock",
    "device": "--device",
    "dtype": "--dtype",
    "checkpoint": "--checkpoint",
    "config": "--model",
    "gt_json": "--gt-json",
    "gt_dir": "--gt-dir",
    ("metrics", False): "--no-metrics",
    "output": "--output",
    "start": "--start",
    "end": "--end",
    "stride": "--stride",
    "max_frames": "--max-frames",
    "max_pixels": "--max-pixels",
    "save_logits": "--save-logits",
    "logits_dtype": "--logits-dtype",
    "work_dir": "--output",  # the command line keeps a run's temporary files in its output folder
    "batch": "--batch",
    "online": "--online",
    "shard": "--shard",
}


# What --model accepts: fewer configurations than `config=` takes in Python (not `tiny`).
MODEL_CHOICES = ("vit-s", "vit-l", "demo")


def flag_words(remedy: Remedy) -> str:
    """``use --overwrite to replace them``; an argument without a flag keeps its Python words. A
    configuration --model cannot name is reached by leaving --model out (inferred from the file)."""
    if remedy.argument == "config" and remedy.metavar is None and remedy.value not in MODEL_CHOICES:
        return " ".join(filter(None, [f"leave out {FLAGS['config']}", remedy.purpose])) + \
            f" (its configuration, {remedy.value}, is then inferred from its keys)"
    if (remedy.argument, remedy.value) in FLAGS:
        shown = FLAGS[(remedy.argument, remedy.value)]
    elif remedy.argument in FLAGS:
        flag = FLAGS[remedy.argument]
        if remedy.metavar is not None:
            shown = f"{flag} {remedy.metavar}"
        elif remedy.value is True:
            shown = flag
        else:
            shown = f"{flag} {remedy.value}"
    else:
        return remedy.python_words()
    return " ".join(filter(None, [f"use {shown}", remedy.purpose]))


def user_message(err: BaseException | str) -> str:
    """What the command line prints for an error: its problem with the remedies in flag words."""
    if isinstance(err, EntitySAMError) and err.remedies:
        return join_remedies(err.problem, [flag_words(r) for r in err.remedies])
    return str(err)
