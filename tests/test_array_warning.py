"""torchrun inside a Slurm array job without --shard: every rank takes RANK/WORLD_SIZE of the whole
video list whatever its array task, so each task processed the same videos and exited 0, silently.
Rank 0 now says so in one `warning:` line suggesting --shard auto; no other case warns."""

from __future__ import annotations

import pytest

from _media import write_frames
from entitysam import cli
from entitysam.distributed.local import ignored_array

TORCHRUN = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
ARRAY = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_JOB_ID": "77"}
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_ARRAY_TASK_ID",
            "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("env", [{**TORCHRUN, **ARRAY}, {"RANK": "0", "WORLD_SIZE": "1", **ARRAY}],
                         ids=["rank-0-of-2", "one-rank"])
def test_torchrun_in_an_array_task_without_shard_warns(env):
    assert ignored_array(None, env) == "3"


@pytest.mark.parametrize("text, env", [
    (None, TORCHRUN),  # no array
    ("auto", {**TORCHRUN, **ARRAY}),  # --shard given: the array is taken
    (None, ARRAY),  # plain Slurm array, no torchrun
    (None, {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", **ARRAY}),  # srun's tasks without torchrun
    (None, {**TORCHRUN, "RANK": "1", "LOCAL_RANK": "1", **ARRAY}),  # said by rank 0 only
    (None, {**TORCHRUN, "SLURM_ARRAY_TASK_ID": ""}),
    (None, {}),
    (None, {**TORCHRUN, **ARRAY, "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "1"}),  # nothing repeated
], ids=["no-array", "shard-auto", "plain-slurm", "srun-tasks", "rank-1", "empty-task-id", "nothing", "one-task"])
def test_no_warning_otherwise(text, env):
    assert ignored_array(text, env) is None


@pytest.mark.parametrize("rank, extra, warned", [
    ("0", [], True), ("1", [], False), ("0", ["--shard", "auto"], False)])
def test_the_command_line_says_it_once_on_stderr_also_with_q(tmp_path, monkeypatch, capsys, rank, extra, warned):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in {**TORCHRUN, "RANK": rank, "LOCAL_RANK": rank, **ARRAY}.items():
        monkeypatch.setenv(key, value)
    videos = tmp_path / "videos"
    for name in ("a", "b"):
        write_frames(videos / name, ["0"])
    code = cli.main(["segment", "--batch", str(videos), "-o", str(tmp_path / "out"), "--model", "demo",
                     "--save", "panoptic", "--threads", "1", "--device", "cpu", "-q", *extra])
    assert code == 0
    captured = capsys.readouterr()
    lines = [x for x in captured.err.splitlines() if "--shard auto" in x]
    assert len(lines) == (1 if warned else 0)
    if warned:
        assert lines[0].startswith("warning: torchrun in Slurm array task 3 without --shard: ")
        assert "every array task processes the same videos" in lines[0]
    assert "--shard auto" not in captured.out
