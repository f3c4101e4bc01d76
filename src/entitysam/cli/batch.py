"""Batches of `entitysam segment`: the per-video options of its command line, loading the model,
and the sharded path (--shard I/N, --shard auto under a Slurm array, each torchrun rank), which
runs `entitysam.distributed.local.segment_many_local` and reports its summary."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import EntitySAMError
from .options import load_model, print_err, say as say_always, set_threads
from .wording import user_message

__all__ = ["segment_options", "load_or_report", "shard_of", "warn_ignored_array", "check_summary_file",
           "segment_shard", "rank_device"]


def shard_of(args) -> tuple[int, int] | None:
    """This process's slice (--shard, torchrun, Slurm array), or None: no sharding."""
    from ..distributed.local import local_rank, shard_from_env

    shard = shard_from_env(args.shard)
    local_rank()  # a bad LOCAL_RANK is a command-line error too, found before any work
    if shard is None and args.summary is not None:
        raise EntitySAMError("--summary needs --shard, torchrun or --ray (the summary of a batch run)")
    return shard


def warn_ignored_array(args) -> None:
    """One `warning:` line (also with -q) from rank 0 of torchrun in a Slurm array task without
    --shard, whose tasks would all do the same videos (`entitysam.distributed.local.ignored_array`)."""
    from ..distributed.local import ignored_array

    if (task := ignored_array(args.shard)) is not None:
        say_always(f"warning: torchrun in Slurm array task {task} without --shard: each rank takes RANK/WORLD_SIZE "
                   "of the whole video list, ignoring the array, so every array task processes the same videos; "
                   "pass --shard auto to split them over the array's tasks too")


def check_summary_file(summary: str | os.PathLike | None, out_root: Path, names, inputs,
                       what: str = "--summary", ours: bool = False) -> None:
    """The summary FILE is rewritten at the end of the run (this task's summary merged into the
    batch summary already there, or into none): refuse, before any work, a FILE that is
    a folder or under a file, an input, inside a result folder (replaced as a whole, and the
    summary would be a file entitysam did not write in it), or an existing file that is not a
    batch summary. what: how messages name it (``--summary``, or the default file's words).
    ours: the default file, in entitysam's hidden folder: replaced whatever its content."""
    from ..distributed.local import SUMMARY_FORMAT
    from ..io.paths import check_not_input, path_relation

    if not summary:
        return
    path = Path(summary)
    real, real_out = Path(os.path.realpath(path)), Path(os.path.realpath(out_root))
    inside = real.relative_to(real_out).parts[:1] if path_relation(real, real_out) == "lies inside" else ()
    if inside and inside[0] in set(names):  # one look-up, not a realpath per video (10,000 on NFS)
        raise EntitySAMError(f"{what} {path} lies in the result folder {out_root / inside[0]}, which is "
                             "written as a whole: choose a file outside it")
    check_not_input(path, [p for p in inputs if isinstance(p, Path)], what)
    ancestor = path.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise EntitySAMError(f"{what} {path}: {ancestor} is not a folder")
    if not os.path.lexists(path):
        return
    if path.is_dir():
        raise EntitySAMError(f"{what} {path}: is a folder, expected a file name")
    if path.is_symlink() or not path.is_file():
        raise EntitySAMError(f"{what} {path} exists and is not a plain file: refusing to replace it")
    if ours:
        return
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if text.strip() else {"format": SUMMARY_FORMAT}  # an empty file loses nothing
    except (OSError, ValueError, RecursionError) as err:  # (nesting deeper than json can parse)
        if isinstance(err, OSError):
            raise EntitySAMError(f"{what} {path}: cannot read it ({err.strerror})") from None
        data = None
    if not isinstance(data, dict) or data.get("format") != SUMMARY_FORMAT:
        raise EntitySAMError(f"{what} {path} exists and is not an entitysam batch summary: refusing to "
                             "replace it (choose another file)")


def segment_shard(args, inputs, names, formats, selection, out_root: Path, shard, say) -> int:
    """--shard / torchrun / Slurm array: this process's slice, locking each video only while it
    processes it; the summary printed and written as JSON."""
    from dataclasses import replace

    from ..distributed.jobs import StreamInterrupted, VideoJob, frame_count
    from ..distributed.local import default_summary_path, local_rank, segment_many_local

    options = replace(segment_options(args, formats, selection), skip_existing=not args.overwrite,
                      redo_unfinished=True)  # resumable: an interrupted video is redone
    jobs = [VideoJob(p, n, frame_count(p, options)) for p, n in zip(inputs, names)]
    rank = local_rank()
    if rank is not None:
        args.device = rank_device(args.device, rank)
    prefix = f"[shard {shard[0]}/{shard[1]}] "

    def load():
        model = load_or_report(args, lambda m: say(prefix + m))
        if model is None:
            raise _LoadFailed
        return model

    try:
        summary = segment_many_local(
            load, jobs, options, out_root, shard, protect=[p for p in inputs if isinstance(p, Path)],
            say=lambda m: say(prefix + m), say_error=lambda m: print_err(prefix + m),
            summary_path=Path(args.summary) if args.summary else default_summary_path(out_root, shard),
            warn=lambda m: say_always(f"warning: {prefix}{m}"), describe_error=user_message)
    except _LoadFailed:
        return rank_exit(1, rank, lambda m: say(prefix + m))
    except StreamInterrupted:
        return 130
    except (KeyboardInterrupt, OSError) as err:
        return batch_stopped(err, prefix)
    return rank_exit(report_summary(summary, say, prefix), rank, lambda m: say(prefix + m))


def rank_exit(code: int, rank: int | None, say) -> int:
    """`code`, once the other ranks of this node have ended when this is a torchrun rank about to
    exit with an error: torchrun stops every rank as soon as one exits non-zero
    (`entitysam.distributed.rank_exit`). A stop meanwhile (torchrun's SIGTERM) ends the wait."""
    from ..distributed.rank_exit import under_torchrun, wait_for_other_ranks

    if code and rank is not None and under_torchrun():
        try:
            wait_for_other_ranks(say)
        except KeyboardInterrupt:
            pass
    return code


def batch_stopped(err: BaseException, prefix: str = "") -> int:
    """A batch run (shards or Ray) ended by Ctrl-C or by its summary file: say so; the exit code."""
    if isinstance(err, KeyboardInterrupt):
        print_err(f"{prefix}interrupted; finished videos are kept, re-run the same command to resume")
        return 130
    from ..io.paths import describe_os_error

    print_err(prefix + describe_os_error(err, "the summary file"))  # (an OSError: a full disk, say)
    return 1


def report_summary(summary, say, prefix: str = "") -> int:
    """The end of a batch run (shards or Ray): its summary line, the failed videos; the exit code."""
    say(summary.line())
    if summary.failed:
        print_err(f"{prefix}{len(summary.failed)} of {len(summary.videos)} videos failed: "
                  f"{', '.join(o.name for o in summary.failed)}; re-run to retry them")
        return 1
    return 0


class _LoadFailed(EntitySAMError):
    """The model could not be loaded (its error is already printed): ends the shard with exit 1."""


def rank_device(device: str, rank: int) -> str:
    """Under torchrun: the device of the rank with LOCAL_RANK `rank` for `--device device`. On
    CUDA (auto or cuda) its GPU, cuda:LOCAL_RANK modulo the GPUs of the node (more ranks than
    GPUs share them round-robin; a LOCAL_RANK past the GPUs is no "invalid device ordinal"
    traceback), made the current device; else `device` as given."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        gpu = rank % torch.cuda.device_count()
        torch.cuda.set_device(gpu)
        return f"cuda:{gpu}"
    return device


def segment_options(args, formats, selection):
    """The per-video options of the command line (`entitysam.distributed.SegmentOptions`)."""
    from ..distributed.jobs import SegmentOptions

    return SegmentOptions(
        formats=tuple(formats), dtype=args.dtype, logits_dtype=args.logits_dtype, exact=args.exact,
        labels=args.labels, overwrite=args.overwrite, skip_existing=args.skip_existing, online=args.online,
        delay=args.delay, live=args.live, queue=args.queue, save_logits=args.save_logits, selection=selection,
        fps=args.fps, max_pixels=args.max_pixels, quiet=args.quiet, wait_lock=args.wait_lock)


def load_or_report(args, say):
    """The model of the command line, or None (the error printed)."""
    set_threads(args.threads)
    try:
        t0 = time.perf_counter()
        model = load_model(args, args.model, say)
        say(f"model {model.cfg.name} loaded on {next(model.parameters()).device} in {time.perf_counter() - t0:.1f}s")
        if getattr(args, "compile", False):
            from ..inference.compiled import compile_model

            compile_model(model)
            say("model compiled with torch.compile: the first frames of the first video pay the compilation")
    except EntitySAMError as err:  # load_model reports every failure as one
        print_err(err)
        return None
    return model
