"""`entitysam eval vipseg` under a launcher environment that is wrong (a value that is not a number,
RANK missing or past WORLD_SIZE): one `error:` line and exit 2 before any work, as `entitysam
segment` does, not a traceback or a rank waiting for ever for ranks that do not exist."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO
from _media import link_into
from entitysam.data.synthetic.vipseg import make_vipseg_dataset

LAUNCHER_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_checkpoint):
    d = tmp_path_factory.mktemp("eval-env")
    link_into(d, tiny_checkpoint)
    return d, make_vipseg_dataset(d / "VIPSeg_720P", num_videos=2, num_frames=(2, 2), seed=0).root


@pytest.mark.parametrize("env, words", [
    ({"WORLD_SIZE": "x"}, "WORLD_SIZE='x'"),  # was a ValueError traceback
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "q"}, "LOCAL_RANK='q'"),  # a traceback too
    ({"WORLD_SIZE": "2"}, "no RANK"),  # torch's "environment variable RANK expected" traceback
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5 of WORLD_SIZE=2"),  # waited in init_process_group
    ({"WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE='0'"),  # ran as one process, as if unset
])
def test_a_bad_launcher_environment_is_one_line_and_exit_2(dataset, tmp_path, env, words):
    d, root = dataset
    environ = {k: v for k, v in os.environ.items() if k not in LAUNCHER_KEYS}
    environ.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": "9", **env})  # (port 9: nothing listens, a rank would wait for ever)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "entitysam", "eval", "vipseg", "--data-root", str(root),
                          "--checkpoint", str(d / "tiny.pth"), "--output", str(out), "--device", "cpu",
                          "--threads", "1", "--workers", "1", "-q"],
                         env=environ, capture_output=True, text=True, timeout=120)  # a hang guard only
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    assert words in lines[0]
    assert not out.exists()


def test_the_gpu_of_a_rank_wraps_around_the_gpus_of_the_node(monkeypatch):
    import torch

    from entitysam.cli.batch import rank_device

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert [rank_device("auto", r) for r in (0, 1, 3)] == ["cuda:0", "cuda:1", "cuda:1"]
    assert chosen == [0, 1, 1]  # LOCAL_RANK 3 on 2 GPUs: not an "invalid device ordinal"
    assert rank_device("cpu", 3) == "cpu"
