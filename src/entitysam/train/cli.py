"""`entitysam train` / `python -m entitysam.train`: run the training recipe.

    entitysam train --config vit-s-stage1 data.root=datasets/coco
    torchrun --nproc_per_node 4 -m entitysam.train --config vit-s-stage2 model.weights=...
    entitysam train --config my.yaml solver.max_iter=2000 --print-config

Wiring into the main CLI (`entitysam/cli.py`), either as a delegated command taking argv::

    DELEGATED["train"] = ("train EntitySAM (official two-stage recipe, DDP)", "entitysam.train.cli:command_main")

or as an argparse sub-command: `add_parser(subparsers)` then `args.func(args)` (= `run(args)`);
there, put `key=value` overrides after the options (`main` accepts them anywhere).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from ..argtypes import ArgumentParser, path_text
from ..errors import for_terminal
from .config import NAMED_CONFIGS

DESCRIPTION = ("Train EntitySAM with the official two-stage COCO recipe (class-agnostic), single process or "
               "under torchrun (DDP, env:// rendezvous).")
EPILOG = (f"named configs: {', '.join(NAMED_CONFIGS)}. Overrides: section.key=value, e.g. solver.max_iter=100 "
          "data.root=datasets/coco model.sam2=checkpoints/sam2.1_hiera_small.pt resume=never.")


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", "-c", type=path_text, required=True,
                   help="named config (" + ", ".join(NAMED_CONFIGS) + ") or a .yaml/.json file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stdout")
    p.set_defaults(func=run)
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `train` sub-command to an argparse sub-parser collection."""
    p = subparsers.add_parser("train", help="train EntitySAM (official recipe, DDP)", description=DESCRIPTION,
                              epilog=EPILOG)
    return _configure(p)


def build_parser(prog: str = "python -m entitysam.train") -> argparse.ArgumentParser:
    return _configure(ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG))


def run(args: argparse.Namespace) -> int:
    from ..errors import EntitySAMError, InvalidArgumentError  # noqa: PLC0415
    from .config import load_config  # noqa: PLC0415
    from .config_checks import check_dataset, check_output_dir  # noqa: PLC0415

    try:  # a bad config or override, a missing dataset: one line and exit code 2, before anything is built
        cfg = load_config(args.config, list(args.overrides or []))
        if not args.print_config:
            check_dataset(cfg.data)
            check_output_dir(cfg.output_dir)
            from .resume import find_resume_checkpoint  # noqa: PLC0415

            find_resume_checkpoint(cfg)  # resume=PATH or a last_checkpoint naming a missing file
    except (KeyError, ValueError, FileNotFoundError, RuntimeError, EntitySAMError) as err:
        if isinstance(err, EntitySAMError):  # its remedies name arguments this command has no flag for
            message = err.problem
        else:
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(for_terminal(f"error: {message}"), file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg.to_json())
        return 0
    from .distributed import cleanup, rank_prefix  # noqa: PLC0415
    from .failstop import RankFailedError  # noqa: PLC0415
    from .trainer import train  # noqa: PLC0415

    try:
        train(cfg, quiet=args.quiet)
    except RankFailedError as err:  # another rank failed and says why: this one says only that it stopped
        print(for_terminal(f"error: {err.problem}"), file=sys.stderr)
        return 1
    except InvalidArgumentError as err:  # a config that does not fit the processes it runs on (ims_per_batch)
        print(for_terminal(f"error: {rank_prefix()}{err.problem}"), file=sys.stderr)
        return 2
    except EntitySAMError as err:  # unusable data or checkpoint (resume, model.weights, a write): one line
        # its remedies name arguments this command has no flag for
        print(for_terminal(f"error: {rank_prefix()}{err.problem}"), file=sys.stderr)
        return 1
    except BrokenPipeError:  # the progress lines' reader went away (`| head`): was a traceback under
        # `python -m entitysam.train` (the command torchrun runs); `entitysam train` says this too
        with contextlib.suppress(OSError, ValueError, AttributeError):  # (Python's flush at exit: one more)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        print(f"error: {rank_prefix()}the output was cut short: its reader closed the pipe (broken pipe)",
              file=sys.stderr)
        return 1
    finally:
        cleanup()
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m entitysam.train") -> int:
    """prog: the command as it was typed, which the usage and argparse's errors name."""
    args = build_parser(prog).parse_intermixed_args(argv)
    return run(args)


def command_main(argv: list[str] | None = None) -> int:
    """`entitysam train ...` (the main command's delegate): its usage says `entitysam train`."""
    return main(argv, prog="entitysam train")


if __name__ == "__main__":
    sys.exit(main())
