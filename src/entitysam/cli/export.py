"""`entitysam export RESULT_DIR --format mots|cvat-video|ytvis|coco-video -o FILE_OR_DIR`
(`entitysam.review.export`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..argtypes import path_text, positive_int
from ..errors import EntitySAMError, ResultFolderNotFoundError, for_terminal
from .options import add_overwrite, add_quiet, print_err

FORMATS = ("mots", "cvat-video", "ytvis", "coco-video")  # = entitysam.review.export.FORMATS (kept light for -h)


def mots_class_id(text: str) -> int:
    """--class-id: 1..65 (class * 1000 + instance must fit the 16-bit MOTS PNG) but 10 (MOTS's
    ignore regions): a usage error otherwise."""
    value = positive_int(text)
    if value > 65:
        raise argparse.ArgumentTypeError(f"a MOTS class id is 1 to 65 (16-bit values), got {value}")
    if value == 10:
        raise argparse.ArgumentTypeError("MOTS class 10 marks ignore regions (KITTI-MOTS, MOTSChallenge): "
                                         "choose another class id")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="export a result folder to MOTS PNG, CVAT for video XML, YouTube-VIS or COCO-style video JSON",
        description="Export a complete result folder of `entitysam segment` (offline, online or a reviewed "
                    "revision) to the format another tool reads. Hidden and deleted entities are not exported. "
                    "The output is written atomically and an existing one is refused unless --overwrite.")
    p.add_argument("result", type=path_text, metavar="RESULT_DIR", help="a result folder (panoptic output required)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="mots: a folder of 16-bit instance PNGs (what CVAT imports as mask tracks); cvat-video: "
                        "CVAT for video 1.1 XML with mask tracks; ytvis: YouTube-VIS results JSON; coco-video: "
                        "COCO-style video JSON")
    p.add_argument("-o", "--output", type=path_text, required=True, metavar="FILE_OR_DIR",
                   help="the output file (a folder for mots); its parent folder must exist")
    p.add_argument("--class-id", type=mots_class_id, default=2, metavar="N",
                   help="(mots) the class of every entity, 1 to 65 but 10 (ignore regions): values are N*1000 + "
                        "instance (default 2, KITTI-MOTS pedestrian)")
    p.add_argument("--mots-txt", action="store_true",
                   help="(mots) also write the MOTS txt format (OUT/<video>.txt: frame id class_id height width rle)")
    p.add_argument("--cvat-tracks", choices=("frame", "entity"), default="frame",
                   help="(cvat-video) frame: one track per entity per frame, the layout CVAT imports completely "
                        "(its importer keeps only the first mask of a mask track), the entity id in an attribute "
                        "(default); entity: one mask track per entity")
    p.add_argument("--video-id", type=positive_int, default=1, metavar="N", help="(ytvis) the video_id (default 1)")
    add_overwrite(p, "replace an earlier export (only a file or folder entitysam exported in this format; never "
                     "anything inside a result folder)")
    add_quiet(p, "print nothing on success")
    p.set_defaults(func=run)


def output_parent_problem(output: str) -> str | None:
    """Why the folder that is to hold `output` cannot (absent, or not a folder), or None. A
    mistaken -o, refused before any work with exit 2 as `metrics --json` and `segment
    --save-logits` refuse it (it was a failed export, exit 1)."""
    parent = Path(output).parent
    if parent.is_dir():
        return None
    state = "is not a folder" if os.path.lexists(parent) else "does not exist"
    return f"--output {output}: {parent} {state} (create the folder first or choose another output)"


def run(args) -> int:
    from ..review import ResultFolder
    from ..review.export import export

    problem = output_parent_problem(args.output)
    if problem is not None:
        print_err(problem)
        return 2
    options = {"mots": {"class_id": args.class_id, "txt": args.mots_txt}, "ytvis": {"video_id": args.video_id},
               "cvat-video": {"tracks": args.cvat_tracks}}.get(args.format, {})
    try:
        result = ResultFolder.open(args.result)
        out = export(result, args.format, args.output, overwrite=args.overwrite, **options)
    except ResultFolderNotFoundError as err:  # RESULT_DIR names no folder: a mistaken argument, before any work
        print_err(err)
        return 2
    except EntitySAMError as err:
        print_err(err)
        return 1
    except OSError as err:
        from ..io.paths import describe_os_error

        err.filename = None  # (a file of the hidden staging copy, removed: the output is named)
        print_err(describe_os_error(err, f"the {args.format} export {args.output}"))
        return 1
    if not args.quiet:
        # as the error lines show names: a name of undecodable bytes (\udcXX) made a strict UTF-8
        # stdout raise once the export was written, and escape sequences in it drove the terminal
        print(for_terminal(f"{args.format}: {out}"))
    return 0
