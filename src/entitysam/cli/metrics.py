"""`entitysam metrics PRED_DIR GT_DIR GT_JSON [--workers N] [--metric M] [--json OUT] [--overwrite]`:
class-agnostic VEQ and STQ of predictions in the official layout (the library:
`entitysam.eval.metrics`), printed as a table and optionally written as JSON.

Also ``python -m entitysam.cli.metrics`` and ``python -m entitysam.eval.metrics``.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Mapping, Sequence

from .. import jsonio
from ..argtypes import ArgumentParser, check_not_an_input, path_text, thread_count
from ..errors import EntitySAMError, OutputError, for_terminal, join_remedies
from ..eval import metrics
from ..eval.json_output import STDOUT, open_destination

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="entitysam metrics",
                                 description="Class-agnostic VEQ and STQ (EntitySAM official definitions).")
    ap.add_argument("pred_dir", type=path_text, help="directory with pan_pred/ and pred.json")
    ap.add_argument("gt_dir", type=path_text, help="GT panomasksRGB directory")
    ap.add_argument("gt_json", type=path_text, help="GT panoptic JSON")
    ap.add_argument("--workers", type=thread_count, default=None, metavar="N",
                    help="processes (default: number of CPUs)")
    ap.add_argument("--metric", choices=("all", "veq", "stq"), default="all",
                    help="which metric to compute (default: all, i.e. VEQ and STQ)")
    json_flag = ap.add_argument("--json", dest="json_out", type=path_text, default=None,
                                help="write the results to this JSON file (a new file; - or /dev/stdout: standard "
                                     "output, after the table; a pipe is written as a stream)").option_strings[0]
    overwrite_flag = ap.add_argument("--overwrite", action="store_true",
                                     help="replace the JSON file of an earlier run (only a file holding "
                                          "metrics results)").option_strings[0]
    args = ap.parse_args(argv)
    destination = None
    try:  # before hours of computing: the result must have somewhere to go
        if args.json_out:
            if args.json_out != STDOUT:  # (`-` is no file: one named so in the current folder is not it)
                # `--json gt.json` silently overwrote the ground truth with the scores
                check_not_an_input(args.json_out, files=(args.gt_json, Path(args.pred_dir) / "pred.json"),
                                   folders=(args.gt_dir, Path(args.pred_dir) / "pan_pred"), option=json_flag)
            destination = open_destination(args.json_out, option=json_flag, overwrite=args.overwrite)
    except EntitySAMError as err:
        _print_error(err, {"overwrite": overwrite_flag})
        return 2
    try:
        return _score_and_write(args, destination, {"overwrite": overwrite_flag})
    finally:
        if destination is not None:
            destination.close()


def _print_error(err: BaseException, flags: Mapping[str, str] | None = None) -> None:
    """``error: ...`` on stderr, its remedies worded with this command's flags."""
    text = str(err)
    if isinstance(err, EntitySAMError) and err.remedies and flags:
        text = join_remedies(err.problem, [" ".join(filter(None, [f"use {flags[r.argument]}", r.purpose]))
                                           if r.argument in flags else r.python_words() for r in err.remedies])
    print(for_terminal(f"error: {text}"), file=sys.stderr)


def _silence_stdout() -> None:
    """Standard output to /dev/null: Python's flush at exit would fail on it again, with a message."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _score_and_write(args, destination, flags: Mapping[str, str]) -> int:
    """Score, print the table, write the results to `destination` (if any); the exit code."""
    try:
        if args.metric == "veq":
            res = {"veq": metrics.compute_veq(args.pred_dir, args.gt_dir, args.gt_json, workers=args.workers)}
        elif args.metric == "stq":
            res = {"stq": metrics.compute_stq(args.pred_dir, args.gt_dir, args.gt_json, workers=args.workers)}
        else:
            res = metrics.evaluate(args.pred_dir, args.gt_dir, args.gt_json, workers=args.workers)
    except metrics.MetricsInputError as e:
        _print_error(e)
        return 2
    except BrokenProcessPool:  # (a RuntimeError: it was a traceback; `eval vipseg` says one line)
        _print_error("a scoring worker process ended abruptly (killed, e.g. for want of memory); "
                     "fewer --workers take less memory")
        return 1
    code = 0
    pipe_closed = False
    try:
        print(metrics.format_table(res), flush=True)
    except BrokenPipeError:
        # its reader gone (`| less` quit while scoring): the --json FILE is still written, as after
        # a full disk (it was lost with the scores, and `python -m entitysam.cli.metrics` gave a
        # traceback); the command line's one line for a closed standard output
        from . import stdout_closed  # noqa: PLC0415

        code = stdout_closed()
        pipe_closed = True
    except OSError as err:  # `> /dev/full`, a full disk: was a traceback, and no JSON written
        _print_error(f"cannot write the table to standard output: {err.strerror or err}")
        _silence_stdout()
        code = 1
    if destination is not None:
        try:
            destination.write(jsonio.dumps(jsonio.jsonable(res), indent=1) + "\n")
        except OutputError as err:
            _print_error(err, flags)
            return 1
        except OSError as err:
            if pipe_closed and isinstance(err, BrokenPipeError):  # (`--json -`: that pipe, said already)
                return 1
            where = "standard output" if args.json_out == STDOUT else args.json_out
            _print_error(f"cannot write {where}: {err.strerror or err}")
            return 1
    return code


if __name__ == "__main__":
    # through the `entitysam` entry point, as `entitysam metrics`: a Ctrl-C was a KeyboardInterrupt
    # traceback and a death by SIGINT, not "error: interrupted" and exit 130
    from . import command  # noqa: PLC0415

    sys.argv[1:1] = ["metrics"]
    raise SystemExit(command())
