"""The `entitysam` command: a thin layer over the library (`entitysam.pipeline`), one module per
command, the options they share in `options.py`.

    entitysam segment INPUT [INPUT ...] --output DIR [options]     (segment.py)
    entitysam download vit-s [vit-l]                                (download.py)
    entitysam demo [-o DIR]                                         (demo.py: offline, bundled model)
    entitysam export RESULT_DIR --format F -o OUT                   (export.py: entitysam.review.export)
    entitysam metrics PRED_DIR GT_DIR GT_JSON [options]            (metrics.py: entitysam.eval.metrics)
    entitysam eval vipseg --data-root DIR --output DIR [options]   (entitysam.cli.eval)
    entitysam train --config vit-s-stage1 [key=value ...]          (entitysam.train.cli)
    entitysam view RESULT_DIR [--host H] [--port N] [--open]       (view.py: the review web app)

Exit codes: 0 success (skipped videos included), 1 at least one video failed or the model could
not be loaded, 2 invalid command line, 130 interrupted (Ctrl-C, or SIGTERM; in online mode after
finishing the outputs of the frames done).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import importlib
import os
import signal
import sys
import tempfile
import threading
from typing import Sequence

from ..argtypes import ArgumentParser
from ..errors import Terminated
from ..interrupts import forget_handled_interrupts, interrupts_once
from . import demo, download, export, segment
from .options import print_err

__all__ = ["main", "command", "build_parser", "dispatch"]

# Sub-commands implemented in other modules: name -> (help, "module:function" taking argv).
DELEGATED: dict[str, tuple[str, str]] = {
    "metrics": ("VEQ / STQ of predictions in the official layout (see `entitysam metrics -h`)",
                "entitysam.cli.metrics:main"),
    "train": ("train EntitySAM: the official two-stage recipe, single process or torchrun DDP "
              "(see `entitysam train -h` and docs/training.md)", "entitysam.train.cli:command_main"),
    "view": ("review and correct a result in the browser: play, hide, delete, merge, split, label, save, "
             "export (see `entitysam view -h`)", "entitysam.cli.view:main"),
    "eval": ("benchmark evaluation: `entitysam eval vipseg` runs a VIPSeg split and scores it "
             "(see `entitysam eval vipseg -h`)", "entitysam.cli.eval:main"),
}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = ArgumentParser(prog="entitysam",
                                     description="EntitySAM: segment and track every entity in a video.")
    parser.add_argument("--version", action="version", version=f"entitysam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    segment.add_parser(sub)
    download.add_parser(sub)
    demo.add_parser(sub)
    export.add_parser(sub)
    for name, (help_text, _) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    parser.set_defaults(command_parsers=sub.choices)  # for errors worded by the command's own parser
    return parser


def run_delegated(name: str, argv: Sequence[str]) -> int:
    """A command implemented by another module's main(argv); its argparse exits become codes."""
    module, func = DELEGATED[name][1].split(":")
    try:
        result = getattr(importlib.import_module(module), func)(list(argv))
    except SystemExit as exc:  # argparse --help / usage errors of the delegated parser
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return int(result or 0)


def dispatch(argv: Sequence[str]) -> int:
    """Parse `argv` and run its command (exit code)."""
    if argv and argv[0] in DELEGATED:
        return run_delegated(argv[0], argv[1:])
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown and args.command is not None:
            # said by the command's parser (its usage, not the top level's), with a hint for a file
            # named like an option, which argparse takes for one
            dashed = [a for a in unknown if a.startswith("-") and os.path.lexists(a)]
            hint = (f" ({dashed[0]} is a file: put -- before the inputs, or write ./{dashed[0]})" if dashed else "")
            args.command_parsers[args.command].error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
        elif unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:  # argparse exits with 2 on errors, 0 on --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return args.func(args)


class ExitShield:
    """The SIGINT and SIGTERM handler from a command's end to the process's exit: it ends the
    process at once with the command's exit code (`code`, set by main before the handler takes
    over; 130 if a signal came first)."""

    code: int | None = None

    def __call__(self, signum, frame) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(130 if self.code is None else self.code)


def main(argv: Sequence[str] | None = None, *, then: ExitShield | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); its exit code. then: the SIGINT and
    SIGTERM handler afterwards, told the code (default: the handlers from before)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # A Ctrl-C anywhere the commands do not handle it themselves (importing torch, loading the
    # model, parsing a checkpoint) ends with one line and the documented code, not a traceback.
    with interrupts_once(then):
        try:
            code = _run(argv)
        except BaseException as exc:
            if then is not None:  # (an internal error, its traceback printed: 1; a SystemExit's own code)
                then.code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
            raise
        if then is not None:
            then.code = code  # (before it takes the signals: a second Ctrl-C then keeps the code)
        return code


def _run(argv: list[str]) -> int:
    try:
        return dispatch(argv)
    except KeyboardInterrupt as stop:
        print_err("terminated" if isinstance(stop, Terminated) else "interrupted")
        return 130
    except BrokenPipeError:
        return stdout_closed()
    except OSError as err:
        code = os_error_code(err)
        if code is None:
            raise
        return code


def command() -> int:
    """The process's entry point (`entitysam`, `python -m entitysam`): main(), then the exit
    shielded from a late Ctrl-C or SIGTERM (a second Ctrl-C, say). One that came while Python
    waited for threads ends the process at once with main's code; from the first exit handler on
    (torch's finalizers, then the interpreter's teardown) they are ignored. They used to interrupt
    torch's finalizers, which printed a KeyboardInterrupt traceback, or to kill the process by
    SIGINT once Python had restored the default handlers (for an instant as main returned, even
    after main had handled the first: -15 for a repeated SIGTERM). A Ctrl-C handled by a command
    no longer makes `python -m entitysam` kill itself by SIGINT at the end either
    (interrupts.forget_handled_interrupts)."""

    def ignore_from_now_on():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # (Python leaves an ignored signal ignored at exit)

    on_main_thread = threading.current_thread() is threading.main_thread()
    code = main(then=ExitShield() if on_main_thread else None)
    if on_main_thread:
        atexit.register(ignore_from_now_on)  # (run first: after the threads, before earlier handlers)
    forget_handled_interrupts()  # (once a late signal can no longer raise)
    return code


def os_error_code(err: OSError) -> int | None:
    """The exit code of an OSError no command handles, its one line printed; None: not one of these.
    A name longer than the system takes (checking whether a path exists raises it) is the user's
    mistake (2); no usable temporary folder, an internal failure (1)."""
    if err.errno == errno.ENAMETOOLONG:
        path = os.fsdecode(err.filename) if err.filename is not None else ""
        # the name over the limit (255 bytes on common file systems), else the whole path
        name = next((part for part in path.split(os.sep) if len(os.fsencode(part)) > 255), path)
        shown = f"{name[:40]!r}... ({len(name)} characters)" if len(name) > 40 else repr(name)
        print_err(f"file name too long: {shown}: a path or one of its names is longer than the system allows")
        return 2
    # Importing torch asks Python for a temporary folder, which tests each candidate by
    # writing to it: on a full disk none passes and the import fails with this error.
    if isinstance(err, FileNotFoundError) and no_temp_folder():
        print_err("no usable temporary folder: $TMPDIR (if set), /tmp, /var/tmp and the current folder are "
                  "full or not writable: free some space, or set TMPDIR to a folder with free space")
        return 1
    return None


def stdout_closed() -> int:
    """Standard output closed by its reader (``entitysam train --print-config | head``): the rest
    goes nowhere (Python's own flush at exit would print a traceback too); one line, exit 1."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    print_err("the output was cut short: its reader closed the pipe (broken pipe)")
    return 1


def no_temp_folder() -> bool:
    """Whether Python finds no usable temporary folder (all candidates full or not writable)."""
    try:
        tempfile.gettempdir()
    except FileNotFoundError:
        return True
    return False


