"""`entitysam eval vipseg` merging: a failure of the merge or of the scoring is the same one line
and exit status in one process, at --merge-only and on rank 0 under torchrun."""

from __future__ import annotations

import shutil
from concurrent.futures.process import BrokenProcessPool

import pytest

from _media import link_into
from entitysam import cli
from entitysam.data.synthetic.vipseg import make_vipseg_dataset

LAUNCHER_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_checkpoint):
    d = tmp_path_factory.mktemp("eval-merge")
    link_into(d, tiny_checkpoint)
    return d, make_vipseg_dataset(d / "VIPSeg_720P", num_videos=2, num_frames=(2, 2), seed=0).root


@pytest.fixture(scope="module")
def evaluated(dataset, tmp_path_factory, one_torch_thread):
    """A complete evaluation of `dataset` (pred.json, metrics.json), made in one process."""
    d, root = dataset
    out = tmp_path_factory.mktemp("evaluated") / "out"
    assert cli.main(["eval", "vipseg", "--data-root", str(root), "--checkpoint", str(d / "tiny.pth"), "-o", str(out),
                     "--threads", "1", "--workers", "1", "-q"]) == 0
    return out


def _unmerged_copy(evaluated, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(evaluated, out)
    for name in ("pred.json", "metrics.json", "log.json"):
        (out / name).unlink()
    return out


def _args(dataset, data, out, *extra):
    d, _ = dataset
    return ["eval", "vipseg", "--data-root", str(data), "--checkpoint", str(d / "tiny.pth"), "-o", str(out),
            "--threads", "1", "--workers", "1", "-q", *extra]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _as_rank(monkeypatch, rank: int, world: int) -> None:
    """torchrun for one rank whose peers are all done (test_eval_shards' emulation)."""
    import torch.distributed as dist

    for key in LAUNCHER_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in {"RANK": rank, "WORLD_SIZE": world, "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": world}.items():
        monkeypatch.setenv(key, str(value))
    for name in ("init_process_group", "barrier", "destroy_process_group"):
        monkeypatch.setattr(dist, name, lambda *a, **kw: None)
    monkeypatch.setattr(dist, "all_gather_object", lambda outcomes, mine, *a, **kw: outcomes.__setitem__(
        slice(None), [mine if r == rank else (0, []) for r in range(world)]))


@pytest.mark.parametrize("error", [BrokenProcessPool("A process in the process pool was terminated abruptly"),
                                   RecursionError("maximum recursion depth exceeded"),
                                   PermissionError(13, "Permission denied")])
def test_a_failed_merge_is_one_line_and_the_same_in_one_process_at_merge_only_and_on_rank_0(
        dataset, evaluated, tmp_path, monkeypatch, capsys, error):
    """A RuntimeError (a scoring worker killed, out of memory) or an OSError raised while merging
    and scoring: one `error:` line and exit 1 in one process, but a traceback at --merge-only and
    on rank 0 under torchrun. Now the three say the same line."""
    from entitysam.cli import eval as eval_cli
    from entitysam.eval.runner import run

    def finish(*args, **kwargs):
        raise error

    _, root = dataset
    said = {}
    for how in ("one process", "rank 0", "merge-only"):
        out = _unmerged_copy(evaluated, tmp_path / how.replace(" ", "-"))
        with monkeypatch.context() as m:
            m.setattr(run, "finish", finish)
            m.setattr(eval_cli, "finish", finish)
            extra = ["--merge-only"] if how == "merge-only" else ["--device", "cpu"]
            if how == "rank 0":
                _as_rank(m, 0, 2)
            capsys.readouterr()
            assert eval_cli.main(_args(dataset, root, out, *extra)[1:]) == 1, how
            said[how] = _one_error_line(capsys).replace(str(out), "OUT")
        assert not (out / "pred.json").exists()
    assert said["merge-only"] == said["one process"] == said["rank 0"].replace("[rank 0/2] ", ""), said
