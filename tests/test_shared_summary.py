"""One summary file written by several batch tasks: shards given one ``--summary FILE``, the
tasks of ``srun -n K ... --shard auto`` outside an array job (all shard 0/1, one default file),
and many writers merging at once. Each task used to replace the file: the last one's outcomes
were all that was left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from _media import write_video
from entitysam import cli
from entitysam.distributed.local import default_summary_path
from entitysam.distributed.summary_file import summary_lock_path, write_summary

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMMON = ["--model", "demo", "--save", "panoptic", "--threads", "1"]
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
            "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP", "SLURM_ARRAY_TASK_MAX")
FRAMES = {"a": 2, "b": 3, "c": 2, "d": 3}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def videos(tmp_path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for name, n in FRAMES.items():
        write_video(src / f"{name}.mp4", n)
    return src


def segment_process(*args) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    return subprocess.Popen([sys.executable, "-m", "entitysam", "segment", *map(str, args)],
                            env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(procs) -> list[tuple[int, str]]:
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        results.append((proc.returncode, err))
    return results


def test_two_shards_given_one_summary_file_keep_both_slices(videos, tmp_path):
    """`--shard 0/2 --summary s.json` and `--shard 1/2 --summary s.json` at once (two machines):
    s.json held only the shard that finished last."""
    out, target = tmp_path / "out", tmp_path / "s.json"
    procs = [segment_process("--batch", videos, "-o", out, *COMMON, "-q", "--shard", s, "--summary", target)
             for s in ("0/2", "1/2")]
    assert [rc for rc, _ in finish(procs)] == [0, 0]
    doc = json.loads(target.read_text())
    assert doc["format"] == "entitysam-batch-summary" and doc["format_version"] == 1
    assert sorted(doc["done"]) == sorted(FRAMES) and doc["videos"] == 4 and doc["frames"] == sum(FRAMES.values())
    assert doc["shard"] is None and doc["pid"] is None  # the tasks differ: each is under "tasks"
    tasks = {t["shard"]["index"]: t for t in doc["tasks"]}
    assert sorted(tasks) == [0, 1] and all(t["shard"]["count"] == 2 for t in doc["tasks"])
    assert sorted(tasks[0]["done"] + tasks[1]["done"]) == sorted(FRAMES) and tasks[0]["done"] and tasks[1]["done"]
    assert not summary_lock_path(target).exists()

    # A re-run of shard 1/2 replaces that shard's entry (its videos now skipped) and keeps shard 0/2's.
    assert cli.main(["segment", "--batch", str(videos), "-o", str(out), *COMMON, "-q", "--shard", "1/2",
                     "--summary", str(target)]) == 0
    again = json.loads(target.read_text())
    rerun = {t["shard"]["index"]: t for t in again["tasks"]}
    assert len(again["tasks"]) == 2 and rerun[0] == tasks[0]
    assert rerun[1]["done"] == [] and sorted(rerun[1]["skipped"]) == sorted(tasks[1]["done"])
    assert sorted(again["done"]) == sorted(tasks[0]["done"]) and sorted(again["skipped"]) == sorted(tasks[1]["done"])


def _lock_in_other_process(final: Path) -> subprocess.Popen:
    code = ("import sys, time; from entitysam.io.output_lock import OutputLock; "
            f"OutputLock.acquire({str(final)!r}); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_tasks_of_one_srun_step_share_the_default_summary(videos, tmp_path):
    """`srun -n 2 entitysam segment --shard auto` outside an array job: both tasks are shard 0/1
    and write OUT/.entitysam-batch/shard-0-of-1.json. One task did the videos, the other found each
    one done (skipped) and finished last: the summary said 0 done."""
    out = tmp_path / "out"
    holder = _lock_in_other_process(out / "a")  # both tasks start and wait on the first video
    procs = [segment_process("--batch", videos, "-o", out, *COMMON, "--shard", "auto", "--wait-lock")
             for _ in range(2)]
    try:
        for proc in procs:
            line = "-"
            while line and "waiting" not in line:
                line = proc.stderr.readline()
            assert "waiting" in line, "a task ended before it waited for the first video"
    finally:
        holder.kill()
        holder.wait()
    results = finish(procs)
    assert [rc for rc, _ in results] == [0, 0], [err for _, err in results]
    doc = json.loads(default_summary_path(out, (0, 1)).read_text())
    assert sorted(doc["done"]) == sorted(FRAMES) and doc["skipped"] == doc["busy"] == doc["failed"] == []
    assert doc["shard"] == {"index": 0, "count": 1} and len(doc["tasks"]) == 2
    assert doc["frames"] == sum(FRAMES.values()) and doc["videos"] == 4
    done = [name for t in doc["tasks"] for name in t["done"]]
    assert sorted(done) == sorted(FRAMES)  # each video done once, by one of the tasks
    assert sorted(os.listdir(out / ".entitysam-batch")) == ["shard-0-of-1.json"]  # no lock file left


def _task(index: int, count: int, names: list[str]) -> dict:
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    return {"format": "entitysam-batch-summary", "format_version": 1, "shard": {"index": index, "count": count},
            "host": "h", "pid": os.getpid(), "started": now, "finished": now, "videos": len(names),
            "done": names, "skipped": [], "busy": [], "failed": [], "frames": len(names), "seconds": 0.0,
            "frames_per_second": None,
            "outcomes": [{"name": n, "status": "done", "frames": 1, "seconds": 0.0, "output": None, "error": None}
                         for n in names]}


WRITER = """
import json, sys, time
from entitysam.distributed.summary_file import write_summary
first, start, task = int(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
while time.time() < start:
    time.sleep(0.001)
for k in range(first, first + 10):
    name = f"v{k}"
    outcome = {**task["outcomes"][0], "name": name}
    write_summary(sys.argv[4], {**task, "shard": {"index": k, "count": 40}, "done": [name], "outcomes": [outcome]})
"""


def test_writers_merging_at_once_lose_no_task(tmp_path):
    """Read, merge, replace under the lock: 4 processes x 10 tasks, all at once, all kept."""
    target = tmp_path / "many.json"
    start = time.time() + 3  # the processes are started by then: their writes overlap
    task = json.dumps(_task(0, 40, ["v"]))
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(10 * p), str(start), task, str(target)],
                              stderr=subprocess.PIPE, text=True) for p in range(4)]
    assert [rc for rc, _ in finish(procs)] == [0] * 4
    doc = json.loads(target.read_text())
    assert sorted(t["shard"]["index"] for t in doc["tasks"]) == list(range(40))
    assert sorted(doc["done"]) == sorted(f"v{k}" for k in range(40))


def test_threads_merging_at_once_lose_no_task(tmp_path):
    target = tmp_path / "threads.json"

    def write(first: int) -> None:
        for k in range(first, first + 10):
            write_summary(target, _task(k, 40, [f"v{k}"]))

    threads = [threading.Thread(target=write, args=(10 * t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(t["shard"]["index"] for t in json.loads(target.read_text())["tasks"]) == list(range(40))


def test_a_summary_written_before_the_merge_is_kept_as_one_task(tmp_path):
    """A file of the earlier format (one task, no "tasks", no times) stays in the file beside a new
    task of another slice, and is replaced by a task that covers its videos."""
    target = tmp_path / "old.json"
    old = _task(1, 2, ["x"])
    del old["started"], old["finished"]
    target.write_text(json.dumps(old))
    doc = write_summary(target, _task(0, 2, ["y"]))
    assert sorted(doc["done"]) == ["x", "y"] and len(doc["tasks"]) == 2
    doc = write_summary(target, _task(0, 1, ["x", "y"]))
    assert [t["shard"] for t in doc["tasks"]] == [{"index": 0, "count": 1}]
    assert doc["shard"] == {"index": 0, "count": 1} and doc["done"] == ["x", "y"]


def test_a_killed_writes_temporary_file_beside_the_summary_is_removed(tmp_path):
    """A shard killed while writing its summary or split record left .entitysam-tmp-<pid>-<hex> in
    OUT/.entitysam-batch for good (no run cleaned that folder): the next summary write removes it,
    whatever its pid (another machine's, alive here maybe), but not one a writer holds locked."""
    import fcntl

    target = tmp_path / ".entitysam-batch" / "shard-0-of-2.json"
    target.parent.mkdir()
    dead = target.parent / f".entitysam-tmp-{os.getppid()}-0123456789ab"
    dead.write_text("{")
    live = target.parent / ".entitysam-tmp-999999999-0123456789ab"
    live.write_text("{")
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        write_summary(target, _task(0, 2, ["x"]))
    assert sorted(p.name for p in target.parent.iterdir()) == [live.name, target.name]


def test_a_file_named_like_the_lock_that_holds_data_is_not_deleted(tmp_path):
    """The lock file beside the summary is removed after each merge; a file of that name that the
    tool did not make (it has content) is used as the lock but left in place."""
    target = tmp_path / "summary.json"
    theirs = summary_lock_path(target)
    theirs.write_text("somebody's notes\n")
    write_summary(target, _task(0, 1, ["x"]))
    assert theirs.read_text() == "somebody's notes\n"
    other = tmp_path / "other.json"
    write_summary(other, _task(0, 1, ["x"]))
    assert not summary_lock_path(other).exists(), "the tool's own lock file was left behind"



def test_a_lock_file_of_another_user_is_locked_read_only(tmp_path, monkeypatch):
    """A lock file left by another user on a shared file system (0644, not ours to write) made the
    merge fail with PermissionError (EACCES); flock needs only a read-only descriptor."""
    target = tmp_path / "summary.json"
    lock = summary_lock_path(target)
    lock.touch()
    lock.chmod(0o444)
    if os.geteuid() == 0:  # root writes whatever the mode: the refusal is simulated
        real_open = os.open

        def refusing(path, flags, *args, **kwargs):
            if os.fspath(path) == str(lock) and flags & (os.O_RDWR | os.O_WRONLY):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing)
    write_summary(target, _task(0, 1, ["x"]))
    monkeypatch.undo()
    assert json.loads(target.read_text())["done"] == ["x"]
    # the folder itself refusing a new lock file is still an error, not a loop
    missing = tmp_path / "ro" / "summary.json"
    missing.parent.mkdir()

    def unwritable_folder(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        raise FileNotFoundError(2, "No such file or directory", str(path))

    with monkeypatch.context() as m:
        m.setattr(os, "open", unwritable_folder)
        with pytest.raises(PermissionError):
            write_summary(missing, _task(0, 1, ["x"]))


HEAD = '{"format": "entitysam-batch-summary", '
DAMAGED = {
    "a count that is text": HEAD + '"tasks": [{"outcomes": [{"name": "o", "status": "done", "frames": "x"}]}]}',
    "a count that is NaN": HEAD + '"tasks": [{"outcomes": [{"name": "o", "status": "done", "frames": NaN}]}]}',
    "a count over a float's range": HEAD + '"tasks": [{"outcomes": [{"name": "o", "status": "done", '
                                           '"frames": 1e999}]}]}',
    "counts whose sum overflows a float": HEAD + '"tasks": [{"outcomes": [{"name": "o", "status": "done", '
                                                '"frames": 1e308}, {"name": "p", "status": "done", "frames": 1e308}]}]}',
    "seconds that are text (the earlier format)": HEAD + '"seconds": "long", '
                                                         '"outcomes": [{"name": "o", "status": "done"}]}',
    "seconds over a float's range (the earlier format)": HEAD + '"seconds": 1e999, '
                                                                '"outcomes": [{"name": "o", "status": "done"}]}',
    "an infinite number anywhere in a task": HEAD + '"tasks": [{"host": -Infinity, '
                                                    '"outcomes": [{"name": "o", "status": "done"}]}]}',
    "nesting deeper than Python's recursion limit": HEAD + '"tasks": [{"x": ' + "[" * 5000 + "]" * 5000
                                                           + ', "outcomes": []}]}',
}


@pytest.mark.parametrize("content", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_summary_does_not_stop_the_merge(tmp_path, content):
    """What another program (or a hand edit) left in the file: the merge used to end, after the
    whole batch, with a ValueError / OverflowError / RecursionError traceback and no summary."""
    target = tmp_path / "summary.json"
    target.write_text(content)
    doc = write_summary(target, _task(0, 1, ["new"]))
    assert "new" in doc["done"]
    assert json.loads(target.read_text())["done"] == doc["done"]  # valid JSON, no NaN or Infinity
    assert doc["frames"] == 1 and isinstance(doc["seconds"], float)


def test_a_count_of_the_wrong_type_keeps_its_task(tmp_path):
    """A text count is no count (0 frames) but the task's outcomes stay in the summary."""
    target = tmp_path / "summary.json"
    target.write_text(DAMAGED["a count that is text"])
    doc = write_summary(target, _task(1, 2, ["new"]))
    assert sorted(doc["done"]) == ["new", "o"] and doc["frames"] == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_summary_that_became_a_named_pipe_does_not_hang_the_merge(tmp_path):
    """Checked as a plain file before the batch, a pipe by its end: reading it waited for a
    writer for ever (the task never ended); now it counts as no summary and is replaced."""
    target = tmp_path / "summary.json"
    os.mkfifo(target)
    done = []
    writer = threading.Thread(target=lambda: done.append(write_summary(target, _task(0, 1, ["new"]))), daemon=True)
    writer.start()
    writer.join(10)
    if not done:
        with open(target, "w"):  # let the stuck reader go
            pass
        writer.join(10)
        pytest.fail("the merge waited for a writer of the named pipe")
    assert json.loads(target.read_text())["done"] == ["new"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_or_a_linked_file_where_the_lock_goes_is_left_as_it_is(tmp_path):
    """The lock file is removed after each merge when it is empty: a named pipe (size 0) of the
    user's was locked and deleted; an empty file linked under another name lost that name too."""
    from entitysam.io.file_lock import locked

    pipe = tmp_path / ".a.lock"
    os.mkfifo(pipe)
    with pytest.raises(OSError, match="not a lock file"):
        with locked(pipe):
            pytest.fail("ran under a named pipe taken for a lock file")
    assert pipe.is_fifo()
    linked = tmp_path / ".b.lock"
    (tmp_path / "notes").touch()
    os.link(tmp_path / "notes", linked)
    with locked(linked):
        pass
    assert linked.exists()
    with locked(tmp_path / ".c.lock"):
        pass
    assert not (tmp_path / ".c.lock").exists(), "the lock's own file was left behind"
