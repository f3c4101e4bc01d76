"""One process of a multi-process training run, for tests/test_ddp_rank_failure.py.

    python tests/_rank_failure.py cli [--fail-forward-on R] -- <entitysam.train arguments>
    python tests/_rank_failure.py api [--fail-forward-on R] [--linger S] -- <key=value overrides of tiny-stage2>

The process group comes from the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...), as under
torchrun or Slurm's srun. `--fail-forward-on R`: rank R's forward raises at its second clip, a
failure in the middle of a step through the real DDP forward. `cli` runs `entitysam.train`'s
command line. `api` calls `entitysam.train.trainer.train`, prints the outcome as one line
(`rank R: finished` or `rank R: <error class>: <message>`) and, when this rank is the one that
failed, stays alive `--linger` seconds before exiting: a process that outlives its failure, as
a Python caller that catches the exception does (and as NCCL peers see a process that exits:
its exit does not end their operations).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def inject_forward_failure() -> None:
    from entitysam.train.forward import TrainingModule

    original, calls = TrainingModule.forward, []

    def forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError(f"injected failure in the forward of rank {os.environ['RANK']}")
        return original(self, *args, **kwargs)

    TrainingModule.forward = forward


def run_api(overrides: list[str], linger: float) -> int:
    from entitysam.train.config import load_config
    from entitysam.train.distributed import cleanup
    from entitysam.train.trainer import train

    rank = os.environ["RANK"]
    try:
        train(load_config("tiny-stage2", overrides), quiet=True)
    except Exception as err:  # noqa: BLE001 - the outcome is the test's to judge
        print(f"rank {rank}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        if type(err).__name__ != "RankFailedError":  # by name: the code before it had no such class
            time.sleep(linger)
        cleanup()
        return 1
    print(f"rank {rank}: finished", file=sys.stderr, flush=True)
    cleanup()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["cli", "api"])
    parser.add_argument("--fail-forward-on", type=int)
    parser.add_argument("--linger", type=float, default=0.0)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.rest = argv[cut + 1:]
    if args.fail_forward_on is not None and args.fail_forward_on == int(os.environ["RANK"]):
        inject_forward_failure()
    if args.mode == "cli":
        from entitysam.train import cli

        return cli.main(args.rest)
    return run_api(args.rest, args.linger)


if __name__ == "__main__":
    sys.exit(main())
