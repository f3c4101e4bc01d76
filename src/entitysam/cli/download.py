"""`entitysam download vit-s [vit-l]`: pre-fetch published checkpoints from the Hugging Face hub."""

from __future__ import annotations

from ..argtypes import path_text
from ..errors import EntitySAMError, for_terminal
from .options import print_err, say


def add_parser(sub) -> None:
    p = sub.add_parser("download", help="pre-fetch published checkpoints from the Hugging Face hub",
                       description="Download published checkpoints (Hugging Face repository mqye/entitysam) into "
                                   "the Hugging Face cache and print their paths.")
    p.add_argument("models", nargs="+", choices=("vit-s", "vit-l"), metavar="MODEL", help="vit-s and/or vit-l")
    p.add_argument("--cache-dir", type=path_text, default=None, help="Hugging Face cache folder (default: HF_HUB_CACHE)")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..hub import resolve_checkpoint
    from ..io.paths import nearest_existing

    if args.cache_dir is not None and not nearest_existing(args.cache_dir).is_dir():
        # a usage error, said before the hub is asked (it failed after, blamed on the network)
        print_err(EntitySAMError(f"--cache-dir {args.cache_dir}: {nearest_existing(args.cache_dir)} is a file, "
                                 "not a folder: choose a folder for the cache"))
        return 2
    status = 0
    for name in dict.fromkeys(args.models):  # each once, in the order given (vit-s vit-s fetched it twice)
        try:
            # (--cache-dir is the cache to fill, for machines that share it: a copy in the model
            # folder of this one, found first, left it empty)
            path = resolve_checkpoint(name, cache_dir=args.cache_dir, force_download=args.force, say=say,
                                      model_folder=args.cache_dir is None)
        except EntitySAMError as err:
            print_err(err)
            status = 1
            continue
        print(for_terminal(f"{name}: {path}"))  # a --cache-dir of undecodable bytes: no UnicodeEncodeError
    return status
