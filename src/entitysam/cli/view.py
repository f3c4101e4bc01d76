"""`entitysam view RESULT_DIR [--host H] [--port N] [--open]`: review and correct a result in the
browser (`entitysam.review.server`). Needs the `viewer` extra (starlette, uvicorn)."""

from __future__ import annotations

import argparse
from typing import Sequence

from ..argtypes import ArgumentParser, host_name, path_text
from ..errors import EntitySAMError, ResultFolderNotFoundError, for_terminal
from .options import print_err

__all__ = ["build_parser", "main"]


def port_number(text: str) -> int:
    """--port: 0 (a free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 (any free port) to 65535, got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="entitysam view",
        description="Review and correct a result of `entitysam segment` in the browser: play it with the entities "
                    "tinted, hide, delete, merge, split and label entities, save a corrected revision next to the "
                    "original, export it. Prints the URL to open (it carries a per-run token that edits need, and "
                    "viewing too on an address other than a loopback one).")
    p.add_argument("result", type=path_text, metavar="RESULT_DIR", help="a complete result folder (the one holding manifest.json)")
    p.add_argument("--host", type=host_name, default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: only this machine can connect)")
    p.add_argument("--port", type=port_number, default=8765, help="port (default 8765; 0: any free port)")
    p.add_argument("--open", action="store_true", help="open the URL in the default browser")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from ..review.server import serve

        serve(args.result, host=args.host, port=args.port, open_browser=args.open,
              # a folder name of undecodable bytes (\udcXX) made a strict UTF-8 stdout raise before the
              # server started, and escape sequences in it drove the terminal: shown as error lines show names
              say=lambda msg: print(for_terminal(msg), flush=True))
    except ResultFolderNotFoundError as err:  # RESULT_DIR names no folder: a mistaken argument
        print_err(str(err))
        return 2
    except EntitySAMError as err:
        print_err(str(err))
        return 1
    except ImportError as err:
        print_err(f"the viewer needs the `viewer` extra ({err.name} is missing): pip install 'entitysam[viewer]'")
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
