"""A fork server for tests/test_kill_anywhere.py: runs entitysam commands in child processes and
stops each one at a chosen point with a chosen signal.

Run as a script; it reads one JSON request a line on stdin and answers one JSON line on stdout:

    {"task": "cli", "argv": [...], "cwd": DIR, "log": FILE, "point": NAME, "signal": "SIGKILL", "hit": 1,
     "marker": FILE}                  ->  {"rc": exit code (negative: killed by that signal)}

task "cli" runs ``entitysam.cli.main(argv)`` as ``python -m entitysam`` does; task "revision" opens
the result folder argv[0], labels its first entity and saves a revision (the viewer's save).
Output goes to `log`. Without "point" the command runs to its end.

Why a fork server: importing torch and entitysam takes seconds, while a run on a 2-frame clip takes
half of one. A child forked from a process that imported them (and ran no torch operation, so has
no thread to lose) is a fresh process with its own pid and memory, and the default signal handlers.

How a point is reached: the child wraps one function of the package or of ``os`` so that at the
`hit`-th time the point is passed it writes `marker` and sends the signal to itself; for SIGINT and
SIGTERM the package's own handling then runs from that instant on. Nothing in the package knows.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path

POINTS = {}


def point(name):
    def register(install):
        POINTS[name] = install
        return install
    return register


def after(owner, attr, fire, when=lambda *a, **k: True):
    """Wrap owner.attr so that `fire` is called after each call for which `when(args)` holds."""
    real = getattr(owner, attr)

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        if when(*args, **kwargs):
            fire()
        return out

    setattr(owner, attr, wrapper)


def name_of(path) -> str:
    return os.path.basename(os.fsdecode(path))


# -- the lock of a result folder (entitysam.io.output_lock)

@point("lock-file")  # the lock file created, not yet locked
def _(fire):
    after(os, "open", fire, lambda path, *a, **k: name_of(path).endswith(".lock"))


@point("lock-held")  # locked, its pid not yet written
def _(fire):
    from entitysam.io import output_lock

    real = output_lock.fcntl

    class Fcntl:
        def __getattr__(self, attr):
            return getattr(real, attr)

        @staticmethod
        def flock(fd, op):
            real.flock(fd, op)
            if op & real.LOCK_EX:
                fire()

    output_lock.fcntl = Fcntl()


@point("lock-wait")  # about to wait for a lock another run holds (--wait-lock)
def _(fire):
    from entitysam.io import output_lock

    real = output_lock.fcntl

    class Fcntl:
        def __getattr__(self, attr):
            return getattr(real, attr)

        @staticmethod
        def flock(fd, op):
            if not op & real.LOCK_NB:
                fire()
            real.flock(fd, op)

    output_lock.fcntl = Fcntl()


# -- an offline result (entitysam.io.staging)

@point("staging-made")  # the empty staging folder
def _(fire):
    from entitysam.io import staging

    after(staging.StagedOutput, "__init__", fire)


@point("staging-mkdir")  # the staging folder just made, its constructor not yet returned
def _(fire):
    after(os, "mkdir", fire, lambda path, *a, **k: ".partial-" in name_of(path))


@point("first-png")  # one PNG of panoptic/ in the staging folder
def _(fire):
    from entitysam.io import panoptic

    after(panoptic.PanopticWriter, "write_png", fire)


@point("files-written")  # every file of the result staged, no manifest yet
def _(fire):
    from entitysam.pipeline import result
    from entitysam.review import revision

    after(result, "write_result_files", fire)  # segment
    after(revision, "write_result_files", fire)  # a revision


@point("manifest-staged")  # the manifest in the staging folder: the new result is complete
def _(fire):
    from entitysam.io import staging

    after(staging, "write_json_atomic", fire, lambda path, *a, **k: name_of(path) == "manifest.json")


@point("journal-written")  # the replacement's journal, before the old result moves aside
def _(fire):
    from entitysam.io import staging

    after(staging, "write_json_atomic", fire, lambda path, *a, **k: name_of(path).endswith(".commit.json"))


@point("old-aside")  # the old result renamed to .<name>.old-* (offline and online)
def _(fire):
    after(os, "rename", fire, lambda src, dst, *a, **k: ".old-" in name_of(dst))


@point("new-in")  # the new result moved to its final name, the journal still there
def _(fire):
    from entitysam.io import staging

    after(staging, "publish_no_replace", fire)


@point("journal-removed")  # the replacement done, the old result not yet deleted
def _(fire):
    after(os, "unlink", fire, lambda path, *a, **k: name_of(path).endswith(".commit.json"))


@point("old-half-removed")  # the old result half deleted
def _(fire):
    real = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if ".old-" in name_of(path) and os.path.isdir(path):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(path, "manifest.json"))
            fire()
        return real(path, *args, **kwargs)

    shutil.rmtree = rmtree


# -- an online result (entitysam.io.stream_files)

@point("online-folder-made")  # the new folder and its open files, before its first manifest
def _(fire):
    from entitysam.io import stream_files

    real = stream_files.write_bytes_atomic

    def write(path, *args, **kwargs):
        if name_of(path) == "manifest.json":
            fire()
        return real(path, *args, **kwargs)

    stream_files.write_bytes_atomic = write


@point("online-running")  # the first manifest ("running") written
def _(fire):
    from entitysam.io import stream_files

    after(stream_files, "write_bytes_atomic", fire, lambda path, *a, **k: name_of(path) == "manifest.json")


@point("online-png")  # a frame's PNG written to its temporary file, not yet renamed
def _(fire):
    from entitysam.io import idpng

    after(idpng, "write_id_png", fire)


@point("online-frame")  # a frame's files and entities.jsonl line written
def _(fire):
    from entitysam.io import stream_files

    after(stream_files.OnlineWriter, "add", fire)


@point("online-finishing")  # panoptic.json written, the final manifest not yet
def _(fire):
    from entitysam.io import stream_files

    real = stream_files.atomic_file

    @contextlib.contextmanager
    def atomic_file(path, *args, **kwargs):
        with real(path, *args, **kwargs) as f:
            yield f
        if name_of(path) == "panoptic.json":
            fire()

    stream_files.atomic_file = atomic_file


# -- eval vipseg (entitysam.eval.runner.output): a video's PNG folder, then its part file

@point("eval-part-set-aside")  # the earlier part of a video being redone set aside (--overwrite)
def _(fire):
    after(os, "replace", fire, lambda src, dst, *a, **k: name_of(dst).endswith(".json.earlier"))


@point("eval-part-unlinked")  # the earlier part of the video removed (--overwrite)
def _(fire):
    after(os, "unlink", fire, lambda path, *a, **k: Path(os.fsdecode(path)).parent.name == "parts")


@point("eval-pngs-in")  # the video's PNG folder in place, its part still a temporary file
def _(fire):
    after(os, "rename", fire, lambda src, dst, *a, **k: Path(os.fsdecode(dst)).parent.name == "pan_pred"
          and not name_of(dst).startswith("."))


@point("eval-part-in")  # the part file in place: the video complete
def _(fire):
    after(os, "replace", fire, lambda src, dst, *a, **k: Path(os.fsdecode(dst)).parent.name == "parts")


def install(req) -> None:
    if not req.get("point"):
        return
    count = [0]
    sig = getattr(signal, req["signal"])

    def fire():
        count[0] += 1
        if count[0] == req.get("hit", 1):
            Path(req["marker"]).write_text(req["point"])
            os.kill(os.getpid(), sig)

    POINTS[req["point"]](fire)


def revision(result_dir: str) -> int:
    from entitysam.review.edits import EditSession
    from entitysam.review.result import ResultFolder
    from entitysam.review.revision import save_revision

    session = EditSession(ResultFolder.open(result_dir))
    session.apply({"op": "label", "id": min(e.id for e in session.entities), "text": "edited"})
    print(save_revision(session))
    return 0


def child(req) -> None:
    code = 70
    try:
        os.chdir(req["cwd"])
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        install(req)
        from entitysam import cli

        code = cli.main(req["argv"]) if req["task"] == "cli" else revision(*req["argv"])
    except BaseException:  # noqa: BLE001 - what a Python process would print, and its exit code
        traceback.print_exc()
        code = 1 if not isinstance(sys.exc_info()[1], KeyboardInterrupt) else 130
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main() -> None:
    import importlib

    for module in ("torch", "entitysam.cli", "entitysam.distributed.jobs", "entitysam.eval.runner.run",
                   "entitysam.io.stream_files", "entitysam.pipeline.segment", "entitysam.pipeline.stream",
                   "entitysam.review.revision"):
        importlib.import_module(module)  # once here, in every child already
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(req)
        _, status = os.waitpid(pid, 0)  # reaped: the pid of a killed child is dead at once
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
