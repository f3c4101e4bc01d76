"""`entitysam segment INPUT [INPUT ...] -o DIR`: segment (offline) or stream (--online) each input
into DIR/<video-name>/, every input and output checked before the model is loaded.

Exit codes: 0 success (skipped videos included), 1 at least one video failed or the model could
not be loaded, 2 invalid command line, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..argtypes import fps, non_negative_int, path_text, positive_int
from ..errors import EntitySAMError, SourceError
from ..io.sources.live import shown_url
from .batch import (check_summary_file, load_or_report, segment_options, segment_shard, shard_of,
                    warn_ignored_array)
from .segment_ray import add_ray_arguments, check_ray_args, default_ray_summary, segment_on_ray
from .inputs import collect_inputs, video_name
from .options import (DEFAULT_MAX_PIXELS_TEXT, SAVE_CHOICES, add_checkpoint, add_device, add_dtype, add_labels,
                      add_overwrite, add_quiet, add_save, add_threads, add_trust_checkpoint_code, check_model_args,
                      check_output_root, pixel_count, print_err, sayer)
from .wording import MODEL_CHOICES, user_message


def _shown(source) -> str | os.PathLike:
    """An input as messages show it: a stream's address without the password of its user part
    (``rtsp://admin:***@camera/live``), as the stream's own messages and the manifest show it."""
    return shown_url(source) if isinstance(source, str) else source


def add_parser(sub) -> None:
    p = sub.add_parser(
        "segment", help="segment and track every entity of videos, frame folders or images",
        description="Segment and track every entity of each INPUT (video file: mp4 mov mkv webm avi; folder of "
                    "frames: jpg jpeg jpe jfif png tif tiff in natural order; single image; animation: gif webp, "
                    "multi-page tiff). Results go to OUTPUT/<video-name>/.")
    p.add_argument("inputs", nargs="*", type=path_text, metavar="INPUT",
                   help="video file, folder of frames or image; with --online also a stream URL (rtsp://, "
                        "http://, ...) or a video device (/dev/video0)")
    p.add_argument("-o", "--output", type=path_text, required=True, metavar="DIR", help="results go to DIR/<video-name>/")
    p.add_argument("--batch", action="append", type=path_text, default=[], metavar="DIR",
                   help="also process every video file and frame folder inside DIR (repeatable)")
    p.add_argument("--max-pixels", type=pixel_count, default=DEFAULT_MAX_PIXELS_TEXT, metavar="N",
                   help="refuse frames larger than N pixels (width x height), checked from the file's header before "
                        "decoding: an integer, or with a k/M suffix (e.g. 100M), or none for no limit "
                        f"(default {DEFAULT_MAX_PIXELS_TEXT} = 50 megapixels: 8K video and 50 MP photos)")
    sel = p.add_argument_group("frame selection (indices refer to the whole input)")
    sel.add_argument("--start", default=None, help="first frame: index (e.g. 10) or seconds (e.g. 2.5s)")
    sel.add_argument("--end", default=None, help="stop before this frame: index or seconds (exclusive)")
    sel.add_argument("--stride", type=positive_int, default=1, metavar="N", help="keep every N-th frame (default 1)")
    sel.add_argument("--max-frames", type=positive_int, default=None, metavar="N", help="process at most N frames")
    sel.add_argument("--fps", type=fps, default=None,
                     help="frame rate of frame folders and images (default 25); overrides a video's own rate")
    mod = p.add_argument_group("model")
    mod.add_argument("--model", default=None, choices=MODEL_CHOICES,
                     help="published model from the Hugging Face hub (default vit-s), or demo (bundled, offline, "
                          "synthetic scenes only); with --checkpoint: the configuration of that file")
    add_checkpoint(mod, "local checkpoint file (configuration inferred from its keys unless --model)")
    add_trust_checkpoint_code(mod, "UNSAFE: load a --checkpoint that holds pickled Python objects with the full "
                                   "unpickler, which runs any code in the file (default: refused; checkpoints load "
                                   "weights only)")
    add_device(mod)
    add_dtype(mod)
    mod.add_argument("--exact", action="store_true",
                     help="float32 in the official order of operations: the official outputs bit for bit on CPU "
                          "(same thread count), at about the official speed (default: 1.6x the official speed on ViT-S, equal up to rounding)")
    mod.add_argument("--compile", action="store_true",
                     help="torch.compile the memory encoder's fusion (12-14%% faster steps on an H200; the "
                          "first video pays ~17 s of compilation; meant for GPUs; not with --exact)")
    add_threads(mod, "CPU threads for torch (default: torch's choice, usually the number of cores)")
    out = p.add_argument_group("outputs")
    add_save(out, f"comma-separated formats among {', '.join(SAVE_CHOICES)}, or all (default), or none")
    add_labels(out)
    out.add_argument("--save-logits", nargs="?", const="", default=None, metavar="FILE.npz",
                     help="also save the raw low-res logits and scores: to FILE.npz ({video} is replaced by "
                          "the video name), or without FILE to <video-name>/logits.npz")
    out.add_argument("--logits-dtype", default="float32", choices=("float32", "float16"),
                     help="temporary on-disk logits: float32 (default) is exact, float16 halves the disk space")
    add_overwrite(out, "replace existing results (only folders entitysam wrote, never an input; "
                       "and an existing --save-logits FILE)")
    out.add_argument("--skip-existing", action="store_true",
                     help="skip videos whose complete results answer this run (same mode, frames and "
                          "--save formats; one made otherwise fails its video: --overwrite replaces it)")
    out.add_argument("--wait-lock", action="store_true",
                     help="when another entitysam run is writing the same result folder, wait for it to finish "
                          "(default: fail at once, naming its pid)")
    add_quiet(out, "no progress bars or summaries")
    many = p.add_argument_group("many processes (see README, Batches on many GPUs and machines)")
    many.add_argument("--shard", default=None, metavar="I/N",
                      help="process slice I of N (0 <= I < N) of the videos, balanced by frame count; shards "
                           "may run at once on one --output (a video is never processed twice at once; one "
                           "another shard holds is left to it) and re-run to finish what is missing "
                           "(--skip-existing is the default); auto: the Slurm array task's slice "
                           "(SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT), else 0/1. Under torchrun each rank "
                           "takes its slice (RANK/WORLD_SIZE) and GPU (cuda:LOCAL_RANK) with no flag; torchrun "
                           "in a Slurm array job needs auto: rank R of W in array task I of N takes slice "
                           "I*W+R of N*W")
    many.add_argument("--summary", type=path_text, default=None, metavar="FILE.json",
                      help="with sharding or --ray, where the run's summary goes (default "
                           "OUTPUT/.entitysam-batch/shard-I-of-N.json, with --ray OUTPUT/.entitysam-batch/ray.json)")
    add_ray_arguments(many)
    onl = p.add_argument_group("online mode (results per frame as the video is read; see README, Online mode)")
    onl.add_argument("--online", action="store_true",
                     help="emit each frame's result right after it is processed, using only past and present "
                          "frames (plus --delay frames of look-ahead); outputs are written as they are produced")
    onl.add_argument("--delay", type=non_negative_int, default=None, metavar="K",
                     help="look-ahead: the result of frame t is emitted after frame t+K is processed (default 0)")
    onl.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                     help="read through a bounded queue that drops the oldest frame when the model falls behind "
                          "(default: on for stream URLs and devices, off for files and folders)")
    onl.add_argument("--queue", type=positive_int, default=None, metavar="N",
                     help="frames buffered between the reader and the model (default 4)")
    p.set_defaults(func=run)


def _check_online_args(args, inputs) -> None:
    """Online-only options without --online, offline-only ones with it, live inputs offline."""
    if not args.online:
        for flag, value in (("--delay", args.delay), ("--live/--no-live", args.live), ("--queue", args.queue)):
            if value is not None:
                raise EntitySAMError(f"{flag} needs --online")
        live = [p for p in inputs if isinstance(p, str)]
        if live:
            raise EntitySAMError(f"{_shown(live[0])} is a live source: it can only be segmented with --online")
        return
    if args.save_logits is not None:
        raise EntitySAMError("--save-logits is not available with --online (no whole-video logits are kept)")
    if args.logits_dtype != "float32":
        raise EntitySAMError("--logits-dtype only applies to the offline merge, not to --online")
    if args.queue is not None and args.queue < 1:
        raise EntitySAMError(f"--queue must be >= 1, got {args.queue}")


def _check_logits_destination(save_logits: str | None, names: list[str]) -> None:
    """--save-logits FILE is written after the whole video is tracked: refuse a FILE that can
    never be written now (a folder, or under a file, or in a folder that cannot be created)."""
    from ..io.paths import nearest_existing

    if not save_logits:
        return
    for name in names:
        path = Path(save_logits.replace("{video}", name))
        if path.is_dir():
            raise EntitySAMError(f"--save-logits {path}: is a folder, expected a file name")
        ancestor = nearest_existing(path.parent)
        if not ancestor.is_dir():
            raise EntitySAMError(f"--save-logits {path}: {ancestor} is not a folder")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise EntitySAMError(f"--save-logits {path}: {ancestor} is not writable")


def _given_twice(inputs) -> tuple[int, int] | None:
    """The first two of `inputs` that name one input: the same words (a stream's URL, a device), or
    the same file or folder by another path or through a link (named apart, as a folder given through
    a link is named by the link, it was segmented twice)."""
    seen: dict = {}
    for j, source in enumerate(inputs):
        keys = [str(source)]
        try:
            st = os.stat(source)
            keys.append((st.st_dev, st.st_ino))
        except (OSError, ValueError, TypeError):  # a stream URL, a name that is gone
            pass
        for key in keys:
            if key in seen:
                return seen[key], j
        for key in keys:
            seen.setdefault(key, j)
    return None


def run(args) -> int:
    from ..pipeline.result import check_formats
    from ..distributed.local import default_summary_path
    from ..io.paths import name_clash
    from ..io.sources import FrameSelection

    say = sayer(args.quiet)
    try:
        formats = check_formats(args.save)
        inputs = collect_inputs(args)
        names = [video_name(p) for p in inputs]
        if twice := _given_twice(inputs):  # (before the names: "rename one" would segment it twice)
            i, j = twice
            again = "" if str(inputs[i]) == str(inputs[j]) else f" (as {_shown(inputs[j])})"
            raise SourceError(f"{_shown(inputs[i])} is given twice{again}: name each input once")
        if clash := name_clash(names):
            i, j, words = clash
            raise SourceError(f"{_shown(inputs[i])} and {_shown(inputs[j])} would both write to "
                              f"{Path(args.output) / names[i]}"
                              f"{words}: rename one or run them with different --output")
        if args.save_logits and len(inputs) > 1 and "{video}" not in args.save_logits:
            raise EntitySAMError("--save-logits FILE with several inputs needs {video} in FILE "
                                 "(or no FILE: each video folder gets logits.npz)")
        _check_logits_destination(args.save_logits, names)
        if args.overwrite and args.skip_existing:
            raise EntitySAMError("--overwrite and --skip-existing exclude each other")
        _check_online_args(args, inputs)
        check_output_root(Path(args.output))
        selection = FrameSelection(args.start, args.end, args.stride, args.max_frames)
        check_ray_args(args)
        if args.compile and args.exact:
            raise EntitySAMError("--compile and --exact exclude each other: compiled kernels fuse and reorder the "
                                 "floating-point operations that --exact keeps in the official order")
        if args.ray is None:  # with --ray the model options are the actors', checked where they run
            check_model_args(args)
        shard = shard_of(args) if args.ray is None else None
        default_summary = (default_summary_path(Path(args.output), shard) if shard is not None else
                           default_ray_summary(Path(args.output)) if args.ray is not None else None)
        if args.summary or default_summary is None:
            check_summary_file(args.summary, Path(args.output), names, inputs)
        else:  # the default OUT/.entitysam-batch/shard-I-of-N.json or ray.json: checked too, before any work
            check_summary_file(default_summary, Path(args.output), names, inputs, "the summary file", ours=True)
    except EntitySAMError as err:
        print_err(err)
        return 2

    out_root = Path(args.output)
    if args.ray is None:  # (once the command line is known good: not before an exit 2)
        warn_ignored_array(args)
    if args.ray is not None:
        return segment_on_ray(args, inputs, names, segment_options(args, formats, selection), out_root, say)
    if shard is not None:
        return segment_shard(args, inputs, names, formats, selection, out_root, shard, say)
    locks: list = []
    try:
        return _segment_all(args, inputs, names, formats, selection, out_root, locks, say)
    finally:
        # Last taken, first released: the first lock created the output folder and removes it if
        # it is left empty (every input failed), which it can only do once the other lock files are gone.
        for lock in reversed(locks):  # (the OS releases them too if this process is killed)
            lock.release()


def _segment_all(args, inputs, names, formats, selection, out_root: Path, locks: list, say) -> int:
    from ..distributed.jobs import StreamInterrupted, VideoJob, one_line, prepare_job, segment_job
    from ..io.manifest import read_manifest
    from ..io.output_lock import OutputLock
    from ..io.paths import UnsafeOverwriteError, describe_os_error

    options = segment_options(args, formats, selection)
    local_inputs = [p for p in inputs if isinstance(p, Path)]
    todo = []
    failed: list[tuple[str, str]] = []
    # Every lock is held until the run ends: a second run on the same result fails fast (or waits
    # with --wait-lock) instead of silently replacing this one's result. They are taken in one
    # order, the same in every run, so that two runs waiting for each other's videos (`a b` and
    # `b a` with --wait-lock) cannot each hold what the other waits for.
    lock_errors: dict[str, Exception] = {}
    for name in sorted(names, key=lambda n: os.path.join(os.path.realpath(out_root), n)):
        try:
            locks.append(OutputLock.acquire(out_root / name, wait=args.wait_lock, on_wait=say))
        except (EntitySAMError, OSError) as err:
            lock_errors[name] = err
    for path, name in zip(inputs, names):
        job = VideoJob(path, name)
        try:  # validate every input and output before loading the model
            if name in lock_errors:
                raise lock_errors[name]
            source = prepare_job(job, options, out_root, protect=local_inputs, say=say)
        # One line each, as the failures of segment_job: the messages quote the input's path,
        # and a newline in a file name would split them.
        except UnsafeOverwriteError as err:  # a dangerous or unusable command line: nothing runs
            print_err(one_line(user_message(err)), name)
            return 2
        except EntitySAMError as err:
            failed.append((name, str(err)))
            print_err(one_line(user_message(err)), name)
            continue
        except OSError as err:
            msg = describe_os_error(err, f"results of {name}")
            failed.append((name, msg))
            print_err(one_line(f"{name}: {msg}"))
            continue
        if source is not None:
            todo.append((source, job))
    if not todo:
        if failed and len(inputs) > 1:
            print_err(f"{len(failed)} of {len(inputs)} videos failed: {', '.join(n for n, _ in failed)}")
        return 1 if failed else 0

    model = load_or_report(args, say)
    if model is None:
        return 1
    for source, job in todo:
        before = read_manifest(out_root / job.name)
        try:
            outcome = segment_job(model, job, options, out_root, protect=local_inputs, say=say,
                                  say_error=print_err, source=source, describe_error=user_message)
        except StreamInterrupted:
            return 130
        except KeyboardInterrupt:
            # An interrupt during the commit takes effect once the result is in place: say so then.
            after = read_manifest(out_root / job.name)
            print_err(f"{job.name}: interrupted; " + (f"its result was written to {out_root / job.name}"
                                                      if after is not None and after != before else
                                                      "no result written for it"))
            return 130
        if outcome.status == "failed":
            failed.append((job.name, outcome.error))
    if failed:
        if len(inputs) > 1:
            print_err(f"{len(failed)} of {len(inputs)} videos failed: {', '.join(n for n, _ in failed)}")
        return 1
    return 0
