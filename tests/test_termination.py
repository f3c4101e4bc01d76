"""SIGTERM (what `kill`, `timeout`, Slurm and `docker stop` send) ends a command as Ctrl-C does:
exit 130, one line, and nothing left behind but finished results (no staging folder, no lock)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _media import write_video
from conftest import REPO


def start(*args, python: tuple[str, ...] = ("-m", "entitysam")) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, *python, *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(proc: subprocess.Popen, ready, what: str, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert proc.poll() is None, f"ended before {what}: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    # long enough that no run ends by itself before the signals come, even on a loaded machine
    return write_video(tmp_path_factory.mktemp("term") / "clip.mp4", 200)


def test_sigterm_offline_leaves_no_staging_folder_nor_lock(clip, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    proc = start("segment", clip, "-o", out, "--checkpoint", tiny_checkpoint, "--threads", "1")
    wait_for(proc, lambda: out.is_dir() and any(".partial-" in p.name for p in out.iterdir()), "staged result")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    # the run made the output folder: it removes it again, with its staging folder and lock
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == [], "left behind: staging folder or lock"


def test_sigterm_online_finishes_the_frames_done(clip, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    proc = start("segment", clip, "-o", out, "--checkpoint", tiny_checkpoint, "--threads", "1", "--online")
    lines = out / "clip" / "entities.jsonl"
    wait_for(proc, lambda: lines.exists() and lines.read_text().count("\n") >= 2, "two frames written")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    manifest = json.loads((out / "clip" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert len(lines.read_text().splitlines()) == manifest["num_frames"] >= 2
    assert sorted(p.name for p in out.iterdir()) == ["clip"], "left behind: a lock"


def stop_repeatedly(proc: subprocess.Popen, sig: int, every: float = 0.005) -> str:
    """`sig`, then again and again until the process ends (a user pressing Ctrl-C while it cleans
    up); its stderr."""
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(sig)
        time.sleep(every)
    return proc.communicate(timeout=30)[1]


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_repeated_interrupts_while_cleaning_up(clip, tiny_checkpoint, tmp_path, online, sig):
    """The signals after the first are ignored while the run cleans up and exits: they interrupted
    the cleanup (the lock and an online manifest saying "running" were left, `Exception ignored`
    tracebacks printed), torch's finalizers (a traceback after the one-line error) or the
    interpreter's teardown (the process killed by SIGINT instead of exit code 130)."""
    out = tmp_path / "out"
    proc = start("segment", clip, "-o", out, "--checkpoint", tiny_checkpoint, "--threads", "1",
                 *(["--online"] if online else []))
    lines = out / "clip" / "entities.jsonl"
    wait_for(proc, (lambda: lines.exists() and lines.read_text().count("\n") >= 2) if online else
             (lambda: out.is_dir() and any(".partial-" in p.name for p in out.iterdir())), "frames under way")
    err = stop_repeatedly(proc, sig)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    if online:
        assert json.loads((out / "clip" / "manifest.json").read_text())["status"] == "interrupted"
        assert sorted(p.name for p in out.iterdir()) == ["clip"], "left behind: a lock"
    else:
        assert not out.exists() or sorted(p.name for p in out.iterdir()) == [], "left behind: staging folder or lock"


# `python -m entitysam` whose every return of a signal to its default handler takes 0.3 s: the
# instant between the command's end and the exit's shield, stretched as a loaded machine may.
WITH_SLOW_DEFAULTS = """
import runpy, signal, sys, time
set_handler = signal.signal
def slowly(sig, handler):
    before = set_handler(sig, handler)
    if handler in (signal.SIG_DFL, signal.default_int_handler):
        time.sleep(0.3)
    return before
signal.signal = slowly
runpy.run_module('entitysam', run_name='__main__', alter_sys=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_repeated_interrupts_as_the_command_ends(clip, tiny_checkpoint, tmp_path, sig):
    """Between the command's end and the exit's shield the signals went back to their defaults for
    an instant: a repeated SIGTERM landing there killed the process (-15, once in a CI run under
    load) and a repeated Ctrl-C printed a KeyboardInterrupt traceback."""
    out = tmp_path / "out"
    proc = start("segment", clip, "-o", out, "--checkpoint", tiny_checkpoint, "--threads", "1",
                 python=("-c", WITH_SLOW_DEFAULTS))
    wait_for(proc, lambda: out.is_dir() and any(".partial-" in p.name for p in out.iterdir()), "frames under way")
    err = stop_repeatedly(proc, sig)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
