"""`entitysam segment ... --ray [ADDRESS]`: the videos on a Ray cluster, one whole video per
task of a pool of actors that each load the model once (`entitysam.distributed.ray_runner`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..argtypes import gpu_share, thread_count
from ..errors import EntitySAMError
from .batch import batch_stopped, report_summary
from .options import print_err
from .wording import user_message

__all__ = ["add_ray_arguments", "check_ray_args", "segment_on_ray", "RAY_SUMMARY_NAME",
           "default_ray_summary"]

RAY_SUMMARY_NAME = "ray.json"  # in OUTPUT/.entitysam-batch/, beside the local shards' summaries


def add_ray_arguments(group) -> None:
    group.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                       help="run the videos on Ray (pip install 'entitysam[ray]'): a pool of actors that each "
                            "load the model once and segment whole videos, a lost worker's video retried; "
                            "without ADDRESS a local Ray instance, 'auto' the cluster of this node, or "
                            "ray://HEAD:10001. Inputs and --output must be at the same path on every node. "
                            "Complete results are skipped (re-run to finish), unless --overwrite")
    group.add_argument("--actors", type=thread_count, default=None, metavar="N",
                       help="with --ray: actors (default: as many as the cluster's GPUs, else CPUs, hold)")
    group.add_argument("--gpus-per-actor", type=gpu_share, default=None, metavar="X",
                       help="with --ray: GPUs of each actor, fractions share one (default 1 when the cluster "
                            "has GPUs, else 0)")


def check_ray_args(args) -> None:
    """Ray-only options without --ray, options --ray cannot honour, and Ray not installed."""
    if args.ray is None:
        for flag, value in (("--actors", args.actors), ("--gpus-per-actor", args.gpus_per_actor)):
            if value is not None:
                raise EntitySAMError(f"{flag} needs --ray")
        return
    if args.online:
        raise EntitySAMError("--online is not available with --ray (one live source is one process)")
    if args.compile:
        raise EntitySAMError("--compile is not available with --ray yet (the actors load their own models)")
    if getattr(args, "shard", None) is not None:
        raise EntitySAMError("--shard and --ray exclude each other: Ray spreads the whole list itself")
    if args.exact and args.dtype != "float32":  # auto is bfloat16 on the actors' GPUs
        raise EntitySAMError("--exact with --ray needs --dtype float32 (exact mode computes in float32)")
    from ..distributed.ray_runner import import_ray

    import_ray()  # RayNotInstalledError: one line saying how to install it


def default_ray_summary(out_root: Path) -> Path:
    """``OUTPUT/.entitysam-batch/ray.json``: where a --ray run without --summary writes its summary."""
    from ..distributed.local import SUMMARY_DIR

    return Path(out_root) / SUMMARY_DIR / RAY_SUMMARY_NAME


def segment_on_ray(args, inputs, names, options, out_root: Path, say) -> int:
    """Run the command's videos with `segment_many`; print and write its summary. Exit code 0,
    1 when a video failed or the model could not be loaded, 130 on Ctrl-C."""
    from ..distributed.jobs import VideoJob, frame_count
    from ..distributed.ray_runner import segment_many

    # resumable, as a sharded run: a complete video is skipped, an interrupted one redone
    options = replace(options, skip_existing=not args.overwrite, redo_unfinished=True)
    jobs = [VideoJob(p, n, frame_count(p, options)) for p, n in zip(inputs, names)]
    summary_path = Path(args.summary) if getattr(args, "summary", None) else default_ray_summary(out_root)
    threads = args.threads or 1
    try:
        summary = segment_many(
            jobs, out_root, address=args.ray or None, num_actors=args.actors, gpus_per_actor=args.gpus_per_actor,
            cpus_per_actor=threads, threads=threads, model=args.checkpoint or args.model or "vit-s",
            config=args.model if args.checkpoint else None, device=args.device,
            allow_pickle=bool(args.checkpoint) and args.trust_checkpoint_code, options=options,
            progress=not args.quiet, protect=[p for p in inputs if isinstance(p, Path)], say=say,
            say_error=print_err, summary_path=summary_path, describe_error=user_message)
    except EntitySAMError as err:  # the model could not be loaded, the cluster not reached
        print_err(err)
        return 1
    except (KeyboardInterrupt, OSError) as err:
        return batch_stopped(err)
    return report_summary(summary, say)
