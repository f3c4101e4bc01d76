"""Hostile inputs of the many-videos path: `entitysam segment --batch DIR --shard ...` with odd
batch folders, environment values (torchrun, Slurm) and --summary files. Each test checks the
exit code, the one-line message and the files left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _media import write_video
from entitysam import cli
from entitysam.cli.inputs import batch_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMMON = ["--model", "demo", "--save", "panoptic", "--threads", "1", "-q"]
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
            "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP", "SLURM_ARRAY_TASK_MAX")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)


def segment(*args) -> int:
    return cli.main(["segment", *map(str, args)])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_folders_named_like_a_prefix_and_a_number_are_listed(tmp_path):
    """`c` and `c2` in one batch: the natural sort compared the name `c` with the number 2
    (TypeError traceback before any work)."""
    for name in ("c2", "c", "c10", "b1"):
        (tmp_path / "in" / name).mkdir(parents=True)
    got = [p.name for p in batch_inputs(str(tmp_path / "in"), tmp_path / "out")]
    assert got == ["b1", "c", "c2", "c10"]


def test_a_folder_of_frames_that_holds_the_output_folder_is_still_a_video(tmp_path):
    """`--batch in -o in/clip/results`: the folder of frames `clip` holds the output folder, and was
    left out as if it were the output (no word, exit 0). A folder that holds the output and no frames
    is still left out."""
    from _media import write_frames

    write_frames(tmp_path / "in" / "clip", ["0", "1"])
    write_video(tmp_path / "in" / "b.mp4", 2)
    (tmp_path / "in" / "out").mkdir()
    assert [p.name for p in batch_inputs(str(tmp_path / "in"), tmp_path / "in" / "clip" / "results")] == [
        "b.mp4", "clip", "out"]
    assert [p.name for p in batch_inputs(str(tmp_path / "in"), tmp_path / "in" / "out")] == ["b.mp4", "clip"]
    assert [p.name for p in batch_inputs(str(tmp_path / "in"), tmp_path / "in" / "out" / "x")] == ["b.mp4", "clip"]


def test_linked_folders_of_frames_are_named_by_their_links(tmp_path, capsys, monkeypatch):
    """A folder of frames was named after the folder its link leads to: links cam1 and cam2 to
    sessions' folders both called `frames` failed the batch (exit 2, "would both write to
    out/frames"), and `segment in/cam1` wrote out/frames. A video file is named by its link already."""
    from _media import write_frames

    for session in ("a", "b"):
        write_frames(tmp_path / session / "frames", ["0", "1"])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cam1").symlink_to(tmp_path / "a" / "frames")
    (tmp_path / "in" / "cam2").symlink_to(tmp_path / "b" / "frames")
    out = tmp_path / "out"
    assert segment("--batch", tmp_path / "in", "-o", out, *COMMON) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["cam1", "cam2"]
    panoptic = json.loads((out / "cam1" / "panoptic.json").read_text())
    assert panoptic["annotations"][0]["video_id"] == "cam1"
    # "." and ".." are still the folders they lead to
    monkeypatch.chdir(tmp_path / "a" / "frames")
    from entitysam.io.sources import result_name
    assert (result_name("."), result_name(".."), result_name("../frames/")) == ("frames", "a", "frames")
    # "link/.." is the parent of the link's target, as the system reads it (not the folder of the link)
    monkeypatch.chdir(tmp_path / "in")
    assert result_name("cam1/..") == "a" and result_name("cam1/../frames") == "frames"


def test_a_symlink_loop_in_the_batch_fails_that_video_only(tmp_path, capsys):
    """A link pointing to itself: Path.resolve raised RuntimeError (a traceback) while the batch
    was listed; now that video fails with its message and the others are done."""
    src = tmp_path / "in"
    src.mkdir()
    write_video(src / "good.mp4", 2)
    os.symlink("loop.mp4", src / "loop.mp4")
    out = tmp_path / "out"
    assert segment("--batch", src, "-o", out, "--shard", "0/1", *COMMON) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "loop: input" in err and "symbolic link loop" in err
    summary = json.loads((out / ".entitysam-batch" / "shard-0-of-1.json").read_text())
    assert summary["done"] == ["good"] and [f["name"] for f in summary["failed"]] == ["loop"]


@pytest.fixture
def two_videos(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_video(src / "a.mp4", 2)
    write_video(src / "b.mp4", 3)
    return src


@pytest.mark.parametrize("env, args, words", [
    # a traceback: LOCAL_RANK was first read after the command line had been accepted
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "x"}, [], "LOCAL_RANK='x'"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "-1"}, [], "LOCAL_RANK=-1"),
    # ran silently: every rank without RANK took slice 0, slice 1 was never done
    ({"WORLD_SIZE": "2"}, [], "no RANK"),
    ({"WORLD_SIZE": "2", "RANK": ""}, [], "no RANK"),
    # ran silently as one process over the whole batch
    ({"WORLD_SIZE": "-3", "RANK": "0"}, [], "WORLD_SIZE='-3'"),
    ({"WORLD_SIZE": "0", "RANK": "0"}, ["--shard", "auto"], "WORLD_SIZE='0'"),
    # a traceback: the Slurm slice was checked against the int64 bound only when the split ran
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": str(2**70)}, ["--shard", "auto"], "at most"),
])
def test_bad_torchrun_and_slurm_environments_exit_2_with_one_line(two_videos, tmp_path, monkeypatch, capsys,
                                                                   env, args, words):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    assert segment("--batch", two_videos, "-o", out, *COMMON, *args) == 2
    assert words in one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("where, content, words", [
    ("in/a.mp4", None, "is the input"),  # was replaced by the summary JSON: the video lost
    ("notes.json", '{"mine": 1}', "not an entitysam batch summary"),  # a user's file: replaced
    ("cut.json", '{"format": "entitysam-batch-summary", "fra', "not an entitysam batch summary"),
    # a RecursionError traceback
    ("deep.json", '{"format": "entitysam-batch-summary", "x": ' + "[" * 100000 + "]" * 100000 + "}",
     "not an entitysam batch summary"),
    ("folder", "dir", "is a folder"),  # exit 1 after the whole shard, with an Errno message
    ("out/a/summary.json", None, "lies in the result folder"),  # a file entitysam did not write, in a result
])
def test_a_summary_file_that_must_not_be_replaced_is_refused_before_any_work(two_videos, tmp_path, capsys,
                                                                              where, content, words):
    target = tmp_path / where
    if content == "dir":
        target.mkdir()
    elif content is not None:
        target.write_text(content)
    before = target.read_bytes() if target.is_file() else None
    out = tmp_path / "out"
    assert segment("--batch", two_videos, "-o", out, "--shard", "0/1", "--summary", target, *COMMON) == 2
    assert words in one_error_line(capsys)
    assert not out.exists()
    assert (target.read_bytes() if target.is_file() else None) == before


def test_a_summary_file_of_an_earlier_run_or_an_empty_file_is_replaced(two_videos, tmp_path):
    target = tmp_path / "s.json"
    target.write_text("")
    out = tmp_path / "out"
    for _ in range(2):
        assert segment("--batch", two_videos, "-o", out, "--shard", "1/2", "--summary", target, *COMMON) == 0
        assert json.loads(target.read_text())["shard"] == {"index": 1, "count": 2}


def test_a_lock_path_that_is_a_link_or_a_folder_fails_that_video_and_touches_nothing(two_videos, tmp_path, capsys):
    """OUT/.b.lock a symbolic link: it was followed and the file it names truncated to a pid;
    OUT/.a.lock a folder: the OutputError escaped the shard (a traceback, the other videos not done)."""
    out = tmp_path / "out"
    out.mkdir()
    precious = tmp_path / "precious.bin"
    precious.write_bytes(b"do not touch" * 100)
    os.symlink(precious, out / ".b.lock")
    (out / ".a.lock").mkdir()
    (out / ".a.lock" / "x").write_text("x")
    assert segment("--batch", two_videos, "-o", out, "--shard", "0/1", *COMMON) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("is not a plain file") == 2, err
    assert precious.read_bytes() == b"do not touch" * 100
    assert (out / ".a.lock" / "x").read_text() == "x" and os.path.islink(out / ".b.lock")
    summary = json.loads((out / ".entitysam-batch" / "shard-0-of-1.json").read_text())
    assert sorted(f["name"] for f in summary["failed"]) == ["a", "b"]


def test_a_stale_lock_file_of_a_killed_run_is_taken_over(two_videos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".a.lock").write_text("999999999\n")  # no flock on it: its process is gone
    (out / ".b.lock").write_bytes(b"")  # killed between creating it and writing its pid
    assert segment("--batch", two_videos, "-o", out, "--shard", "0/1", *COMMON) == 0
    assert sorted(os.listdir(out)) == [".entitysam-batch", "a", "b"]


def test_a_file_named_like_a_lock_file_that_no_run_wrote_fails_its_video_only(two_videos, tmp_path):
    """In a --batch --shard run, a file of the user's at `.b.lock` (not what a lock file holds)
    was cut to the run's pid and deleted; now video b is refused, untouched, and a is done."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".b.lock").write_bytes(b"\xff\x00garbage")
    assert segment("--batch", two_videos, "-o", out, "--shard", "0/1", *COMMON) == 1
    assert (out / ".b.lock").read_bytes() == b"\xff\x00garbage"
    assert sorted(os.listdir(out)) == [".b.lock", ".entitysam-batch", "a"]


def test_leftovers_of_a_run_killed_on_another_machine_are_recovered(two_videos, tmp_path):
    """OUT shared by several machines: a run killed on another one left staging folders named
    with its pid, which here may be a live process's (pid 1 in containers, any pid on a busy
    node). They were taken for a live run's: kept for ever (with a killed video's temporary
    logits, gigabytes), and a complete one never moved in (its video redone). The lock of the
    video, held while recovering, shows that no run is writing it, wherever that pid lives."""
    import shutil

    done = tmp_path / "done"
    assert segment(two_videos / "a.mp4", "-o", done, *COMMON) == 0
    out = tmp_path / "out"
    out.mkdir()
    alive = os.getppid()  # a live process of this machine, not entitysam: "the other machine's pid"
    shutil.copytree(done / "a", out / f".a.partial-{alive}-0123abcd")  # killed before its last rename
    (out / f".b.partial-{alive}-89abcdef").mkdir()  # killed mid-video
    (out / f".b.partial-{alive}-89abcdef" / "logits-0.npy").write_bytes(b"\0" * 1000)
    (out / ".b.lock").write_text(f"{alive} other-node\n")
    assert segment("--batch", two_videos, "-o", out, "--shard", "0/1", *COMMON) == 0
    assert sorted(os.listdir(out)) == [".entitysam-batch", "a", "b"]
    summary = json.loads((out / ".entitysam-batch" / "shard-0-of-1.json").read_text())
    assert summary["skipped"] == ["a"] and summary["done"] == ["b"]  # a: the staged result, moved in
    assert (out / "a" / "manifest.json").read_bytes() == (done / "a" / "manifest.json").read_bytes()


def _damage(path) -> None:
    """Invert every 37th byte after the first 200: the container still opens, its stream has no codec."""
    data = bytearray(path.read_bytes())
    for i in range(200, len(data) - 100, 37):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_video_fails_alone_instead_of_stopping_every_shard(two_videos, tmp_path, capsys):
    """A damaged header left the stream without a codec context: AttributeError while every
    shard counted the frames of every video, so each shard of the batch crashed before any work."""
    broken = two_videos / "broken.mp4"
    write_video(broken, 12, size=(160, 120))
    _damage(broken)
    out = tmp_path / "out"
    assert segment("--batch", two_videos, "-o", out, "--shard", "0/1", *COMMON) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "broken: cannot read video" in err, err
    summary = json.loads((out / ".entitysam-batch" / "shard-0-of-1.json").read_text())
    assert summary["done"] == ["a", "b"] and [f["name"] for f in summary["failed"]] == ["broken"]


@pytest.mark.parametrize("make, words", [
    (lambda out: (out / ".entitysam-batch").write_text("x"), ".entitysam-batch is not a folder"),
    (lambda out: (out / ".entitysam-batch" / "shard-0-of-1.json").mkdir(parents=True), "is a folder"),
])
def test_an_unwritable_default_summary_is_refused_before_any_work(two_videos, tmp_path, capsys, make, words):
    """Was found only when the shard had done all its videos: exit 1 with a raw Errno message."""
    out = tmp_path / "out"
    out.mkdir()
    make(out)
    assert segment("--batch", two_videos, "-o", out, "--shard", "0/1", *COMMON) == 2
    line = one_error_line(capsys)
    assert words in line and "the summary file" in line, line
    assert sorted(os.listdir(out)) == [".entitysam-batch"]


def test_a_damaged_default_summary_is_replaced(two_videos, tmp_path):
    """The default summary lives in entitysam's hidden folder: a damaged one never blocks a re-run."""
    out = tmp_path / "out"
    (out / ".entitysam-batch").mkdir(parents=True)
    (out / ".entitysam-batch" / "shard-0-of-1.json").write_text("{trunc")
    assert segment("--batch", two_videos, "-o", out, "--shard", "0/1", *COMMON) == 0
    assert json.loads((out / ".entitysam-batch" / "shard-0-of-1.json").read_text())["done"] == ["a", "b"]


def test_summary_under_a_file_is_refused(two_videos, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert segment("--batch", two_videos, "-o", tmp_path / "out", "--shard", "0/1", "--summary",
                   tmp_path / "f" / "s.json", *COMMON) == 2
    assert "is not a folder" in one_error_line(capsys)
    assert (tmp_path / "f").read_text() == "x" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["nowhere/deeper", "self"])
def test_an_output_that_is_a_dangling_link_is_refused_before_any_work(two_videos, tmp_path, capsys, target):
    """Was a traceback from the first video's lock (mkdir through a dangling link: File exists)."""
    out = tmp_path / "self"
    os.symlink(tmp_path / target, out)
    assert segment("--batch", two_videos, "-o", out, "--shard", "0/1", *COMMON) == 2
    line = one_error_line(capsys)
    assert "--output" in line and "symbolic link to nowhere" in line, line
    assert os.readlink(out) == str(tmp_path / target) and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("fifo", ["c/run.json", "c/manifest.json", "d/sub/manifest.json"])
def test_a_named_pipe_called_like_a_manifest_in_the_batch_does_not_hang(tmp_path, fifo):
    """Listing the batch reads each sub-folder's manifest.json / run.json to leave out earlier
    results: a FIFO there blocked the read forever, before any work and with no message."""
    src = tmp_path / "in"
    src.mkdir()
    write_video(src / "b.mp4", 2)
    (src / "c").mkdir()
    (src / fifo).parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(src / fifo)
    got = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                          "from entitysam.cli.inputs import batch_inputs; "
                          "print([p.name for p in batch_inputs(sys.argv[1], Path(sys.argv[2]))])",
                          str(src), str(tmp_path / "out")], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == str(["b.mp4", "c"] + (["d"] if fifo.startswith("d/") else []))


def test_a_result_folder_given_as_the_batch_folder_is_refused(two_videos, tmp_path, capsys):
    """--batch of an entitysam result folder (`--batch out/a` for `--batch in`) segmented its
    overlay.mp4 and its panoptic/ id maps as videos, and with `-o out/a` wrote their results into
    that result, which --overwrite then refused to replace (a folder entitysam did not write)."""
    out = tmp_path / "out"
    assert segment(two_videos / "a.mp4", "-o", out, "--model", "demo", "--save", "all", "--threads", "1", "-q") == 0
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    for target in (tmp_path / "out2", out / "a"):
        assert segment("--batch", out / "a", "-o", target, *COMMON) == 2
        assert "is an output folder of entitysam (its manifest.json)" in one_error_line(capsys)
    assert not (tmp_path / "out2").exists()
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def _unfinish(result: Path) -> None:
    """Make a result look like an online video interrupted by SIGTERM (a Slurm pre-emption)."""
    manifest = json.loads((result / "manifest.json").read_text())
    manifest.update(complete=False, status="interrupted")
    (result / "manifest.json").write_text(json.dumps(manifest))


def test_a_rerun_redoes_an_interrupted_result_instead_of_failing_it_forever(two_videos, tmp_path, capsys):
    """A shard re-run skips complete results and must finish the others: an unfinished result
    (an online video stopped by SIGTERM) failed every re-run ("use --overwrite", which redoes the slice)."""
    out = tmp_path / "out"
    assert segment("--batch", two_videos, "-o", out, "--shard", "0/1", *COMMON) == 0
    _unfinish(out / "a")
    capsys.readouterr()
    assert segment("--batch", two_videos, "-o", out, "--shard", "0/1", *COMMON) == 0, capsys.readouterr().err
    summary = json.loads((out / ".entitysam-batch" / "shard-0-of-1.json").read_text())
    assert summary["done"] == ["a"] and summary["skipped"] == ["b"]
    assert json.loads((out / "a" / "manifest.json").read_text())["complete"] is True
    # the rules of replacing still hold: a file entitysam did not write in it keeps it
    _unfinish(out / "a")
    (out / "a" / "notes.txt").write_text("mine")
    assert segment("--batch", two_videos, "-o", out, "--shard", "0/1", *COMMON) == 1
    assert (out / "a" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("task", ["0", "2"])
def test_a_slurm_array_with_holes_is_refused_by_every_task(two_videos, tmp_path, monkeypatch, capsys, task):
    """--array=0,2,4: COUNT 3, MIN 0, MAX 4. Tasks 0 and 2 took slices 0/3 and 2/3 and ran;
    only task 4 was refused, and slice 1 was never done."""
    for key, value in {"SLURM_ARRAY_TASK_ID": task, "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "4",
                       "SLURM_ARRAY_TASK_COUNT": "3"}.items():
        monkeypatch.setenv(key, value)
    assert segment("--batch", two_videos, "-o", tmp_path / "out", "--shard", "auto", *COMMON) == 2
    assert "contiguous array 0-2" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_failing_video_with_a_newline_in_its_name_is_reported_on_one_line(two_videos, tmp_path, capsys):
    (two_videos / "new\nline.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    assert segment("--batch", two_videos, "-o", out, "--shard", "0/1", *COMMON) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err), err
    assert "new_line: cannot read video" in err[0] and "new\\nline.mp4" in err[0]
    summary = json.loads((out / ".entitysam-batch" / "shard-0-of-1.json").read_text())
    assert "new\nline.mp4" in summary["failed"][0]["error"]  # the summary keeps the real name


def test_an_unwritable_default_ray_summary_is_refused_before_any_work(two_videos, tmp_path, capsys, monkeypatch):
    """As a shard's: was found only once every video had run on the cluster (exit 1, an Errno message)."""
    import entitysam.distributed.ray_runner as ray_runner

    monkeypatch.setattr(ray_runner, "import_ray", lambda: None)  # nothing of Ray may start: no Ray needed
    monkeypatch.setattr(ray_runner, "segment_many", lambda *a, **k: pytest.fail("the videos were run"))
    out = tmp_path / "out"
    out.mkdir()
    (out / ".entitysam-batch").write_text("x")
    assert segment("--batch", two_videos, "-o", out, "--ray", *COMMON) == 2
    line = one_error_line(capsys)
    assert ".entitysam-batch is not a folder" in line and "the summary file" in line, line
    assert sorted(os.listdir(out)) == [".entitysam-batch"]
