"""`entitysam eval vipseg`: the command line of the VIPSeg evaluation, alone or under torchrun.

    entitysam eval vipseg --data-root datasets/VIPSeg_720P --split val --model vit-s --output DIR

Under ``torchrun`` each rank takes its slice (``RANK`` of ``WORLD_SIZE``) on ``cuda:LOCAL_RANK``;
the ranks meet at the end, where each tells the others which of its videos failed, and rank 0
merges and scores only if none did.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable, Mapping, Sequence

from ..argtypes import ArgumentParser, hours, path_text, thread_count
from ..errors import EntitySAMError
from ..eval.runner.output import EvalOutput, IncompleteError
from ..eval.runner.plan import EvalInputError, abbreviate, load_plan
from ..eval.runner.run import EvalSummary, evaluate_vipseg, finish, parse_shard
from .batch import rank_device
from .options import print_err, say as say_line
from .wording import MODEL_CHOICES, user_message

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="entitysam eval", description="Benchmark evaluations.")
    sub = ap.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    p = sub.add_parser(
        "vipseg", help="VIPSeg: inference on a split, official output layout, VEQ / STQ",
        description="Segment every video of a VIPSeg split (list from the GT JSON and the split file, frames "
                    "images/<video>/*.jpg in sorted order, as the official evaluation), write pan_pred/ + pred.json "
                    "in the official layout, then VEQ / STQ into metrics.json. Re-running resumes: complete videos "
                    "are skipped, interrupted ones redone.")
    data = p.add_argument_group("data")
    data.add_argument("--data-root", type=path_text, required=True, metavar="DIR",
                      help="the VIPSeg_720P folder (images/, panomasksRGB/, panoptic_gt_VIPSeg_<split>.json)")
    data.add_argument("--split", default="val", help="split name (default val)")
    data.add_argument("--gt-json", type=path_text, default=None, metavar="PATH",
                      help="GT JSON (default DATA_ROOT/panoptic_gt_VIPSeg_<split>.json)")
    data.add_argument("--gt-dir", type=path_text, default=None, metavar="DIR", help="GT PNGs (default DATA_ROOT/panomasksRGB)")
    data.add_argument("--split-file", type=path_text, default=None, metavar="PATH",
                      help="video list (default DATA_ROOT/<split>.txt or DATA_ROOT/../<split>.txt if present)")
    mod = p.add_argument_group("model")
    mod.add_argument("--model", default=None, choices=MODEL_CHOICES,
                     help="published model (default vit-s); with --checkpoint: that file's configuration")
    mod.add_argument("--checkpoint", type=path_text, default=None, metavar="PATH", help="local checkpoint file")
    mod.add_argument("--trust-checkpoint-code", action="store_true",
                     help="UNSAFE: unpickle --checkpoint in full, which runs any code in the file (default: refused)")
    mod.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                     help="auto (default): cuda, else mps, else cpu; under torchrun cuda:LOCAL_RANK")
    mod.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                     help="auto (default): bfloat16 autocast on CUDA (as the official evaluation; float16 on GPUs "
                          "before Ampere), float32 elsewhere")
    mod.add_argument("--logits-dtype", default="float32", choices=("float32", "float16"),
                     help="temporary on-disk low-res logits (float32 exact, float16 half the disk)")
    mod.add_argument("--threads", type=thread_count, default=None, metavar="N", help="torch CPU threads")
    run = p.add_argument_group("run")
    run.add_argument("-o", "--output", type=path_text, required=True, metavar="DIR", help="output folder (see README)")
    run.add_argument("--shard", default=None, metavar="I/N",
                     help="run slice I of N (0 <= I < N); the run that completes the last video merges and scores "
                          "(with --overwrite none does: run --merge-only once every shard is done)")
    run.add_argument("--merge-only", action="store_true",
                     help="no inference: assemble pred.json from the finished videos and score")
    run.add_argument("--overwrite", action="store_true", help="redo the slice's videos even if complete")
    run.add_argument("--no-metrics", action="store_true", help="write pred.json but do not score")
    run.add_argument("--workers", type=thread_count, default=None, metavar="N",
                     help="processes for the metrics (default: number of CPUs)")
    run.add_argument("--dist-timeout", type=hours, default=48.0, metavar="HOURS",
                     help="under torchrun: how long ranks wait for each other at the end (default 48)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-video lines")
    return ap


def _dist_env() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) under torchrun with several processes, else (0, 1, 0), with
    the checks of `entitysam segment`: a value that is not a number, a RANK missing or past
    WORLD_SIZE is one error line (ShardError), not a traceback, or a rank that waits in
    init_process_group for ranks that do not exist."""
    from ..distributed.local import local_rank, shard_from_env  # noqa: PLC0415

    ranks = shard_from_env(None)
    if ranks is None:
        return 0, 1, 0
    return ranks[0], ranks[1], local_rank() or 0


def _print_metrics(result: Mapping[str, Any] | None) -> None:
    from ..eval.metrics import format_table  # noqa: PLC0415

    if result is not None:
        print(format_table({k: result[k] for k in ("veq", "stq") if k in result}))


# What ends an evaluation, or its merge and scoring, with one line instead of a traceback: the
# same rule in one process, at --merge-only and on rank 0 under torchrun. RuntimeError: torch's
# (loading, CUDA), a scoring worker killed (BrokenProcessPool), a part nested too deeply.
_ENDS_RUN = (EntitySAMError, OSError, RuntimeError)


def _report(err: BaseException, output: str) -> int:
    """Say an error of _ENDS_RUN in one line; its exit status: 2 for unusable inputs (also ground
    truth found unusable only when scoring), else 1."""
    if isinstance(err, EvalInputError):
        print_err(err)
        return 2
    if isinstance(err, OSError):  # e.g. the lock or log files of the output folder on a full disk
        from ..io.paths import describe_os_error  # noqa: PLC0415

        print_err(describe_os_error(err, f"the evaluation in {output}"))
    elif isinstance(err, EntitySAMError):
        print_err(err)
    else:
        print_err(f"{type(err).__name__}: {err}")
    return 1


def _merge_and_score(plan: Any, args: argparse.Namespace, say: Callable[[str], None], then: str) -> int:
    """Merge and score once every video is done (--merge-only, rank 0 under torchrun; one process
    does it in evaluate_vipseg); `then`: what to do about videos still missing. The exit status."""
    try:
        result = finish(plan, args.output, metrics=not args.no_metrics, workers=args.workers, say=say)
    except IncompleteError as err:
        print_err(f"{user_message(err)}; {then}")
        return 1
    except _ENDS_RUN as err:
        return _report(err, args.output)
    _print_metrics(result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`entitysam eval vipseg ...`. Exit codes: 0 done (or this shard done), 1 a video failed,
    the model could not be loaded, videos are missing at --merge-only or the metrics failed,
    2 invalid command line or unusable inputs, 130 interrupted."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else 2
    if args.benchmark is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        rank, world, local_rank = _dist_env()
    except EntitySAMError as err:
        print_err(err)
        return 2
    distributed = world > 1 and not args.merge_only
    prefix = f"[rank {rank}/{world}] " if world > 1 else ""
    say: Callable[[str], None] = (lambda m: None) if args.quiet else (lambda m: say_line(prefix + m))
    try:
        if args.shard is not None and world > 1:
            raise EvalInputError("--shard and torchrun exclude each other (under torchrun each rank takes its slice)")
        shard = parse_shard(args.shard) if args.shard is not None else (rank, world) if distributed else (0, 1)
        if args.threads is not None and args.threads < 1:
            raise EvalInputError("--threads must be >= 1")
        if args.workers is not None and args.workers < 1:
            raise EvalInputError("--workers must be >= 1")
        plan = load_plan(args.data_root, args.split, gt_json=args.gt_json, gt_dir=args.gt_dir,
                         split_file=args.split_file)
        if not args.merge_only:  # an unavailable --device is a command-line error, found before loading
            from ..inference.precision import resolve_device  # noqa: PLC0415

            resolve_device(args.device)
    except EntitySAMError as err:
        print_err(err)
        return 2

    metrics = not args.no_metrics
    if args.merge_only:
        if rank != 0:
            return 0
        try:
            EvalOutput(args.output).check_existing(plan)
        except _ENDS_RUN as err:
            return _report(err, args.output)
        return _merge_and_score(plan, args, say, "run the missing shards (or this command without --merge-only) first")

    import torch  # noqa: PLC0415

    if args.threads:
        torch.set_num_threads(args.threads)
    device = rank_device(args.device, local_rank) if distributed else args.device

    def load_model():
        from ..pipeline.loading import load_model as load  # noqa: PLC0415
        from .options import checkpoint_wording  # noqa: PLC0415

        t0 = time.perf_counter()
        with checkpoint_wording():
            net = load(args.checkpoint, config=args.model, device=device, allow_pickle=args.trust_checkpoint_code,
                       say=say)
        say(f"model {net.cfg.name} loaded on {next(net.parameters()).device} in {time.perf_counter() - t0:.1f}s")
        return net

    group = False
    if distributed:
        import datetime  # noqa: PLC0415

        import torch.distributed as dist  # noqa: PLC0415

        # The group only holds the ranks at the end (an exchange of outcomes): gloo, on the host,
        # whatever the device. NCCL named GPU LOCAL_RANK in the barrier where rank_device had put
        # the rank on LOCAL_RANK modulo the node's GPUs ("invalid device ordinal" once every video
        # was done), and it refuses two ranks on one GPU.
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=args.dist_timeout))
        group = True

    status = 0
    summary: EvalSummary | None = None
    try:
        summary = evaluate_vipseg(
            args.data_root, args.output, split=args.split, model=load_model, shard=shard, dtype=args.dtype,
            logits_dtype=args.logits_dtype, overwrite=args.overwrite, merge=not distributed, metrics=metrics,
            workers=args.workers, progress=not args.quiet and world == 1, say=say, plan=plan,
            say_error=lambda m: print_err(prefix + m), describe_error=user_message,
            log_tag=f"rank-{rank}-of-{world}" if distributed else None)
    except KeyboardInterrupt:
        print_err("interrupted; finished videos are kept, re-run the same command to resume")
        return 130
    except _ENDS_RUN as err:  # model not available, output not writable, a full disk, a scoring worker killed
        status = _report(err, args.output)
    if summary is not None and summary.failed:
        print_err(f"{len(summary.failed)} of {len(summary.videos)} videos failed: "
                  f"{abbreviate([v for v, _ in summary.failed])} (not evaluated: pred.json and metrics.json wait "
                  "for every video); re-run to retry them")
        status = 1

    if group:
        return _end_ranks(plan, args, rank, world, status, summary, say, prefix)

    if summary is not None and status == 0:
        if summary.merged:
            _print_metrics(summary.metrics)
        elif args.overwrite:  # (evaluate_vipseg: only a run that redid every video merges)
            say(f"{len(summary.done)} of {len(summary.videos)} videos of this slice redone; not merged: with "
                "--overwrite only a run that redid every video merges (the others may still hold earlier "
                "predictions): run the same command with --merge-only once every shard is done")
        elif summary.missing:
            say(f"{len(summary.videos)} videos of this slice complete; {len(summary.missing)} of "
                f"{len(plan.videos)} videos still missing (other shards): the shard that finishes last merges and "
                "scores, or run the same command with --merge-only once all are done")
    return status


def _gather_outcomes(world: int, status: int, summary: EvalSummary | None) -> list[tuple[int, list[str]]]:
    """Every rank's (exit status so far, failed videos), in rank order. A collective operation:
    it is also where the ranks wait for each other once their videos are done."""
    import torch.distributed as dist  # noqa: PLC0415

    mine = (status, [v for v, _ in summary.failed] if summary is not None else [])
    outcomes: list[Any] = [None] * world
    dist.all_gather_object(outcomes, mine)
    return [(int(code), [str(v) for v in failed]) for code, failed in outcomes]


def _failed_elsewhere(outcomes: Sequence[tuple[int, list[str]]], rank: int) -> str | None:
    """What failed on the other ranks, in words, or None if nothing did."""
    said = []
    for r, (code, failed) in enumerate(outcomes):
        if r == rank or code == 0:
            continue
        said.append(f"rank {r}: {len(failed)} video(s) failed ({abbreviate(failed)})" if failed
                    else f"rank {r} stopped before its videos were done (see its message)")
    return "; ".join(said) or None


def _end_ranks(plan: Any, args: argparse.Namespace, rank: int, world: int, status: int,
               summary: EvalSummary | None, say: Callable[[str], None], prefix: str) -> int:
    """Under torchrun, after this rank's videos: the ranks exchange their outcomes, and rank 0
    merges and scores only if every rank did all its videos. A plain barrier let rank 0 merge
    whenever each video had a part: with --overwrite, a video that had just failed was counted
    from its earlier part as if redone."""
    import torch.distributed as dist  # noqa: PLC0415

    try:
        try:
            outcomes = _gather_outcomes(world, status, summary)
        except RuntimeError as err:  # a rank that went away (gloo: its connection closed)
            reason = (str(err).strip().splitlines() or [""])[0]  # (torch's messages may span lines)
            print_err(f"{prefix}the ranks could not compare their outcomes ({type(err).__name__}: {reason}): "
                      "not merged; re-run the same command to finish")
            return status or 1
        if rank != 0:
            return status
        elsewhere = _failed_elsewhere(outcomes, rank)
        if elsewhere is not None:
            print_err(f"{prefix}not merged or scored: {elsewhere}; pred.json and metrics.json wait for every video: "
                      "re-run the same command to retry them")
            return status or 1
        if status != 0:  # this rank's own failure, said already
            return status
        return _merge_and_score(plan, args, say, "re-run the same command to finish them")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
