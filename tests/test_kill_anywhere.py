"""A command stopped at any instant: Ctrl-C (SIGINT), SIGTERM (Slurm, `timeout`) or SIGKILL (the OOM
killer, a pre-empted node), then run again.

Each case runs `entitysam segment` (offline, `--overwrite`, `--online`), `eval vipseg` or a review
revision save in a child of tests/_kill_server.py, which sends the signal to the child itself at a
named point (the lock taken, the staging folder made, a file written, each rename of a commit, an
online frame, a part file...), so every instant is reached deterministically, not by timing. Then:

* SIGINT / SIGTERM: exit 130 and one line; no staging folder, journal, moved-aside result or lock
  file left; an old result that --overwrite replaced is whole, or the new one is;
* SIGKILL: nothing half-written under a result's name; the same command run again (plain,
  --skip-existing, --overwrite, --shard 0/1) recovers what was left and ends with one complete
  result and nothing else beside it; --overwrite of an old result leaves the old or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from _media import write_video
from conftest import REPO
from entitysam.io.manifest import manifest_data, read_manifest
from entitysam.io.output_lock import OutputLock

SIGNALS = ("SIGINT", "SIGTERM", "SIGKILL")
SEGMENT = ["--model", "demo", "--threads", "1", "-q"]
OFFLINE_ALL = ["panoptic/", "panoptic.json", "entities.json", "overlay.mp4"]
ONLINE_ALL = ["entities.jsonl", "panoptic/", "panoptic.json", "overlay.ts"]


@dataclass
class Run:
    rc: int
    fired: bool  # the point was reached (and the signal sent)
    log: str


class Harness:
    """The fork server (tests/_kill_server.py) and a folder for the cases."""

    def __init__(self, root: Path):
        self.root = root
        self.count = 0
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
        self.server = subprocess.Popen([sys.executable, str(REPO / "tests" / "_kill_server.py")], cwd=root,
                                       env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, *argv, point=None, signal="SIGKILL", hit=1, task="cli") -> Run:
        self.count += 1
        log, marker = self.root / f"log-{self.count}", self.root / f"marker-{self.count}"
        self.server.stdin.write(json.dumps({"task": task, "argv": [str(a) for a in argv], "cwd": str(self.root),
                                            "log": str(log), "marker": str(marker), "point": point,
                                            "signal": signal, "hit": hit}) + "\n")
        self.server.stdin.flush()
        ready, _, _ = select.select([self.server.stdout], [], [], 120)
        assert ready, f"no answer in 120 s: {argv} stopped at {point} by {signal} hangs"
        reply = self.server.stdout.readline()
        assert reply, "the fork server ended"
        return Run(json.loads(reply)["rc"], marker.exists(), log.read_text(errors="replace"))

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=30)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp("kill"))
    write_video(h.root / "clip.mp4", 2)
    yield h
    h.close()


def earlier(harness: Harness, name: str, *args) -> Path:
    """`out/clip` made once by `segment clip.mp4 -o out ARGS` (`name`: out), copied for each case."""
    out = harness.root / "earlier" / name
    if not out.exists():
        assert harness.run("segment", "clip.mp4", "-o", out, *SEGMENT, *args).rc == 0
    return out


def copy_of(out: Path, dst: Path) -> Path:
    shutil.copytree(out, dst, symlinks=True)
    return dst


def hidden(folder: Path) -> list[str]:
    """What a run leaves beside results (locks, journals, staging and moved-aside folders, temporary
    files); the summary folder of --shard aside."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".entitysam-batch") \
        if folder.is_dir() else []


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def stopped_with_one_line(run: Run) -> str:
    """SIGINT / SIGTERM: exit 130 and one `error:` line."""
    lines = [line for line in run.log.splitlines() if line.strip()]
    assert run.rc == 130 and "Traceback" not in run.log and len(lines) == 1 and lines[0].startswith("error: "), \
        (run.rc, run.log)
    return lines[0]


def check_stopped(run: Run, out: Path, sig: str) -> str | None:
    assert run.fired, run.log
    if sig == "SIGKILL":
        assert run.rc == -9, run.log
        return None
    line = stopped_with_one_line(run)
    assert hidden(out) == [], f"left behind after {sig}: {hidden(out)}"
    return line


def variants(sig: str):
    """The runs after a stop: every variant after SIGKILL (what recovery is about); after SIGINT
    and SIGTERM, which leave nothing hidden, the plain re-run and --skip-existing (SIGINT) only."""
    return {"SIGKILL": ([], ["--skip-existing"], ["--overwrite"], ["--shard", "0/1"]),
            "SIGINT": ([], ["--skip-existing"]), "SIGTERM": ([],)}[sig]


def again(harness: Harness, out: Path, cmd: list, sig: str):
    """Run `cmd` plus each variant on a copy of what the stopped run left; yields (variant, run)."""
    snapshot = out.with_name(out.name + "-left")
    if out.exists():
        shutil.copytree(out, snapshot, symlinks=True)
    for extra in variants(sig):
        shutil.rmtree(out, ignore_errors=True)
        if snapshot.exists():
            shutil.copytree(snapshot, out, symlinks=True)
        yield extra, harness.run(*cmd, *extra)
        assert hidden(out) == [], f"{extra}: left beside the result: {hidden(out)}"


# ----------------------------------------------------------------------------- offline, new result

# the points (tests/_kill_server.py) in the order a run passes them; from "manifest-staged" on a
# SIGKILL leaves a complete result (moved in by the next run), from "new-in" on a SIGINT too
FRESH = ["lock-file", "lock-held", "staging-mkdir", "staging-made", "first-png", "files-written", "manifest-staged",
         "new-in"]


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("point", FRESH)
def test_segment_stopped_anywhere_then_run_again(harness, point, sig):
    out = harness.root / f"fresh-{point}-{sig}"
    cmd = ["segment", "clip.mp4", "-o", out, *SEGMENT]
    written = point == "new-in" or (sig == "SIGKILL" and point == "manifest-staged")
    line = check_stopped(harness.run(*cmd, point=point, signal=sig), out, sig)
    if line is not None:
        assert visible(out) == (["clip"] if written else [])
        assert ("its result was written" in line) == written, line
    elif visible(out):  # never a result folder that is not complete
        assert visible(out) == ["clip"] and read_manifest(out / "clip") is not None
    for extra, run in again(harness, out, cmd, sig):
        if written and not extra:
            assert run.rc == 1 and "already holds results" in run.log, run.log
        else:
            assert run.rc == 0, (extra, run.log)
        assert visible(out) == ["clip"] and read_manifest(out / "clip")["files"] == OFFLINE_ALL


# ----------------------------------------------------------------------------- offline, --overwrite

REPLACE = ["staging-made", "files-written", "manifest-staged", "journal-written", "old-aside", "new-in",
           "journal-removed", "old-half-removed"]


def old_or_new(result: Path, old: dict[str, str]) -> str:
    """Which whole result `result` is: the old one (every byte) or a complete new one."""
    if tree(result) == old:
        return "old"
    assert read_manifest(result)["files"] == OFFLINE_ALL, tree(result)
    return "new"


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("point", REPLACE)
def test_overwrite_stopped_anywhere_keeps_the_old_or_the_new_result(harness, point, sig):
    out = copy_of(earlier(harness, "offline", "--save", "panoptic"), harness.root / f"replace-{point}-{sig}")
    cmd = ["segment", "clip.mp4", "-o", out, *SEGMENT]
    old = tree(out / "clip")
    line = check_stopped(harness.run(*cmd, "--overwrite", point=point, signal=sig), out, sig)
    if line is not None:  # the replacement was undone or completed: never between
        assert visible(out) == ["clip"]
        assert ("its result was written" in line) == (old_or_new(out / "clip", old) == "new"), line
    else:  # the journal is written before the first rename: whatever is missing, it says what to do
        assert (out / "clip").is_dir() or (out / ".clip.commit.json").is_file(), hidden(out)
    # after a SIGKILL from the journal on, the next run finishes the replacement (the new result is
    # complete); before it, the old result stays
    after_kill = "new" if REPLACE.index(point) >= REPLACE.index("journal-written") else "old"
    for extra, run in again(harness, out, cmd, sig):
        assert visible(out) == ["clip"]
        now = old_or_new(out / "clip", old)
        if extra == ["--overwrite"]:
            assert run.rc == 0 and now == "new", run.log
            continue
        if sig == "SIGKILL":
            assert now == after_kill
        if not extra:
            assert run.rc == 1 and "already holds results" in run.log, run.log
        else:  # --skip-existing, --shard: the new result answers the run, the old one (panoptic only) does not
            assert run.rc == (0 if now == "new" else 1), run.log


# ----------------------------------------------------------------------------- online

ONLINE = {"lock-held": 1, "online-folder-made": 1, "online-running": 1, "online-png": 2, "online-frame": 1,
          "online-finishing": 1}  # point: which time it is passed (online-png 2: the second frame's PNG)


def check_online(result: Path) -> dict:
    """An online result folder as a killed or stopped run leaves it: it has its manifest (a
    folder without one could never be replaced, not even with --overwrite), and the frames it counts."""
    manifest = manifest_data(result)
    assert manifest is not None and manifest["format"] == "entitysam-online", sorted(os.listdir(result))
    if manifest["status"] != "running":
        lines = (result / "entities.jsonl").read_text().splitlines()
        assert manifest["num_frames"] == len(lines) and hidden(result) == []
    return manifest


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("point", ONLINE)
def test_online_stopped_anywhere_then_run_again(harness, point, sig):
    out = harness.root / f"online-{point}-{sig}"
    cmd = ["segment", "clip.mp4", "-o", out, *SEGMENT, "--online"]
    check_stopped(harness.run(*cmd, point=point, signal=sig, hit=ONLINE[point]), out, sig)
    left = check_online(out / "clip")["status"] if visible(out) else None
    assert visible(out) in ([], ["clip"])
    for extra, run in again(harness, out, cmd, sig):
        if left is None or extra in (["--overwrite"], ["--shard", "0/1"]) or (left == "complete" and extra):
            assert run.rc == 0, (extra, run.log)  # (a shard redoes an unfinished online result)
            assert read_manifest(out / "clip")["files"] == ONLINE_ALL
        else:  # an unfinished result is replaced only on request, a complete one is kept
            assert run.rc == 1 and ("unfinished" in run.log or "already holds results" in run.log), run.log
            assert check_online(out / "clip")["status"] == left


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("point", ["old-aside", "online-folder-made", "online-running", "new-in"])
def test_online_overwrite_stopped_anywhere_keeps_a_result(harness, point, sig):
    """--online --overwrite replaces the old result once the new one has its files and manifest. A
    SIGKILL before used to leave a folder without a manifest, refused by every later run (even
    with --overwrite), and the next run deleted the old result, moved aside."""
    out = copy_of(earlier(harness, "online", "--online", "--save", "panoptic"),
                  harness.root / f"online-replace-{point}-{sig}")
    cmd = ["segment", "clip.mp4", "-o", out, *SEGMENT, "--online"]
    old = tree(out / "clip")
    check_stopped(harness.run(*cmd, "--overwrite", point=point, signal=sig), out, sig)
    for extra, run in again(harness, out, cmd, sig):
        assert visible(out) == ["clip"]
        if extra == ["--overwrite"]:
            assert run.rc == 0 and read_manifest(out / "clip")["files"] == ONLINE_ALL, run.log
        elif tree(out / "clip") != old:  # else the old result, every byte
            check_online(out / "clip")


# ----------------------------------------------------------------------------- eval vipseg


@pytest.fixture(scope="module")
def dataset(harness):
    from entitysam.data.synthetic.vipseg import make_vipseg_dataset

    return make_vipseg_dataset(harness.root / "VIPSeg", num_videos=2, num_frames=(2, 2), seed=0)


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("point, overwrite", [("eval-pngs-in", False), ("eval-part-in", False),
                                              ("eval-part-set-aside", True), ("eval-part-unlinked", True),
                                              ("old-aside", True)])
def test_eval_stopped_anywhere_then_resumed(harness, dataset, point, overwrite, sig):
    def command(output):
        return ["eval", "vipseg", "--data-root", dataset.root, "--output", output, *SEGMENT, "--workers", "1"]

    out = harness.root / f"eval-{point}-{sig}"
    cmd = command(out)
    if overwrite:
        done = harness.root / "earlier" / "eval"
        if not done.exists():
            assert harness.run(*command(done)).rc == 0
        copy_of(done, out)
    stopped = harness.run(*cmd, *(["--overwrite"] if overwrite else []), point=point, signal=sig)
    assert stopped.fired and stopped.rc == (-9 if sig == "SIGKILL" else 130), stopped.log
    if sig != "SIGKILL":
        stopped_with_one_line(stopped)
        assert [hidden(d) for d in (out, out / "parts", out / "pan_pred")] == [[], [], []]
    resumed = harness.run(*cmd)
    assert resumed.rc == 0 and (out / "metrics.json").is_file(), resumed.log
    assert sorted(os.listdir(out / "parts")) == [f"{v}.json" for v in dataset.videos]
    assert sorted(os.listdir(out / "pan_pred")) == list(dataset.videos)  # no partial, old or lock file
    assert hidden(out) == []  # (nor a temporary file of pred.json, log.json or metrics.json)


# ----------------------------------------------------------------------------- review revision


@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("point", ["lock-file", "lock-held", "staging-made", "files-written", "manifest-staged",
                                   "new-in"])
def test_revision_save_stopped_anywhere_then_saved_again(harness, point, sig):
    """The viewer's save (save_revision). SIGTERM is left out: the viewer's server (uvicorn) ends
    on it only after the requests in flight, and a Python caller without a handler dies as by SIGKILL."""
    out = copy_of(earlier(harness, "review", "--save", "panoptic,entities"), harness.root / f"revision-{point}-{sig}")
    stopped = harness.run(out / "clip", task="revision", point=point, signal=sig)
    assert stopped.fired and stopped.rc == (-9 if sig == "SIGKILL" else 130), stopped.log
    if sig == "SIGINT":
        assert hidden(out) == []
    saved = harness.run(out / "clip", task="revision")
    assert saved.rc == 0, saved.log
    revisions = [name for name in visible(out) if name != "clip"]
    assert Path(saved.log.strip()).name in revisions
    for name in revisions:  # (a SIGKILL once the revision was complete: it is moved in, the new save is the next)
        assert read_manifest(out / name)["revision"]["edits"] == 1
    # a SIGKILL between the last rename and the release left the revision's lock file: the next save
    # removes it (the old code kept it for good: no save takes the lock of a saved revision again)
    assert hidden(out) == []


# ----------------------------------------------------------------------------- waiting for a lock


@pytest.mark.parametrize("sig", SIGNALS)
def test_stopped_while_waiting_for_the_lock(harness, sig):
    """--wait-lock: stopped while another run holds the result's lock: its lock file stays, nothing
    of the stopped run does. (Passes on the old code too; the other instants of taking a lock are
    the points lock-file and lock-held above.)"""
    out = harness.root / f"wait-{sig}"
    cmd = ["segment", "clip.mp4", "-o", out, *SEGMENT, "--wait-lock"]
    holder = OutputLock.acquire(out / "clip")  # this test process is the other run
    try:
        stopped = harness.run(*cmd, point="lock-wait", signal=sig)
        assert stopped.fired and stopped.rc == (-9 if sig == "SIGKILL" else 130), stopped.log
        assert hidden(out) == [".clip.lock"] and visible(out) == []  # the holder's lock file, nothing else
    finally:
        holder.release()
    assert not out.exists()  # the holder made the folder and removed it, nothing of the stopped run in it
    assert harness.run(*cmd).rc == 0 and visible(out) == ["clip"] and hidden(out) == []
