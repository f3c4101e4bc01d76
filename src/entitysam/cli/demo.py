"""`entitysam demo`: generate a synthetic video, segment it with the bundled demo model, score it
(`entitysam.pipeline.demo`)."""

from __future__ import annotations

import argparse
import time

from ..argtypes import path_text, positive_int, seed
from ..errors import CheckpointMismatchError, EntitySAMError, OutputError, join_remedies
from .options import (add_checkpoint, add_device, add_labels, add_overwrite, add_quiet, add_save, add_threads,
                      add_trust_checkpoint_code, check_model_args, load_model, print_err, sayer, set_threads)


def frame_size(text: str) -> tuple[int, int]:
    """--size WxH (e.g. 320x240), within the demo's limits."""
    from ..pipeline.demo import check_demo_size

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 320x240), got {text!r}") from None
    try:
        check_demo_size(w, h)
    except EntitySAMError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return w, h


def add_parser(sub) -> None:
    from ..data.synthetic.demo import DEMO_DEFAULTS

    d = DEMO_DEFAULTS
    p = sub.add_parser(
        "demo", help="offline demo: generate a synthetic video, segment it with the bundled demo model, score it",
        description="Generate a short synthetic video (textured stuff and shapes that move, occlude, enter and "
                    "leave), segment it with the bundled demo model (no network), write what `entitysam segment` "
                    "writes (panoptic PNGs + JSON, entities.json, overlay.mp4) and a VEQ/STQ report against the "
                    "generated ground truth. The demo model knows only such synthetic scenes: real videos need "
                    "--model vit-s or vit-l.")
    p.add_argument("-o", "--output", type=path_text, default="entitysam-demo", metavar="DIR",
                   help="output folder (default entitysam-demo): input/, demo/, report.json, report.txt")
    p.add_argument("--frames", type=positive_int, default=d["num_frames"], metavar="N",
                   help=f"frames of the generated video (default {d['num_frames']})")
    p.add_argument("--size", type=frame_size, default=(d["width"], d["height"]), metavar="WxH",
                   help=f"frame size (default {d['width']}x{d['height']})")
    p.add_argument("--seed", type=seed, default=d["seed"], help=f"scene seed (default {d['seed']})")
    add_checkpoint(p, "segment with this checkpoint instead of the bundled demo weights (e.g. a training run's)")
    add_trust_checkpoint_code(p, "UNSAFE: unpickle --checkpoint in full, which runs any code in the file "
                                 "(default: refused)")
    add_save(p, "formats among panoptic, entities, overlay, or all (default); panoptic is required")
    add_labels(p)
    add_device(p, default="cpu", help="default cpu")
    add_threads(p)
    add_overwrite(p, "replace an earlier demo run in DIR")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    add_quiet(p, "no progress bars; only the report")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import jsonio
    from ..pipeline.demo import DemoOutputInUseError, check_demo_request, run_demo, summary

    say = sayer(args.quiet)
    width, height = args.size
    try:  # every check before loading a checkpoint or writing anything
        formats = check_demo_request(args.output, num_frames=args.frames, width=width, height=height,
                                     seed=args.seed, formats=args.save, overwrite=args.overwrite)
        check_model_args(args)
    except DemoOutputInUseError as err:  # an output folder in the way: as `segment`, a failure (1)
        print_err(err.describe("--overwrite", "choose another -o"))
        return 1
    except OutputError as err:
        print_err(err)
        return 1
    except EntitySAMError as err:
        print_err(err)
        return 2
    set_threads(args.threads)
    t0 = time.perf_counter()
    try:
        model = load_model(args, "demo") if args.checkpoint else None  # None: the bundled demo model
        report = run_demo(args.output, model=model, num_frames=args.frames, width=width, height=height,
                          seed=args.seed, formats=formats, labels=args.labels, overwrite=args.overwrite,
                          device=args.device, progress=not args.quiet, say=say)
    except KeyboardInterrupt:
        print_err("interrupted")
        return 130
    except CheckpointMismatchError as err:
        # the demo has no --model: a remedy naming a configuration (use or leave out --model) is not
        # ours; the others (--trust-checkpoint-code for a checkpoint holding code) are
        if any(r.argument == "config" for r in err.remedies):
            err = join_remedies(err.problem, ["entitysam demo runs checkpoints of the demo configuration only; "
                                              "segment with this one by `entitysam segment --checkpoint PATH`"])
        print_err(err)
        return 1
    except OSError as err:  # e.g. a full disk while the input video is generated
        from ..io.paths import describe_os_error

        print_err(describe_os_error(err, f"the demo in {args.output}"))
        return 1
    except (EntitySAMError, RuntimeError, ValueError) as err:
        print_err(err)
        return 1
    if args.json:
        print(jsonio.dumps(jsonio.jsonable(report.to_dict()), indent=1))
    else:
        print(summary(report))
        if not args.quiet:
            print("\n" + report.table)
    say(f"done in {time.perf_counter() - t0:.1f}s; report in {report.output / 'report.txt'}")
    return 0
