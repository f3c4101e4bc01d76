"""The `entitysam` command: a thin layer over :mod:`entitysam.api`.

    entitysam segment INPUT [INPUT ...] --output DIR [options]
    entitysam download vit-s [vit-l]
    entitysam demo [-o DIR]                                  (entitysam.demo: offline, bundled model)
    entitysam metrics PRED_DIR GT_DIR GT_JSON [options]     (entitysam.eval.metrics)
    entitysam eval vipseg --data-root DIR --output DIR [options]   (entitysam.eval.runner)
    entitysam train --config vit-s-stage1 [key=value ...]          (entitysam.train.cli)

Exit codes: 0 success (skipped videos included), 1 at least one video failed or the model could
not be loaded, 2 invalid command line, 130 interrupted (Ctrl-C; in online mode after finishing
the outputs of the frames done).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from .argtypes import non_negative_int, positive_float, positive_int, seed
from .errors import EntitySAMError, OutputError, SourceError

# Sub-commands implemented in other modules: name -> (help, "module:function" taking argv).
DELEGATED: dict[str, tuple[str, str]] = {
    "metrics": ("VEQ / STQ of predictions in the official layout (see `entitysam metrics -h`)",
                "entitysam.eval.metrics:main"),
    "train": ("train EntitySAM: the official two-stage recipe, single process or torchrun DDP "
              "(see `entitysam train -h` and docs/training.md)", "entitysam.train.cli:main"),
    "eval": ("benchmark evaluation: `entitysam eval vipseg` runs a VIPSeg split and scores it "
             "(see `entitysam eval vipseg -h`)", "entitysam.eval.runner.command:main"),
}

SAVE_CHOICES = ("panoptic", "entities", "overlay")


def _print_err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- parser


def _add_segment_parser(sub) -> None:
    p = sub.add_parser(
        "segment", help="segment and track every entity of videos, frame folders or images",
        description="Segment and track every entity of each INPUT (video file: mp4 mov mkv webm avi; folder of "
                    "frames: jpg jpeg png in natural order; single image). Results go to OUTPUT/<video-name>/.")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="video file, folder of frames or image; with --online also a stream URL (rtsp://, "
                        "http://, ...) or a video device (/dev/video0)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="results go to DIR/<video-name>/")
    p.add_argument("--batch", action="append", default=[], metavar="DIR",
                   help="also process every video file and frame folder inside DIR (repeatable)")
    p.add_argument("--max-pixels", type=_pixel_count, default=DEFAULT_MAX_PIXELS_TEXT, metavar="N",
                   help="refuse frames larger than N pixels (width x height), checked from the file's header before "
                        "decoding: an integer, or with a k/M suffix (e.g. 100M), or none for no limit "
                        f"(default {DEFAULT_MAX_PIXELS_TEXT} = 50 megapixels: 8K video and 50 MP photos)")
    sel = p.add_argument_group("frame selection (indices refer to the whole input)")
    sel.add_argument("--start", default=None, help="first frame: index (e.g. 10) or seconds (e.g. 2.5s)")
    sel.add_argument("--end", default=None, help="stop before this frame: index or seconds (exclusive)")
    sel.add_argument("--stride", type=positive_int, default=1, metavar="N", help="keep every N-th frame (default 1)")
    sel.add_argument("--max-frames", type=positive_int, default=None, metavar="N", help="process at most N frames")
    sel.add_argument("--fps", type=positive_float, default=None,
                     help="frame rate of frame folders and images (default 25); overrides a video's own rate")
    mod = p.add_argument_group("model")
    mod.add_argument("--model", default=None, choices=("vit-s", "vit-l", "demo"),
                     help="published model from the Hugging Face hub (default vit-s), or demo (bundled, offline, "
                          "synthetic scenes only); with --checkpoint: the configuration of that file")
    mod.add_argument("--checkpoint", default=None, metavar="PATH",
                     help="local checkpoint file (configuration inferred from its keys unless --model)")
    mod.add_argument("--trust-checkpoint-code", action="store_true",
                     help="UNSAFE: load a --checkpoint that holds pickled Python objects with the full unpickler, "
                          "which runs any code in the file (default: refused; checkpoints load weights only)")
    mod.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                     help="auto (default): cuda, else mps, else cpu")
    mod.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                     help="auto (default): bfloat16 autocast on CUDA (as the official evaluation), float32 elsewhere; "
                          "bfloat16 on CPU: the memory attention alone in bfloat16 (about 2.5x the official speed on ViT-S, "
                          "over 99%% of mask pixels as float32)")
    mod.add_argument("--exact", action="store_true",
                     help="float32 in the official order of operations: the official outputs bit for bit on CPU "
                          "(same thread count), at about the official speed (default: 1.6x the official speed on ViT-S, equal up to rounding)")
    mod.add_argument("--threads", type=positive_int, default=None, metavar="N",
                     help="CPU threads for torch (default: torch's choice, usually the number of cores)")
    out = p.add_argument_group("outputs")
    out.add_argument("--save", default="all", metavar="LIST",
                     help=f"comma-separated formats among {', '.join(SAVE_CHOICES)}, or all (default), or none")
    out.add_argument("--labels", action="store_true", help="draw entity ids on overlay.mp4")
    out.add_argument("--save-logits", nargs="?", const="", default=None, metavar="FILE.npz",
                     help="also save the raw low-res logits and scores: to FILE.npz ({video} is replaced by "
                          "the video name), or without FILE to <video-name>/logits.npz")
    out.add_argument("--logits-dtype", default="float32", choices=("float32", "float16"),
                     help="temporary on-disk logits: float32 (default) is exact, float16 halves the disk space")
    out.add_argument("--overwrite", action="store_true",
                     help="replace existing results (only folders entitysam wrote, never an input; "
                          "and an existing --save-logits FILE)")
    out.add_argument("--skip-existing", action="store_true", help="skip videos whose results are complete")
    out.add_argument("--wait-lock", action="store_true",
                     help="when another entitysam run is writing the same result folder, wait for it to finish "
                          "(default: fail at once, naming its pid)")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")
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
    p.set_defaults(func=cmd_segment)


def _add_download_parser(sub) -> None:
    p = sub.add_parser("download", help="pre-fetch published checkpoints from the Hugging Face hub",
                       description="Download published checkpoints (Hugging Face repository mqye/entitysam) into "
                                   "the Hugging Face cache and print their paths.")
    p.add_argument("models", nargs="+", choices=("vit-s", "vit-l"), metavar="MODEL", help="vit-s and/or vit-l")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder (default: HF_HUB_CACHE)")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.set_defaults(func=cmd_download)


DEFAULT_MAX_PIXELS_TEXT = "50M"  # = entitysam.video.sources.DEFAULT_MAX_PIXELS (not imported here: keeps -h fast)


def _pixel_count(text: str) -> int | None:
    """--max-pixels: "50000000", "50M", "800k", or "none" (no limit)."""
    s = text.strip().lower()
    if s in ("none", "off", "unlimited"):
        return None
    scale = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    try:
        value = float(s[:-1] if scale != 1 else s) * scale
    except ValueError:
        value = -1.0
    if not value >= 1 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels (e.g. 50000000 or 50M) or none, "
                                         f"got {text!r}")
    return int(value)


def _check_output_root(out_root: Path) -> None:
    """-o DIR must be a folder or creatable as one: a file there (or above it) is a usage error."""
    if out_root.exists() and not out_root.is_dir():
        raise EntitySAMError(f"--output {out_root} is an existing file, not a folder: choose a folder for the results")
    for parent in out_root.parents:
        if parent.exists():
            if not parent.is_dir():
                raise EntitySAMError(f"--output {out_root}: {parent} is a file, not a folder")
            break


def _size(text: str) -> tuple[int, int]:
    from .demo import check_demo_size

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 320x240), got {text!r}") from None
    try:
        check_demo_size(w, h)
    except EntitySAMError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return w, h


def _add_demo_parser(sub) -> None:
    from .data.synthetic.demo import DEMO_DEFAULTS

    d = DEMO_DEFAULTS
    p = sub.add_parser(
        "demo", help="offline demo: generate a synthetic video, segment it with the bundled demo model, score it",
        description="Generate a short synthetic video (textured stuff and shapes that move, occlude, enter and "
                    "leave), segment it with the bundled demo model (no network), write what `entitysam segment` "
                    "writes (panoptic PNGs + JSON, entities.json, overlay.mp4) and a VEQ/STQ report against the "
                    "generated ground truth. The demo model knows only such synthetic scenes: real videos need "
                    "--model vit-s or vit-l.")
    p.add_argument("-o", "--output", default="entitysam-demo", metavar="DIR",
                   help="output folder (default entitysam-demo): input/, demo/, report.json, report.txt")
    p.add_argument("--frames", type=positive_int, default=d["num_frames"], metavar="N",
                   help=f"frames of the generated video (default {d['num_frames']})")
    p.add_argument("--size", type=_size, default=(d["width"], d["height"]), metavar="WxH",
                   help=f"frame size (default {d['width']}x{d['height']})")
    p.add_argument("--seed", type=seed, default=d["seed"], help=f"scene seed (default {d['seed']})")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="segment with this checkpoint instead of the bundled demo weights (e.g. a training run's)")
    p.add_argument("--trust-checkpoint-code", action="store_true",
                   help="UNSAFE: unpickle --checkpoint in full, which runs any code in the file (default: refused)")
    p.add_argument("--save", default="all", metavar="LIST",
                   help="formats among panoptic, entities, overlay, or all (default); panoptic is required")
    p.add_argument("--labels", action="store_true", help="draw entity ids on overlay.mp4")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"), help="default cpu")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N", help="CPU threads for torch")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo run in DIR")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars; only the report")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="entitysam",
                                     description="EntitySAM: segment and track every entity in a video.")
    parser.add_argument("--version", action="version", version=f"entitysam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_segment_parser(sub)
    _add_download_parser(sub)
    _add_demo_parser(sub)
    for name, (help_text, _) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


# ----------------------------------------------------------------------------- commands


def _load_model(args) -> object:
    from .api import from_pretrained

    with _model_load_errors(args.checkpoint):
        if args.checkpoint:
            return _from_checkpoint(args.checkpoint, args.model, args.device, args.trust_checkpoint_code)
        return from_pretrained(args.model or "vit-s", device=args.device)


@contextlib.contextmanager
def _model_load_errors(checkpoint):
    """Any failure while loading a model (e.g. a --checkpoint that is no checkpoint: pickle
    errors) becomes one EntitySAMError line instead of a traceback; Ctrl-C passes through."""
    try:
        yield
    except EntitySAMError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever torch.load raises for a foreign file
        what = f"the checkpoint {checkpoint}" if checkpoint else "the model"
        cause = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise EntitySAMError(f"cannot load {what}: {cause}") from None


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True


def _our_manifest(folder: Path) -> bool:
    """Whether `folder` holds a manifest written by this tool (any status): a segment or online
    result's manifest.json, or the run.json of an `eval vipseg` output."""
    import json

    for name in ("manifest.json", "run.json"):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and str(data.get("format", "")).startswith("entitysam-"):
            return True
    return False


def _written_by_us(entry: Path) -> bool:
    """A batch folder entry that is a result of this tool, not a video: a result folder (its
    manifest), or a folder of result folders (an earlier --output) without frames of its own."""
    if not entry.is_dir():
        return False
    if _our_manifest(entry):
        return True
    from .video.sources import IMAGE_EXTENSIONS

    try:
        children = [c for c in entry.iterdir() if not c.name.startswith(".")]
    except OSError:
        return False
    if any(c.suffix.lower() in IMAGE_EXTENSIONS for c in children if c.is_file()):
        return False
    return any(c.is_dir() and _our_manifest(c) for c in children)


def _batch_inputs(folder: str, out_root: Path) -> list[Path]:
    """The videos of a --batch folder, without the output folder (``segment --batch X -o X/out``)
    and without results of earlier runs: a re-run must not segment its own outputs."""
    from .video.sources import list_batch_inputs

    found = list_batch_inputs(folder)
    keep = [p for p in found if not (_is_inside(out_root, p) or _written_by_us(p))]
    if found and not keep:
        raise SourceError(f"{folder}: no videos left once the output folder and earlier results are excluded")
    return keep


def _from_checkpoint(path, config, device, trust_code: bool):
    """from_checkpoint; the warning of --trust-checkpoint-code becomes one plain stderr line."""
    import warnings

    from .api import from_checkpoint
    from .checkpoints import UnsafeLoadWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnsafeLoadWarning)
        try:
            return from_checkpoint(path, config=config, device=device, allow_pickle=trust_code)
        finally:
            for w in caught:
                if issubclass(w.category, UnsafeLoadWarning):
                    print(f"warning: {w.message}", file=sys.stderr)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _collect_inputs(args) -> list:
    from .video.sources import is_live_input

    # Stream URLs stay strings: Path() would fold the "//" of "rtsp://".
    inputs: list = [p if is_live_input(p) else Path(p) for p in args.inputs]
    for folder in args.batch:
        inputs.extend(_batch_inputs(folder, Path(args.output)))
    if not inputs:
        raise SourceError("no INPUT given (a video, a folder of frames, an image, or --batch DIR)")
    return inputs


def _video_name(path) -> str:
    """The result folder name of an input, made into one safe path component (a video named
    `..mp4` must not write into the output root, a 250-byte name must fit)."""
    from .video.sources import live_source_name
    from .video.writers import safe_name

    if isinstance(path, str):
        return safe_name(live_source_name(path))
    return safe_name(path.resolve().name if path.is_dir() else path.stem)


def _check_online_args(args, inputs) -> None:
    """Online-only options without --online, offline-only ones with it, live inputs offline."""
    if not args.online:
        for flag, value in (("--delay", args.delay), ("--live/--no-live", args.live), ("--queue", args.queue)):
            if value is not None:
                raise EntitySAMError(f"{flag} needs --online")
        live = [p for p in inputs if isinstance(p, str)]
        if live:
            raise EntitySAMError(f"{live[0]} is a live source: it can only be segmented with --online")
        return
    if args.save_logits is not None:
        raise EntitySAMError("--save-logits is not available with --online (no whole-video logits are kept)")
    if args.logits_dtype != "float32":
        raise EntitySAMError("--logits-dtype only applies to the offline merge, not to --online")
    if args.delay is not None and args.delay < 0:
        raise EntitySAMError(f"--delay must be >= 0 (frames of look-ahead), got {args.delay}")
    if args.queue is not None and args.queue < 1:
        raise EntitySAMError(f"--queue must be >= 1, got {args.queue}")


def _check_logits_destination(save_logits: str | None, names: list[str]) -> None:
    """--save-logits FILE is written after the whole video is tracked: refuse a FILE that can
    never be written now (a folder, or under a file, or in a folder that cannot be created)."""
    import os

    if not save_logits:
        return
    for name in names:
        path = Path(save_logits.replace("{video}", name))
        if path.is_dir():
            raise EntitySAMError(f"--save-logits {path}: is a folder, expected a file name")
        ancestor = path.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise EntitySAMError(f"--save-logits {path}: {ancestor} is not a folder")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise EntitySAMError(f"--save-logits {path}: {ancestor} is not writable")


def _check_model_args(args) -> None:
    """What can be refused about the model options before loading it: an unavailable device,
    --exact with a dtype other than float32 (also --dtype auto, which is bfloat16 on CUDA)."""
    from .api import _check_exact, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    _check_exact(getattr(args, "exact", False), resolve_dtype(getattr(args, "dtype", "auto"), device))


def _check_selects_frames(source) -> None:
    """Frame folders and images know their frame count: an empty selection is refused before
    the model is loaded (videos only know an estimate, they fail when read)."""
    if source.kind in ("folder", "image", "array") and source.count_hint() == 0:
        raise SourceError(source._empty_message())


def cmd_segment(args) -> int:
    from .api import _check_formats
    from .video.sources import FrameSelection

    say: Callable[[str], None] = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    try:
        formats = _check_formats(args.save)
        inputs = _collect_inputs(args)
        names = [_video_name(p) for p in inputs]
        seen: dict[str, Path] = {}
        for path, name in zip(inputs, names):
            if name in seen:
                raise SourceError(f"{seen[name]} and {path} would both write to {Path(args.output) / name}: "
                                  "rename one or run them with different --output")
            seen[name] = path
        if args.save_logits and len(inputs) > 1 and "{video}" not in args.save_logits:
            raise EntitySAMError("--save-logits FILE with several inputs needs {video} in FILE "
                                 "(or no FILE: each video folder gets logits.npz)")
        _check_logits_destination(args.save_logits, names)
        if args.overwrite and args.skip_existing:
            raise EntitySAMError("--overwrite and --skip-existing exclude each other")
        _check_online_args(args, inputs)
        _check_output_root(Path(args.output))
        selection = FrameSelection(args.start, args.end, args.stride, args.max_frames)
        _check_model_args(args)
    except EntitySAMError as err:
        _print_err(str(err))
        return 2

    out_root = Path(args.output)
    locks: list = []
    try:
        return _segment_all(args, inputs, names, formats, selection, out_root, locks, say)
    finally:
        for lock in locks:  # (the OS releases them too if this process is killed)
            lock.release()


def _segment_all(args, inputs, names, formats, selection, out_root: Path, locks: list, say) -> int:
    from .errors import OutputError
    from .video.sources import open_source
    from .video.writers import (OutputLock, StagedOutput, UnsafeOverwriteError, check_logits_file,
                                describe_os_error, read_manifest, recover_output)

    local_inputs = [p for p in inputs if isinstance(p, Path)]
    todo = []
    failed: list[tuple[str, str]] = []
    for path, name in zip(inputs, names):
        final = out_root / name
        try:  # validate every input and output before loading the model
            # The lock is held until the run ends: a second run on the same result fails fast
            # (or waits with --wait-lock) instead of silently replacing this one's result.
            lock = OutputLock.acquire(final, wait=args.wait_lock, on_wait=say)
            locks.append(lock)
            if recovered := recover_output(final):
                say(f"{name}: {recovered} (a killed run had left it half replaced)")
            if args.skip_existing and read_manifest(final) is not None:
                say(f"{name}: skipped, complete results in {final}")
                continue
            StagedOutput.check_free(final, args.overwrite, inputs=local_inputs)
            if args.save_logits:
                try:
                    check_logits_file(args.save_logits.replace("{video}", name), overwrite=args.overwrite,
                                      result_dir=final, inputs=local_inputs)
                except OutputError as err:  # a FILE argument that cannot be used: a command-line error
                    raise UnsafeOverwriteError(str(err)) from None
            source = open_source(path, selection, fps=args.fps, name=name, max_pixels=args.max_pixels)
            _check_selects_frames(source)
        except UnsafeOverwriteError as err:  # a dangerous or unusable command line: nothing runs
            _print_err(f"{name}: {err}")
            return 2
        except EntitySAMError as err:
            failed.append((name, str(err)))
            _print_err(f"{name}: {err}")
            continue
        except OSError as err:
            msg = describe_os_error(err, f"results of {name}")
            failed.append((name, msg))
            _print_err(f"{name}: {msg}")
            continue
        todo.append((source, name))
    if not todo:
        if failed and len(inputs) > 1:
            _print_err(f"{len(failed)} of {len(inputs)} videos failed: {', '.join(n for n, _ in failed)}")
        return 1 if failed else 0

    if args.threads:
        import torch

        torch.set_num_threads(max(1, args.threads))
    try:
        t0 = time.perf_counter()
        model = _load_model(args)
        say(f"model {model.cfg.name} loaded on {next(model.parameters()).device} in {time.perf_counter() - t0:.1f}s")
    except (EntitySAMError, RuntimeError, OSError) as err:
        _print_err(str(err))
        return 1

    for source, name in todo:
        try:
            if args.online:
                if _stream_one(model, source, name, out_root, formats, args, say, local_inputs) == "interrupted":
                    return 130
            else:
                _segment_one(model, source, name, out_root, formats, args, say, StagedOutput, local_inputs)
        except KeyboardInterrupt:
            _print_err(f"{name}: interrupted; no result written for it")
            return 130
        except EntitySAMError as err:
            failed.append((name, str(err)))
            _print_err(f"{name}: {err}")
        except OSError as err:
            msg = describe_os_error(err, f"results of {name}")
            failed.append((name, msg))
            _print_err(f"{name}: {msg}")
        except (RuntimeError, ValueError) as err:  # unexpected failures inside the model or writers
            failed.append((name, f"{type(err).__name__}: {err}"))
            _print_err(f"{name}: failed: {type(err).__name__}: {err}")
    if failed:
        if len(inputs) > 1:
            _print_err(f"{len(failed)} of {len(inputs)} videos failed: {', '.join(n for n, _ in failed)}")
        return 1
    return 0


def _segment_one(model, source, name: str, out_root: Path, formats, args, say, StagedOutput,
                 inputs=()) -> None:
    from .api import segment
    from .video.writers import check_logits_file

    t0 = time.perf_counter()
    with StagedOutput(out_root / name, overwrite=args.overwrite, inputs=inputs) as staged:
        if args.save_logits is None:
            logits_path = None
        elif args.save_logits == "":
            logits_path = staged.path / "logits.npz"
        else:  # checked again: the file may have appeared since the start
            logits_path = check_logits_file(args.save_logits.replace("{video}", name), overwrite=args.overwrite,
                                            result_dir=out_root / name, inputs=inputs)
        result = segment(model, source, dtype=args.dtype, logits_dtype=args.logits_dtype, work_dir=staged.path,
                         save_logits=logits_path, progress=not args.quiet, exact=args.exact)
        with result:
            files = result.write_into(staged.path, formats, labels=args.labels, progress=not args.quiet)
            manifest = {**result.manifest(), "files": files + (["logits.npz"] if args.save_logits == "" else [])}
        final = staged.commit(manifest)
    say(f"{name}: {len(result)} frames, {len(result.entities)} entities -> {final} "
        f"({time.perf_counter() - t0:.1f}s)")


def _stream_one(model, source, name: str, out_root: Path, formats, args, say, inputs=()) -> str:
    """Online mode for one input; returns the stream's final status. Errors propagate after the
    outputs of the frames done are finished (their manifest says "failed")."""
    from .api import stream

    t0 = time.perf_counter()
    final = out_root / name
    s = stream(model, source, delay=args.delay or 0, dtype=args.dtype, live=args.live, queue_size=args.queue or 4,
               output=final, formats=formats, labels=args.labels, overwrite=args.overwrite, keep_images=False,
               progress=not args.quiet, exact=args.exact, protect=inputs)
    try:
        for _ in s:
            pass
    except KeyboardInterrupt:
        s.mark_interrupted()  # close() below emits the frames already processed and finishes the files
    except BaseException:
        s.close()
        if s.emitted:
            _print_err(f"{name}: the results of the {s.emitted} frames done are in {final} "
                       "(manifest status \"failed\")")
        raise
    s.close()
    if s.status == "failed":  # the frames were done but their files could not be finished (e.g. disk full)
        raise OutputError(s.error or f"the results in {final} could not be finished")
    dropped = f", {s.dropped} dropped" if s.live else ""
    where = f"-> {final}" if s.emitted else "(nothing written)"
    per_frame = s.seconds["model"] / s.processed if s.processed else 0.0
    summary = (f"{s.emitted} frames{dropped}, {len(s.entities)} entities, delay {s.delay} {where} "
               f"({time.perf_counter() - t0:.1f}s, model {per_frame:.2f}s/frame)")
    if s.status == "interrupted":
        _print_err(f"{name}: interrupted after {summary}")
    else:
        say(f"{name}: {summary}")
    return s.status


def cmd_download(args) -> int:
    from .hub import resolve_checkpoint

    status = 0
    for name in args.models:
        try:
            path = resolve_checkpoint(name, cache_dir=args.cache_dir, force_download=args.force)
        except EntitySAMError as err:
            _print_err(str(err))
            status = 1
            continue
        print(f"{name}: {path}")
    return status


def cmd_demo(args) -> int:
    from . import jsonio
    from .demo import _jsonable, check_demo_request, run_demo, summary

    say: Callable[[str], None] = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    width, height = args.size
    try:  # every check before loading a checkpoint or writing anything
        formats = check_demo_request(args.output, num_frames=args.frames, width=width, height=height,
                                     seed=args.seed, formats=args.save, overwrite=args.overwrite)
        _check_model_args(args)
    except OutputError as err:  # an output folder in the way: as `segment`, a failure (1), not a usage error
        _print_err(str(err))
        return 1
    except EntitySAMError as err:
        _print_err(str(err))
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        with _model_load_errors(args.checkpoint):
            model = (_from_checkpoint(args.checkpoint, "demo", args.device, args.trust_checkpoint_code)
                     if args.checkpoint else None)
        report = run_demo(args.output, model=model, num_frames=args.frames, width=width, height=height,
                          seed=args.seed, formats=formats, labels=args.labels, overwrite=args.overwrite,
                          device=args.device, progress=not args.quiet, say=say)
    except KeyboardInterrupt:
        _print_err("interrupted")
        return 130
    except (EntitySAMError, RuntimeError, OSError, ValueError) as err:
        _print_err(str(err))
        return 1
    if args.json:
        print(jsonio.dumps(_jsonable(report.to_dict()), indent=1))
    else:
        print(summary(report))
        if not args.quiet:
            print("\n" + report.table)
    say(f"done in {time.perf_counter() - t0:.1f}s; report in {report.output / 'report.txt'}")
    return 0


# ----------------------------------------------------------------------------- main


def _run_delegated(name: str, argv: Sequence[str]) -> int:
    import importlib

    module, func = DELEGATED[name][1].split(":")
    try:
        result = getattr(importlib.import_module(module), func)(list(argv))
    except SystemExit as exc:  # argparse --help / usage errors of the delegated parser
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return int(result or 0)


def _interrupted() -> int:
    _print_err("interrupted")
    return 130


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # A Ctrl-C anywhere the commands do not handle it themselves (importing torch, loading the
    # model, parsing a checkpoint) ends with one line and the documented code, not a traceback.
    try:
        if argv and argv[0] in DELEGATED:
            return _run_delegated(argv[0], argv[1:])
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse exits with 2 on errors, 0 on --help
            return int(exc.code or 0)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return args.func(args)
    except KeyboardInterrupt:
        return _interrupted()


if __name__ == "__main__":
    raise SystemExit(main())
