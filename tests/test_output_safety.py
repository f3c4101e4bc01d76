"""Result folders: --overwrite only replaces what entitysam wrote and never an input; result names
are one safe path component; replacing a result is crash-safe (a kill at any instant leaves the
old or the new result, recovered by the next run); one run per result folder (OS lock);
--save-logits FILE never deletes or silently replaces files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from _media import scene, write_frames, write_video
from entitysam import cli
from entitysam.errors import OutputError
from entitysam.io import paths, staging
from entitysam.io.atomic import atomic_file
from entitysam.io.manifest import MANIFEST, read_manifest
from entitysam.io.output_lock import OutputLock, OutputLockedError
from entitysam.io.paths import UnsafeOverwriteError, safe_name
from entitysam.io.staging import StagedOutput, recover_output


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(*args):
    return cli.main(["segment", *map(str, args)])


def tree(path):
    """Every file under `path` with its bytes (to show nothing changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def still(path):
    Image.fromarray(scene(2)).save(path)
    return path


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize("raw, expected", [(".", "_"), ("..", "_"), ("", "_"), ("a/b", "a_b"), ("a\\b", "a_b"),
                                           ("a\x00b", "a_b"), ("x\x01\x1fy\x7f", "x__y_"), (".hidden", "_hidden"),
                                           ("clip", "clip"), ("vidéo 1", "vidéo 1")])
def test_safe_name(raw, expected):
    assert safe_name(raw) == expected


def test_safe_name_bounds_bytes_and_keeps_long_names_distinct():
    a, b = "é" * 200 + "a", "é" * 200 + "b"
    sa, sb = safe_name(a), safe_name(b)
    assert len(sa.encode()) <= paths.MAX_NAME_BYTES and len(sb.encode()) <= paths.MAX_NAME_BYTES
    assert sa != sb and sa.startswith("é" * 50)


def test_dotdot_video_does_not_write_into_the_output_root(tmp_path, tiny_checkpoint):
    video = write_video(tmp_path / "..mp4", 2)
    out = tmp_path / "out"
    assert run(video, "-o", out, "--checkpoint", tiny_checkpoint, "--save", "panoptic", "-q") == 0
    assert sorted(p.name for p in out.iterdir()) == ["_"]
    assert read_manifest(out / "_") is not None


def test_250_byte_name_works_and_leaves_no_empty_folder(tmp_path, tiny_checkpoint):
    name = "v" * 250
    image = still(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    assert run(image, "-o", out, "--checkpoint", tiny_checkpoint, "--save", "panoptic", "-q") == 0
    [result] = list(out.iterdir())
    assert len(result.name.encode()) <= paths.MAX_NAME_BYTES and read_manifest(result) is not None


def test_inputs_that_sanitise_to_one_name_are_refused(tmp_path, tiny_checkpoint, capsys):
    a = still(tmp_path / "a.png").rename(tmp_path / "a\x01.png")  # both become "a_"
    b = still(tmp_path / "a_.png")
    assert run(a, b, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "-q") == 2
    assert "would both write to" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_input_given_twice_is_said_to_be_given_twice(tmp_path, tiny_checkpoint, capsys):
    """The same file named twice (a shell pattern and the name, a batch folder and one of its videos)
    was told to "rename one", which would segment it twice."""
    a = still(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    other = tmp_path / "sub" / ".." / "a.png"
    for again, words in ((a, f"{a} is given twice: name each input once"), (other, f"{a} is given twice (as {other})")):
        assert run(a, again, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "-q") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and "rename" not in err
    # a folder of frames or a video and a link to it: named by the link, they were segmented twice
    write_frames(tmp_path / "frames", ["0"])
    write_video(tmp_path / "v.mp4", 2)
    for target in (tmp_path / "frames", tmp_path / "v.mp4"):
        link = tmp_path / f"link-{target.name}"
        link.symlink_to(target)
        assert run(target, link, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "-q") == 2
        assert f"{target} is given twice (as {link}): name each input once" in capsys.readouterr().err
    # a stream's URL twice: no file to compare, the same words (it was told to rename one)
    url = "rtsp://127.0.0.1:1/cam"
    assert run(url, url, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "-q", "--online") == 2
    assert f"{url} is given twice: name each input once" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("first, second", [("Clip", "clip"), ("e\u0301t\u00e9", "\u00e9te\u0301")])
def test_names_one_folder_where_case_or_normalisation_is_ignored_are_refused(tmp_path, tiny_checkpoint, capsys,
                                                                              first, second):
    """macOS, Windows, exFAT and ext4 casefold folders give `Clip` and `clip` (or an accented letter
    composed and decomposed) one folder: the second video then failed, naming this run's own pid as
    another run writing it, or, with --wait-lock, waited for its own lock for ever (with --shard,
    one at a time, it was skipped as complete or replaced the first one's result)."""
    from entitysam.distributed.jobs import SegmentOptions
    from entitysam.distributed.ray_runner import make_jobs
    from entitysam.errors import SourceError

    a, b = still(tmp_path / f"{first}.png"), still(tmp_path / f"{second}.png")
    assert run(a, b, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "--wait-lock", "-q") == 2
    err = capsys.readouterr().err
    assert "would both write to" in err and "ignores case or Unicode normalisation" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SourceError, match="would both write to the result"):
        make_jobs([a, b], SegmentOptions())


# ----------------------------------------------------------------------------- --overwrite


def test_overwrite_never_deletes_the_input_folder(tmp_path, capsys):
    frames = write_frames(tmp_path / "frames", ["0", "1"])
    before = tree(tmp_path)
    # checkpoint "missing.pth": exit 2 (not 1) shows the refusal comes before loading the model
    for extra in ([], ["--online"]):
        assert run(frames, "-o", tmp_path, "--overwrite", "--checkpoint", tmp_path / "missing.pth", *extra) == 2
        err = capsys.readouterr().err
        assert "refusing to replace it (even when overwriting)" in err and "is the input" in err
        assert tree(tmp_path) == before


def test_overwrite_never_deletes_batch_inputs(tmp_path, capsys):
    batch = tmp_path / "batch"
    write_frames(batch / "a", ["0", "1"])
    write_frames(batch / "b", ["0", "1"])
    before = tree(batch)
    assert run("--batch", batch, "-o", batch, "--overwrite", "--checkpoint", tmp_path / "missing.pth") == 2
    assert "is the input" in capsys.readouterr().err
    assert tree(batch) == before


def test_overwrite_refuses_folders_entitysam_did_not_write(tmp_path, tiny_checkpoint, capsys):
    image = still(tmp_path / "still.png")
    mine = tmp_path / "out" / "still"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    (mine / MANIFEST).write_text(json.dumps({"complete": True}))  # a manifest, but not ours
    assert run(image, "-o", tmp_path / "out", "--overwrite", "--checkpoint", tiny_checkpoint, "-q") == 2
    assert "was not written by entitysam" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_overwrite_refuses_a_result_folder_holding_an_input(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "out"
    assert run(still(tmp_path / "still.png"), "-o", out, "--checkpoint", tiny_checkpoint, "--save", "panoptic", "-q") == 0
    inner = still(out / "still" / "still.png")  # the user keeps the input inside the old result
    assert run(inner, "-o", out, "--overwrite", "--checkpoint", tiny_checkpoint, "-q") == 2
    assert "contains the input" in capsys.readouterr().err
    assert inner.is_file()


def test_overwrite_replaces_an_earlier_result(tmp_path, tiny_checkpoint):
    image = still(tmp_path / "still.png")
    out = tmp_path / "out"
    assert run(image, "-o", out, "--checkpoint", tiny_checkpoint, "--save", "entities", "-q") == 0
    assert run(image, "-o", out, "--checkpoint", tiny_checkpoint, "--save", "panoptic", "--overwrite", "-q") == 0
    assert sorted(p.name for p in (out / "still").iterdir()) == [MANIFEST, "panoptic", "panoptic.json"]
    assert sorted(p.name for p in out.iterdir()) == ["still"]  # no lock, journal or staging left


@pytest.mark.parametrize("mode", [[], ["--online"]])
@pytest.mark.parametrize("mine, shown", [("my_notes.txt", "my_notes.txt"), ("sub/notes.txt", "sub/"),
                                         ("panoptic/notes.txt", "panoptic/notes.txt"),
                                         ("panoptic/sub/x.png", "panoptic/sub/"), ("entities.json", "entities.json")])
def test_overwrite_refuses_a_result_holding_files_it_did_not_write(tmp_path, tiny_checkpoint, capsys, mode, mine,
                                                                   shown):
    """A user's file or folder inside an old result (for "entities.json": one that --save panoptic
    did not write) makes --overwrite refuse, before any work, and leaves everything in place."""
    image = still(tmp_path / "still.png")
    out = tmp_path / "out"
    assert run(image, "-o", out, "--checkpoint", tiny_checkpoint, "--save", "panoptic", "-q", *mode) == 0
    (out / "still" / mine).parent.mkdir(parents=True, exist_ok=True)
    (out / "still" / mine).write_text("mine")
    before = tree(out)
    # checkpoint "missing.pth": exit 2 from the refusal, not from loading the model
    assert run(image, "-o", out, "--overwrite", "--checkpoint", tmp_path / "missing.pth", "-q", *mode) == 2
    err = capsys.readouterr().err
    assert f"holds files entitysam did not write ({out / 'still'}/{shown})" in err, err
    assert "move them away" in err and len(err.strip().splitlines()) == 1
    assert tree(out) == before
    moved = out / "still" / shown
    shutil.rmtree(moved) if moved.is_dir() else moved.unlink()  # moved away: the old result is replaced again
    assert run(image, "-o", out, "--overwrite", "--checkpoint", tiny_checkpoint, "-q", *mode) == 0
    assert read_manifest(out / "still") is not None


def test_overwrite_refuses_a_user_file_that_appears_during_the_run(tmp_path, tiny_checkpoint, monkeypatch):
    from entitysam.errors import OutputError
    from entitysam import EntitySAM

    image = still(tmp_path / "still.png")
    assert run(image, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "--save", "panoptic", "-q") == 0
    final = tmp_path / "out" / "still"
    with EntitySAM.from_checkpoint(tiny_checkpoint).segment(image) as result:
        real = result.write_into

        def write_into(directory, *args, **kwargs):
            (final / "late.txt").write_text("mine")  # the user adds a file while the run writes
            return real(directory, *args, **kwargs)

        monkeypatch.setattr(result, "write_into", write_into)
        with pytest.raises(UnsafeOverwriteError, match="late.txt"):
            result.save(final, formats="panoptic", overwrite=True)
    assert (final / "late.txt").read_text() == "mine" and read_manifest(final) is not None
    assert sorted(p.name for p in final.parent.iterdir()) == ["still"]  # no staging folder left
    assert issubclass(UnsafeOverwriteError, OutputError)


def test_api_save_refuses_to_replace_its_own_input(tmp_path, tiny_checkpoint):
    from entitysam import EntitySAM

    frames = write_frames(tmp_path / "frames", ["0"])
    model = EntitySAM.from_checkpoint(tiny_checkpoint)
    with model.segment(frames) as result:
        (frames / MANIFEST).write_text(json.dumps({"format": "entitysam-segment", "complete": True}))
        with pytest.raises(UnsafeOverwriteError, match="is the input"):
            result.save(frames, formats=["panoptic"], overwrite=True)
    assert (frames / "0.jpg").is_file()


# ----------------------------------------------------------------------------- --save-logits FILE


def test_save_logits_file_rules(tmp_path, tiny_checkpoint, capsys):
    image = still(tmp_path / "still.png")
    out = tmp_path / "out"
    common = [image, "-o", out, "--checkpoint", tiny_checkpoint, "--save", "panoptic", "-q"]
    # a missing folder is not created
    assert run(*common, "--save-logits", tmp_path / "nowhere" / "l.npz") == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()
    # an existing file is not replaced without --overwrite
    existing = tmp_path / "l.npz"
    existing.write_bytes(b"precious")
    assert run(*common, "--save-logits", existing) == 2
    assert "already exists: use --overwrite" in capsys.readouterr().err and existing.read_bytes() == b"precious"
    # a file inside the result folder (replaced as a whole) is refused
    assert run(*common) == 0
    inside = out / "still" / "mine.npz"
    inside.write_bytes(b"mine")
    assert run(*common, "--overwrite", "--save-logits", inside) == 2  # (a file of yours: the folder is refused)
    assert "holds files entitysam did not write" in capsys.readouterr().err and inside.read_bytes() == b"mine"
    inside.unlink()
    assert run(*common, "--overwrite", "--save-logits", inside) == 2
    assert "lies inside the result folder" in capsys.readouterr().err and not inside.exists()
    # with --overwrite an existing plain file is replaced
    assert run(*common, "--overwrite", "--save-logits", existing) == 0
    assert existing.read_bytes()[:2] == b"PK"


def test_save_logits_removes_what_a_killed_write_left_but_not_a_live_one(tmp_path, tiny_checkpoint):
    """A run killed (SIGKILL) while writing --save-logits FILE left its temporary file, as large as
    the logits, hidden beside FILE for good: the next write in that folder removes it, unless a
    process holds its lock (a writer on another machine sharing the folder: its pid, dead here,
    says nothing)."""
    import fcntl

    folder = tmp_path / "logits"
    folder.mkdir()
    dead = folder / ".entitysam-partial-999999999-0123456789ab"
    dead.write_bytes(b"PK" + bytes(1000))
    elsewhere = folder / ".entitysam-partial-999999998-0123456789ab"
    elsewhere.write_bytes(b"PK")
    with open(elsewhere, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert run(still(tmp_path / "still.png"), "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint,
                   "--save", "panoptic", "-q", "--save-logits", folder / "l.npz") == 0
    assert sorted(p.name for p in folder.iterdir()) == [elsewhere.name, "l.npz"]


# ----------------------------------------------------------------------------- crash-safe replacement


class Kill(BaseException):
    """Stands for SIGKILL at one instant: nothing after it runs in the process."""


def _result(final, text):
    with StagedOutput(final, overwrite=True) as s:
        (s.path / "entities.json").write_text(text)
        s.commit({"video": "vid"})


KILL_POINTS = ["journal-before", "journal-after", "rename-1", "rename-2", "journal-unlink", "rmtree-old"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_at_any_point_of_a_replacement_then_recover(tmp_path, monkeypatch, point):
    final = tmp_path / "out" / "vid"
    _result(final, "old")
    real_rename, real_journal, real_rmtree = os.rename, staging._write_journal, staging.shutil.rmtree
    renames = []

    def rename(a, b):
        renames.append(a)
        if point == f"rename-{len(renames)}":
            real_rename(a, b)
            raise Kill  # killed right after the k-th rename
        real_rename(a, b)

    def journal(path, data):
        if point == "journal-before":
            raise Kill
        real_journal(path, data)
        if point == "journal-after":
            raise Kill

    def fsync_dir(path):
        if point == "journal-unlink" and len(renames) >= 2:
            raise Kill  # after both renames, before the journal goes

    def rmtree(path, *a, **k):
        if point == "rmtree-old" and ".old-" in str(path):
            raise Kill
        real_rmtree(path, *a, **k)

    monkeypatch.setattr(staging.os, "rename", rename)
    monkeypatch.setattr(staging, "publish_no_replace", rename)  # the new result's move in (no-replace rename)
    monkeypatch.setattr(staging, "_write_journal", journal)
    monkeypatch.setattr(staging, "fsync_dir", fsync_dir)
    monkeypatch.setattr(staging.shutil, "rmtree", rmtree)
    # a kill runs no clean-up: only the OS lock goes (with the process)
    monkeypatch.setattr(StagedOutput, "_roll_back", lambda self, old: self._lock.release())
    staged = StagedOutput(final, overwrite=True)
    (staged.path / "entities.json").write_text("new")
    with pytest.raises(Kill):
        staged.commit({"video": "vid"})
    monkeypatch.undo()
    staging._ACTIVE_STAGING.clear()  # the killed process's memory is gone too
    visible = (final / "entities.json").read_text() if final.is_dir() else None
    assert visible in ("old", "new", None)
    recover_output(final)
    assert read_manifest(final) is not None
    expected = "old" if point in ("journal-before",) else "new"
    assert (final / "entities.json").read_text() == expected
    assert sorted(p.name for p in final.parent.iterdir()) == ["vid"]  # no journal, staging or old left
    _result(final, "next")  # and the next run works normally
    assert (final / "entities.json").read_text() == "next"


def test_temporary_journals_of_a_killed_write_are_removed(tmp_path):
    """A journal write killed before its rename leaves a temporary file: io.atomic's name and the
    name older versions used are both cleaned by the next run."""
    parent = tmp_path / "out"
    _result(parent / "vid", "data")
    (parent / "..vid.commit.json.tmp-999999999-abc123").write_text("{")
    (parent / ".vid.commit.json.tmp-999999999").write_text("{")
    recover_output(parent / "vid")
    assert sorted(p.name for p in parent.iterdir()) == ["vid"]


def test_a_temporary_file_being_written_elsewhere_is_not_taken_for_a_killed_runs(tmp_path, monkeypatch):
    """Each run on a result removes the temporary files (`.entitysam-tmp-<pid>-<hex>`) in the output
    folder whose pid is no process here: on a file system shared by several machines (shards) that
    deleted another machine's journal while it was written, failing its replacement. Temporary
    files are written locked, and a locked one is kept."""
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(staging, "pid_alive", lambda pid: False)  # as on another machine
    with atomic_file(out / ".vid.commit.json", "w") as f:
        f.write("{}")
        recover_output(out / "other")
        assert len(list(out.glob(".entitysam-tmp-*"))) == 1
    assert json.loads((out / ".vid.commit.json").read_text()) == {} and not list(out.glob(".entitysam-tmp-*"))


@pytest.mark.parametrize("pid", [os.getppid(), os.getpid()], ids=["parent", "this process"])
def test_a_killed_runs_temporary_file_is_removed_whatever_its_pid_is_here(tmp_path, pid):
    """On an output folder shared by several machines, a temporary file left by a run killed on
    another one is named with that machine's pid, alive here maybe (this very process's, pid 1
    in containers): it was kept for good. Nobody holds its lock: it is a dead run's."""
    out = tmp_path / "out"
    out.mkdir()
    dead = out / f".entitysam-tmp-{pid}-0123456789ab"
    dead.write_text("{")
    recover_output(out / "other")
    assert not dead.exists()


def _temp_files_of_a_dead_and_a_live_pid(out):
    """Temporary files in the new folder `out` named with a pid of no process and one alive here."""
    out.mkdir()
    dead, live = out / ".entitysam-tmp-999999999-0123456789ab", out / f".entitysam-tmp-{os.getppid()}-0123456789ab"
    dead.write_text("{")
    live.write_text("{")
    return dead, live


def test_without_flock_the_pid_here_decides(tmp_path, monkeypatch):
    """Where the file system has no flock, a temporary file whose pid is no process here is a
    killed run's (it was kept for good: its lock could not be told); one of a live pid is kept."""
    import errno

    from entitysam.io import atomic

    class NoFlock:
        LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = 1, 2, 4, 8

        @staticmethod
        def flock(fd, op):
            raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(atomic, "fcntl", NoFlock)
    out = tmp_path / "out"
    dead, live = _temp_files_of_a_dead_and_a_live_pid(out)
    staging.remove_dead_temp_files(out)
    assert not dead.exists() and live.exists()


@pytest.mark.parametrize("code", ["ENOLCK", "EOPNOTSUPP", "EIO"])
def test_a_result_folders_lock_where_the_file_system_has_no_flock(tmp_path, tiny_checkpoint, monkeypatch, code):
    """A file system without flock (some network ones): taking a result folder's lock was an
    OSError traceback (segment, eval, training). The run goes on unlocked, as where the OS has no
    flock, and leaves no lock file; another failure of flock is one OutputError."""
    import errno
    import fcntl

    from entitysam.errors import OutputError
    from entitysam.io import output_lock

    class NoFlock:
        LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = fcntl.LOCK_SH, fcntl.LOCK_EX, fcntl.LOCK_NB, fcntl.LOCK_UN

        @staticmethod
        def flock(fd, op):
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(output_lock, "fcntl", NoFlock)
    final = tmp_path / "out" / "clip"
    if code == "EIO":
        with pytest.raises(OutputError, match=r"the lock file .*\.clip\.lock"):
            OutputLock.acquire(final)
        assert not (tmp_path / "out").exists()
        return
    lock = OutputLock.acquire(final)
    assert not OutputLock.held(final) and sorted(p.name for p in (tmp_path / "out").iterdir()) == []
    lock.release()
    assert not (tmp_path / "out").exists()  # (the folder it made, empty, is removed)


def _as_on_another_machine(monkeypatch):
    """Every pid is dead here, as a writer's is to a run on another machine sharing the folder."""
    from entitysam.io import atomic

    monkeypatch.setattr(staging, "pid_alive", lambda pid: False)
    monkeypatch.setattr(atomic, "pid_alive", lambda pid: False, raising=False)


def test_a_temporary_file_stays_locked_until_it_is_published(tmp_path, monkeypatch):
    """The file was unlocked once closed, before its rename into place: a run cleaning up the
    folder then (on another machine, where its pid says nothing) deleted it, and the rename failed."""
    out = tmp_path / "out"
    out.mkdir()
    _as_on_another_machine(monkeypatch)
    rename = os.replace

    def cleanup_first(src, dst, *args, **kwargs):
        staging.remove_dead_temp_files(out)  # another run's cleanup, at the worst moment
        return rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", cleanup_first)
    with atomic_file(out / "summary.json", "w") as f:
        f.write("{}")
    assert (out / "summary.json").read_text() == "{}" and sorted(os.listdir(out)) == ["summary.json"]


def test_save_logits_keeps_its_temporary_file_locked_until_published(tmp_path, monkeypatch):
    import numpy as np

    from entitysam.io.logits import save_logits_npz

    _as_on_another_machine(monkeypatch)
    rename = os.replace

    def cleanup_first(src, dst, *args, **kwargs):
        staging.remove_dead_temp_files(tmp_path, "partial")
        return rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", cleanup_first)
    save_logits_npz(tmp_path / "l.npz", np.zeros((2, 3, 4, 4), np.float16), np.ones(3, np.float32))
    assert np.load(tmp_path / "l.npz")["logits"].shape == (2, 3, 4, 4)
    assert sorted(os.listdir(tmp_path)) == ["l.npz"]


def test_a_temporary_file_removed_before_its_writer_locked_it_is_made_again(tmp_path, monkeypatch):
    """Between its creation and its lock, a temporary file is unlocked: another run's cleanup could
    remove it there, and the writer wrote into a removed file whose rename then failed."""
    import fcntl

    from entitysam.io import atomic

    out = tmp_path / "out"
    out.mkdir()
    _as_on_another_machine(monkeypatch)
    cleanups = []

    class Racing:
        LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = fcntl.LOCK_SH, fcntl.LOCK_EX, fcntl.LOCK_NB, fcntl.LOCK_UN

        @staticmethod
        def flock(fd, op):
            if op & fcntl.LOCK_EX and not cleanups:  # the writer's lock, the first time
                cleanups.append(staging.remove_dead_temp_files(out))
            return fcntl.flock(fd, op)

    monkeypatch.setattr(atomic, "fcntl", Racing)
    with atomic_file(out / "summary.json", "w") as f:
        f.write("{}")
    assert cleanups and (out / "summary.json").read_text() == "{}" and sorted(os.listdir(out)) == ["summary.json"]


def test_leftovers_of_older_versions_are_recovered(tmp_path):
    """A run of the previous version killed between its two renames left the old result in
    `.old-` and the complete new one in `.partial-`, and no journal: the new one is moved in."""
    parent = tmp_path / "out"
    _result(parent / "tmp", "new")
    (parent / "tmp").rename(parent / ".vid.partial-999999999-aaaa")
    _result(parent / "tmp", "old")
    (parent / "tmp").rename(parent / ".vid.old-999999999-bbbb")
    assert "moved in the complete result" in recover_output(parent / "vid")
    assert (parent / "vid" / "entities.json").read_text() == "new"
    assert sorted(p.name for p in parent.iterdir()) == ["vid"]
    # only the moved-aside old result left: it is put back
    (parent / "vid").rename(parent / ".vid.old-999999999-cccc")
    assert "restored the previous result" in recover_output(parent / "vid")
    assert (parent / "vid" / "entities.json").read_text() == "new"


def test_cli_recovers_a_killed_replacement_before_running(tmp_path, tiny_checkpoint, capsys):
    image = still(tmp_path / "still.png")
    out = tmp_path / "out"
    assert run(image, "-o", out, "--checkpoint", tiny_checkpoint, "--save", "panoptic", "-q") == 0
    # killed between the renames: result missing, journal + old + complete new left
    (out / "still").rename(out / ".still.partial-999999999-aaaa")
    staging._write_journal(out / ".still.commit.json", {"old": ".still.old-999999999-bbbb",
                                                         "new": ".still.partial-999999999-aaaa"})
    assert run(image, "-o", out, "--checkpoint", tiny_checkpoint, "--save", "panoptic", "--skip-existing") == 0
    err = capsys.readouterr().err
    assert "finished replacing the result" in err and "skipped, complete results" in err
    assert sorted(p.name for p in out.iterdir()) == ["still"]


# ----------------------------------------------------------------------------- one run per folder

HOLDER = """
import sys
from entitysam.io.output_lock import OutputLock
lock = OutputLock.acquire(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()  # hold until the test closes stdin (or kills us)
"""


def _hold_lock(final):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(final)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_fails_fast_naming_the_other_process(tmp_path, tiny_checkpoint, capsys):
    image = still(tmp_path / "still.png")
    holder = _hold_lock(tmp_path / "out" / "still")
    try:
        t0 = time.monotonic()
        assert run(image, "-o", tmp_path / "out", "--checkpoint", tmp_path / "missing.pth") == 1
        err = capsys.readouterr().err
        assert f"being written by another entitysam run (pid {holder.pid}" in err and "--wait-lock" in err
        assert "checkpoint" not in err.split("lock file")[0] and time.monotonic() - t0 < 30
        with pytest.raises(OutputLockedError):
            StagedOutput(tmp_path / "out" / "still")
    finally:
        holder.kill()
        holder.wait()
    # killed holder: the OS released its lock
    with StagedOutput(tmp_path / "out" / "still") as s:
        s.commit({"video": "still"})


def test_a_run_on_another_machine_is_named_with_its_host(tmp_path, tiny_checkpoint, capsys):
    """An output folder shared by several machines: the message named only the holder's pid,
    which on this machine is some other process (one could kill the wrong one). The lock file
    holds the host too, named when it is not this one."""
    import socket

    image = still(tmp_path / "still.png")
    holder = _hold_lock(tmp_path / "out" / "still")
    lock_file = tmp_path / "out" / ".still.lock"
    try:
        assert lock_file.read_text().split() == [str(holder.pid), socket.gethostname()]
        lock_file.write_text("4242 node17\n")  # as a run on node17 writes it
        assert run(image, "-o", tmp_path / "out", "--checkpoint", tmp_path / "missing.pth") == 1
        assert "(pid 4242 on node17, lock file" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_wait_lock_waits_for_the_other_run(tmp_path, tiny_checkpoint):
    image = still(tmp_path / "still.png")
    holder = _hold_lock(tmp_path / "out" / "still")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    waiter = subprocess.Popen([sys.executable, "-m", "entitysam", "segment", str(image), "-o", str(tmp_path / "out"),
                               "--checkpoint", str(tiny_checkpoint), "--save", "panoptic", "--wait-lock", "--threads", "1"],
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = waiter.stderr.readline()  # printed before it blocks on the lock
        assert f"pid {holder.pid}); waiting" in first
        time.sleep(1)
        assert waiter.poll() is None  # still waiting
        holder.stdin.close()  # the other run ends
        holder.wait(timeout=30)
        _, err = waiter.communicate(timeout=300)
        assert waiter.returncode == 0, err
        assert read_manifest(tmp_path / "out" / "still") is not None
    finally:
        for p in (holder, waiter):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


def _segment_waiting(images, out, checkpoint):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-m", "entitysam", "segment", *map(str, images), "-o", str(out),
                             "--checkpoint", str(checkpoint), "--save", "panoptic", "--wait-lock", "--threads", "1"],
                            stderr=subprocess.PIPE, text=True, env=env)


def test_a_run_waiting_for_a_lock_holds_none_that_sorts_after_it(tmp_path, tiny_checkpoint):
    """`segment b a --wait-lock` took b's lock, then waited for a's while holding b: a second run
    `segment a b --wait-lock` that got a would wait for b, and both waited forever. Every run now
    takes its locks in one order (a before b), so while it waits for a it holds nothing."""
    a, b = still(tmp_path / "a.png"), still(tmp_path / "b.png")
    out = tmp_path / "out"
    holder = _hold_lock(out / "a")
    waiter = _segment_waiting([b, a], out, tiny_checkpoint)
    try:
        assert f"pid {holder.pid}); waiting" in waiter.stderr.readline()
        with OutputLock.acquire(out / "b"):  # free: the waiting run does not hold it
            pass
        holder.stdin.close()
        holder.wait(timeout=30)
        _, err = waiter.communicate(timeout=300)
        assert waiter.returncode == 0, err
        assert read_manifest(out / "a") is not None and read_manifest(out / "b") is not None
    finally:
        for p in (holder, waiter):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


def test_two_waiting_runs_over_the_same_videos_in_opposite_orders_both_finish(tmp_path, tiny_checkpoint):
    images = [still(tmp_path / f"{name}.png") for name in ("a", "b", "c", "d")]
    out = tmp_path / "out"
    runs = [_segment_waiting(images, out, tiny_checkpoint), _segment_waiting(images[::-1], out, tiny_checkpoint)]
    try:
        for proc in runs:
            _, err = proc.communicate(timeout=300)
            # the second run to get a lock finds a complete result: without --skip-existing it fails, once
            assert proc.returncode in (0, 1), err
            assert "Traceback" not in err
    finally:
        for p in runs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
    assert all(read_manifest(out / name) is not None for name in "abcd")


def test_lock_is_reentrant_and_leaves_no_file(tmp_path):
    final = tmp_path / "out" / "vid"
    with OutputLock.acquire(final):
        with StagedOutput(final) as s:  # the same process may take it again
            s.commit({"video": "vid"})
        assert (tmp_path / "out" / ".vid.lock").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["vid"]


def test_api_save_logits_needs_an_existing_folder(tmp_path, tiny_checkpoint):
    from entitysam import EntitySAM
    from entitysam.errors import OutputError

    model = EntitySAM.from_checkpoint(tiny_checkpoint)
    with pytest.raises(OutputError, match="does not exist"):
        model.segment(still(tmp_path / "still.png"), save_logits=tmp_path / "nowhere" / "l.npz")
    assert not (tmp_path / "nowhere").exists()


def test_many_locks_raise_the_open_file_limit(tmp_path):
    """A batch run holds one lock per video: more videos than the soft open-file limit still work."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 400:
        pytest.skip("hard open-file limit too low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    locks = []
    try:
        for i in range(300):
            locks.append(OutputLock.acquire(tmp_path / f"v{i}"))
    finally:
        for lock in locks:
            lock.release()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert list(tmp_path.iterdir()) == []


def test_file_or_symlink_at_the_result_path_is_never_replaced(tmp_path, capsys):
    image = still(tmp_path / "still.png")
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / MANIFEST).write_text(json.dumps({"format": "entitysam-segment", "complete": True}))
    (out / "still").symlink_to(target)
    assert run(image, "-o", out, "--overwrite", "--checkpoint", tmp_path / "missing.pth") == 2
    assert "is a symbolic link" in capsys.readouterr().err and (target / MANIFEST).is_file()
    (out / "still").unlink()
    (out / "still").write_text("a file of mine")
    assert run(image, "-o", out, "--overwrite", "--checkpoint", tmp_path / "missing.pth") == 2
    assert run(image, "-o", out, "--checkpoint", tmp_path / "missing.pth") == 1
    assert "exists and is not a folder" in capsys.readouterr().err
    assert (out / "still").read_text() == "a file of mine"


def test_names_with_other_scripts_digits_are_not_taken_for_leftovers(tmp_path):
    """`.<name>.partial-<pid>-<hex>` with "²" as the pid: str.isdigit() took it and int() then raised,
    so one oddly named file beside the results stopped every run there. Not a leftover: kept."""
    parent = tmp_path / "out"
    odd = parent / ".vid.partial-\u00b2-aa"
    odd.mkdir(parents=True)
    assert recover_output(parent / "vid") is None
    assert odd.is_dir()


# ----------------------------------------------------------------------------- never replaced without --overwrite


def test_save_logits_file_appearing_during_the_run_is_never_replaced(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    """Two runs given one --save-logits FILE at once: FILE is checked at the start and published at
    the end; one that appears in between (the other run's) is not replaced without --overwrite:
    this run fails in one line and leaves nothing (no result, no temporary file)."""
    from entitysam.pipeline import segment as pipeline_segment

    image = still(tmp_path / "still.png")
    target, out = tmp_path / "l.npz", tmp_path / "out"
    real = pipeline_segment.save_logits_npz

    def other_run_finishes_first(path, *args, **kwargs):
        target.write_bytes(b"the other run's logits")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pipeline_segment, "save_logits_npz", other_run_finishes_first)
    common = [image, "-o", out, "--checkpoint", tiny_checkpoint, "--save", "panoptic", "-q", "--save-logits", target]
    assert run(*common) == 1
    err = capsys.readouterr().err
    assert "appeared while this run wrote it" in err and len(err.strip().splitlines()) == 1, err
    assert target.read_bytes() == b"the other run's logits"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.npz", "still.png"]  # no result, no temporary file
    assert run(*common, "--overwrite") == 0  # --overwrite keeps replacing it (atomically)
    assert target.read_bytes()[:2] == b"PK"


@pytest.mark.parametrize("stage", ["merge", "writing", "commit interrupted"])
def test_a_failed_video_leaves_no_save_logits_file(tmp_path, tiny_checkpoint, capsys, monkeypatch, stage):
    """FILE is written once the video is tracked, before the merge and the result files: a failure
    after it (a full disk while writing the overlay, a Ctrl-C or SIGTERM) left FILE without a
    result, and every re-run failed on it ("already exists", exit 2; a resumed shard failed the
    video for good). It is removed with the failed result; a Ctrl-C that lands in the commit is
    raised once the result is in place, whose FILE stays."""
    import errno

    from entitysam.io import overlay, staging as staging_module
    from entitysam.pipeline import segment as pipeline_segment

    image = still(tmp_path / "still.png")
    target, out = tmp_path / "l.npz", tmp_path / "out"
    common = [image, "-o", out, "--checkpoint", tiny_checkpoint, "--save", "all", "-q", "--save-logits", target]
    with monkeypatch.context() as m:
        if stage == "merge":  # (the id maps go to disk during the merge)
            def full(self, id_map):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            m.setattr(pipeline_segment.IdMapFile, "append", full)
        elif stage == "writing":
            def full(self, *args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            m.setattr(overlay.OverlayWriter, "encode", full)
        else:
            real = staging_module.StagedOutput.publish

            def interrupted(self):
                real(self)
                raise KeyboardInterrupt
            m.setattr(staging_module.StagedOutput, "publish", interrupted)
        assert run(*common) == (130 if stage == "commit interrupted" else 1)
    capsys.readouterr()
    if stage == "commit interrupted":
        assert read_manifest(out / "still") is not None and target.read_bytes()[:2] == b"PK"
        return
    assert not target.exists() and not (out / "still").exists()
    assert run(*common) == 0, capsys.readouterr().err  # the re-run
    assert target.read_bytes()[:2] == b"PK" and read_manifest(out / "still") is not None
    if stage == "writing":  # --overwrite failing: the kept result keeps a FILE (it was removed, leaving none)
        with monkeypatch.context() as m:
            m.setattr(overlay.OverlayWriter, "encode", full)
            assert run(*common, "--overwrite") == 1
        assert target.read_bytes()[:2] == b"PK" and read_manifest(out / "still") is not None


@pytest.mark.parametrize("way", ["link", "renameat2", "check"])
def test_publish_no_replace_never_replaces(tmp_path, monkeypatch, way):
    """The one no-replace primitive (io.atomic.publish_no_replace), with each of its fallbacks:
    a hard link, renameat2(RENAME_NOREPLACE) where links are unsupported, a last check."""
    import errno

    from entitysam.io import atomic

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    if way != "link":
        monkeypatch.setattr(atomic.os, "link", no_links)
    if way == "check":
        monkeypatch.setattr(atomic, "_rename_noreplace", lambda src, dst: False)
    tmp, final = tmp_path / "tmp", tmp_path / "final"
    tmp.write_text("first")
    atomic.publish_no_replace(tmp, final)
    assert final.read_text() == "first" and not tmp.exists()
    tmp.write_text("second")
    with pytest.raises(FileExistsError):
        atomic.publish_no_replace(tmp, final)
    assert final.read_text() == "first" and tmp.read_text() == "second"
    stage, empty = tmp_path / "stage", tmp_path / "empty"
    stage.mkdir()
    (stage / "x").write_text("x")
    empty.mkdir()  # os.rename would silently replace an empty folder
    with pytest.raises(FileExistsError):
        atomic.publish_no_replace(stage, empty)
    assert (stage / "x").is_file() and empty.is_dir() and not any(empty.iterdir())
    with pytest.raises(FileExistsError):  # atomic_file(replace=False): a file that appeared meanwhile stays
        with atomic.atomic_file(tmp_path / "late", "w", replace=False) as f:
            f.write("mine")
            (tmp_path / "late").write_text("theirs")
    assert (tmp_path / "late").read_text() == "theirs"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temporary file removed


def test_export_appearing_during_the_export_is_never_replaced(tmp_path):
    from entitysam.review.export.common import output_dir, output_file

    out = tmp_path / "x.json"
    with pytest.raises(OutputError, match="appeared while"):
        with output_file(out, overwrite=False) as f:
            f.write("export")
            out.write_text("theirs")
    assert out.read_text() == "theirs"
    folder = tmp_path / "mots"
    with pytest.raises(OutputError, match="already exists"):
        with output_dir(folder, overwrite=False) as stage:
            (stage / "a").write_text("a")
            folder.mkdir()  # an empty folder: a plain rename would replace it
    assert folder.is_dir() and not any(folder.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mots", "x.json"]


# ----------------------------------------------------------------------------- long names


def test_temporary_names_fit_when_the_final_name_does(tmp_path):
    """A 255-byte name (the usual limit) is written: temporary names are short, not derived from it."""
    import numpy as np

    from entitysam.io.atomic import write_bytes_atomic
    from entitysam.io.logits import save_logits_npz

    write_bytes_atomic(tmp_path / ("a" * 255), b"x")
    path = save_logits_npz(tmp_path / ("b" * 251 + ".npz"), np.zeros((1, 2, 4, 4), np.float32), np.zeros(2),
                           overwrite=False)
    assert (tmp_path / ("a" * 255)).read_bytes() == b"x" and path.is_file()
    assert sorted(len(p.name) for p in tmp_path.iterdir()) == [255, 255]


def test_save_logits_name_too_long_is_refused_before_any_work(tmp_path, tiny_checkpoint, capsys):
    image = still(tmp_path / "still.png")
    out = tmp_path / "out"
    assert run(image, "-o", out, "--checkpoint", tiny_checkpoint, "-q", "--save-logits", tmp_path / ("x" * 252)) == 2
    err = capsys.readouterr().err
    assert "longer than the file system allows (255 bytes)" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_temporary_files_of_a_killed_online_run_are_its_own(tmp_path):
    """A killed online run leaves io.atomic's temporary files (`.entitysam-tmp-<pid>-<hex>`, and the
    `.<name>.tmp-<pid>-<hex>` of earlier versions) beside manifest.json and the frame PNGs: they are
    the tool's, so --overwrite replaces such a result; anything else there is still foreign."""
    from entitysam.io.atomic import temp_path
    from entitysam.io.owned import foreign_entries, result_layout

    folder = tmp_path / "vid"
    (folder / "panoptic").mkdir(parents=True)
    for name in (MANIFEST, "entities.jsonl", "panoptic/000000.png", temp_path(folder / MANIFEST).name,
                 "panoptic/" + temp_path(folder / "panoptic" / "000001.png").name, ".manifest.json.tmp-12-abc123"):
        (folder / name).write_text("x")
    (folder / "notes.txt").write_text("mine")
    assert foreign_entries(folder, result_layout(folder, {"complete": False})) == ["notes.txt"]


def test_without_fcntl_a_dead_runs_temporary_file_is_removed_unopened(tmp_path, monkeypatch):
    """Windows (no fcntl): the file was opened to probe a lock that does not exist there, and an
    open file cannot be removed on Windows, so a killed run's temporary files stayed for good."""
    from entitysam.io import atomic

    monkeypatch.setattr(atomic, "fcntl", None)
    out = tmp_path / "out"
    dead, live = _temp_files_of_a_dead_and_a_live_pid(out)
    real_open = os.open

    def as_on_windows(path, flags, *args, **kwargs):
        if os.fspath(path) in (str(dead), str(live)):
            raise AssertionError(f"{path} opened: Windows would then refuse to remove it")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", as_on_windows)
    assert atomic.remove_dead_temp_file(dead, 999999999)
    assert not atomic.remove_dead_temp_file(live, os.getppid())
    assert not dead.exists() and live.exists()


def test_pid_alive_on_windows_asks_windows_and_sends_no_signal(monkeypatch):
    """os.kill(pid, 0) on Windows sends CTRL_C_EVENT to the console's processes (this one
    included) and terminates other pids: the liveness check must never call it there."""
    import types

    from entitysam.io import output_lock

    processes = {4242: 259, 4343: 0}  # pid -> exit code (259: STILL_ACTIVE)

    def open_process(access, inherit, pid):
        if pid not in processes:
            err = OSError("The parameter is incorrect")
            err.winerror = 87
            raise err
        return pid

    winapi = types.SimpleNamespace(OpenProcess=open_process, GetExitCodeProcess=processes.__getitem__,
                                   CloseHandle=lambda handle: None)

    def kill(pid, sig):
        raise AssertionError("os.kill called on Windows")

    monkeypatch.setitem(sys.modules, "_winapi", winapi)
    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(os, "name", "nt")
    try:
        alive = [output_lock.pid_alive(pid) for pid in (4242, 4343, 999)]
    finally:
        monkeypatch.undo()  # pytest's own reporting must not run as on Windows
    assert alive == [True, False, False]


def test_a_file_put_in_place_of_a_held_lock_file_is_not_removed_with_the_lock(tmp_path):
    """Releasing the lock removed whatever the lock file's path named then: a file of the user's
    moved there during the run (the lock file renamed away first) was deleted."""
    pytest.importorskip("fcntl", reason="runs are locked with fcntl.flock (POSIX)")
    lock = OutputLock.acquire(tmp_path / "clip")
    os.rename(lock.path, tmp_path / "moved")
    lock.path.write_text("the user's\n")
    lock.release()
    assert lock.path.read_text() == "the user's\n"
