"""One rank of a multi-process training run fails: every rank ends within seconds, exits non-zero,
and the cause is said once, in one line naming the rank (docs/training.md, docs/reliability.md).

Two gloo processes on 127.0.0.1, started as Slurm's srun does (each with RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT; no torchrun agent to stop the others) or by torchrun. Before, the
ranks that did not fail waited in their next collective operation: until the failing process
exited (then each printed a traceback of the broken connection), or for the process group's
timeout (30 minutes) when it stayed alive; the tests here give up long before that.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from entitysam.data.synthetic.coco import make_synthetic_coco_panoptic
from entitysam.train.config import load_config
from entitysam.train.data import ClipDataset, read_panoptic_dataset

REPO = Path(__file__).resolve().parents[1]
RANK_SCRIPT = REPO / "tests" / "_rank_failure.py"
WAIT = 180  # seconds (two ranks start, build and train under load); the process group waits 30 minutes
TRAIN = ["solver.max_iter=3", "solver.ims_per_batch=2", "num_threads=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int | None = None, port: int = 0) -> dict:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if rank is not None:
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
    return env


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    make_synthetic_coco_panoptic(root, num_images=6, seed=1)
    return root


def _image_only_rank_1_reads(root: Path) -> Path:
    """The image rank 1 reads at iteration 1, which no rank reads before nor rank 0 in 3 iterations."""
    cfg = load_config("tiny-stage2", [f"data.root={root}", *TRAIN])
    data = ClipDataset(read_panoptic_dataset(root), cfg.data, cfg.data.frames, 64, cfg.seed)
    index = data.record_index(2 * 1 + 1)  # iteration i, rank r reads position 2 i + r
    assert index not in {data.record_index(p) for p in (0, 1, 2, 4)}
    return Path(data.records[index].image_path)


@pytest.fixture
def corrupt(dataset, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(dataset, root)
    path = _image_only_rank_1_reads(root)
    path.write_bytes(b"garbage")
    return root, path


def _launch(mode: str, extra: list[str], tail: list[str]) -> list[subprocess.Popen]:
    port = _free_port()
    return [subprocess.Popen([sys.executable, str(RANK_SCRIPT), mode, *extra, "--", *tail], env=_env(rank, port),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]


def _finish(procs: list[subprocess.Popen], ranks=(0, 1)) -> tuple[list[int], list[str], float]:
    """Exit codes and stderr of `ranks`, waiting at most WAIT seconds in all; every process is
    killed at the end (a test that gives up leaves none behind)."""
    start = time.monotonic()
    codes, errs = [], []
    try:
        for rank in ranks:
            try:
                _, err = procs[rank].communicate(timeout=max(1.0, WAIT - (time.monotonic() - start)))
            except subprocess.TimeoutExpired:
                pytest.fail(f"rank {rank} still running after {WAIT} s: the ranks wait for the one that failed")
            codes.append(procs[rank].returncode)
            errs.append(err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return codes, errs, time.monotonic() - start


def _cli(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--quiet", "--config", "tiny-stage2", f"data.root={root}", f"output_dir={out}", *TRAIN, *extra]


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def test_unreadable_image_on_one_rank_stops_every_rank_with_one_line_each(corrupt, tmp_path):
    root, image = corrupt
    out = tmp_path / "out"
    codes, errs, _ = _finish(_launch("cli", [], _cli(root, out)))
    assert codes == [1, 1], errs
    assert errs[1].splitlines() == [f"error: rank 1: cannot read {image}: cannot identify image file '{image}'"], errs
    assert errs[0].splitlines() == ["error: rank 0 stopped: rank 1 failed (see its message)"], errs
    assert _leftovers(out) == []


def test_a_diverging_run_stops_every_rank_with_one_line_each(dataset, tmp_path):
    """The same weights diverge on every rank: each says so in one line (the matcher's scipy call
    raised 'matrix contains invalid numeric entries' with a traceback on every rank)."""
    codes, errs, _ = _finish(_launch("cli", [], _cli(dataset, tmp_path / "out", "solver.base_lr=1e30",
                                                     "solver.clip_grad_norm=0")))
    assert codes == [1, 1], errs
    for rank, err in enumerate(errs):
        line, = err.splitlines()
        assert (line.startswith(f"error: rank {rank}: training diverged at iteration ")
                or line.startswith(f"error: rank {rank} stopped:")), errs


def test_checkpoint_write_failing_on_rank_0_stops_every_rank_and_leaves_no_part(dataset, tmp_path):
    out = tmp_path / "out"
    (out / "model_0000000.pth").mkdir(parents=True)  # a folder where the first checkpoint goes
    codes, errs, _ = _finish(_launch("cli", [], _cli(dataset, out, "solver.checkpoint_period=1")))
    assert codes == [1, 1], errs
    assert errs[0].splitlines() == [f"error: rank 0: cannot write the checkpoint {out / 'model_0000000.pth'}: "
                                    "Is a directory"], errs
    assert errs[1].splitlines() == ["error: rank 1 stopped: rank 0 failed (see its message)"], errs
    assert _leftovers(out) == [] and not (out / "last_checkpoint").exists()
    assert [p.name for p in (out / "model_0000000.pth").iterdir()] == []


def test_failure_inside_a_step_ends_the_others_while_the_failing_process_lives(dataset, tmp_path):
    """Rank 1's forward raises while rank 0 waits in DDP's gradient all-reduce; rank 1's process
    then stays alive (a Python caller, or NCCL, where an exit does not end the others' operations)."""
    procs = _launch("api", ["--fail-forward-on", "1", "--linger", "120"],
                    [f"data.root={dataset}", f"output_dir={tmp_path / 'out'}", *TRAIN])
    codes, errs, seconds = _finish(procs, ranks=(0,))
    assert codes == [1], errs
    assert errs[0].splitlines()[-1].startswith("rank 0: RankFailedError: rank 0 stopped: another rank failed or was "
                                               "stopped (see its message): the connection to it broke ("), errs
    assert procs[1].returncode == -9  # still lingering when rank 0 had ended: killed by the test


def test_data_error_ends_the_others_while_the_failing_process_lives(corrupt, tmp_path):
    root, image = corrupt
    procs = _launch("api", ["--linger", "120"], [f"data.root={root}", f"output_dir={tmp_path / 'out'}", *TRAIN])
    codes, errs, _ = _finish(procs, ranks=(0,))
    assert codes == [1], errs
    assert errs[0].splitlines()[-1] == "rank 0: RankFailedError: rank 0 stopped: rank 1 failed (see its message)"


def test_under_torchrun_the_failing_rank_is_the_one_named(corrupt, tmp_path):
    root, image = corrupt
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                          "-m", "entitysam.train", *_cli(root, tmp_path / "out")],
                         env=_env(), capture_output=True, text=True, timeout=WAIT)
    assert run.returncode == 1 and time.monotonic() - start < WAIT
    lines = run.stderr.splitlines()
    assert f"error: rank 1: cannot read {image}: cannot identify image file '{image}'" in lines, run.stderr
    # torchrun ends rank 0 itself once rank 1 has exited: its line may be cut short, never a traceback
    assert not [line for line in lines if line.startswith("[rank")], run.stderr


def test_the_agreement_names_the_ranks_that_failed_and_raises_a_rank_its_own_error():
    from entitysam.train.failstop import RankFailedError, broken_connection, failure_flags, settle

    assert failure_flags(None, 1, 3) == [0.0, 0.0, 0.0] and failure_flags(OSError(), 1, 3) == [0.0, 1.0, 0.0]
    settle([0.0, 0.0, 0.0], 0, None)  # nobody failed: training goes on
    with pytest.raises(RankFailedError, match=r"^rank 0 stopped: ranks 1, 2 failed \(see their message\)$"):
        settle([0.0, 1.0, 1.0], 0, None)
    own = OSError("disk full")
    with pytest.raises(OSError) as raised:
        settle([0.0, 1.0, 1.0], 1, own)
    assert raised.value is own
    gloo = RuntimeError("[/src/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                        "[127.0.0.1]:4242. This is typically caused by a remote worker crashing.")
    assert broken_connection(gloo) and not broken_connection(RuntimeError("CUDA out of memory"))


def test_a_batch_that_does_not_divide_among_the_ranks_is_one_line_each(dataset, tmp_path):
    """solver.ims_per_batch=3 on 2 processes: a ValueError traceback on every rank before."""
    args = _cli(dataset, tmp_path / "out")
    args[args.index("solver.ims_per_batch=2")] = "solver.ims_per_batch=3"
    codes, errs, _ = _finish(_launch("cli", [], args))
    assert codes == [2, 2], errs
    for rank, err in enumerate(errs):
        assert err.splitlines() == [f"error: rank {rank}: solver.ims_per_batch=3 is not divisible by the 2 processes: "
                                    "set it to a multiple of 2"], errs
