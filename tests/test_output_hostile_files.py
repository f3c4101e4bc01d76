"""What entitysam finds in an output folder that it did not write there, under the names it reads
and writes itself: a named pipe in place of a result's panoptic.json or of the journal beside
it (read without waiting), a hard link or a named pipe in place of the lock file (never written
into nor deleted). Each case hung, crashed or damaged a user's file before its fix."""

from __future__ import annotations

import os

import pytest

from _cli import run_cli
from entitysam.io.manifest import read_manifest

COMMON = ["--model", "demo", "--save", "panoptic", "--threads", "1", "-q"]


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    from _media import write_frames

    return write_frames(tmp_path_factory.mktemp("in") / "clip", ["0", "1"])


def _result(frames, out):
    proc = run_cli(frames, "-o", out, *COMMON)
    assert proc.returncode == 0, proc.stderr
    assert read_manifest(out / "clip") is not None
    return out / "clip"


@pytest.mark.parametrize("extra", [[], ["--online"]])
def test_a_named_pipe_as_panoptic_json_of_the_result_to_replace_does_not_hang(frames, tmp_path, extra):
    """--overwrite lists what the old result holds, reading its panoptic.json for the frame PNGs
    it names: a named pipe there made that read wait for a writer for ever (the lock held)."""
    result = _result(frames, tmp_path / "out")
    (result / "panoptic.json").unlink()
    os.mkfifo(result / "panoptic.json")
    proc = run_cli(frames, "-o", tmp_path / "out", "--overwrite", *COMMON, *extra, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "holds files entitysam did not write" in proc.stderr and "panoptic.json" in proc.stderr
    assert (result / "panoptic.json").exists() and (result / "panoptic").is_dir()


@pytest.mark.parametrize("journal", ["named pipe", "JSON list"])
@pytest.mark.parametrize("extra", [[], ["--overwrite"]])
def test_a_journal_that_is_no_journal_does_not_stop_the_run(frames, tmp_path, extra, journal):
    """Every run on a result first looks for the journal of a replacement a killed run left
    (`.<name>.commit.json`): a named pipe there made the read wait for ever, before any work; JSON
    that is not an object ended the run with an AttributeError traceback."""
    result = _result(frames, tmp_path / "out")
    before = (result / "manifest.json").read_bytes()
    if journal == "named pipe":
        os.mkfifo(tmp_path / "out" / ".clip.commit.json")
    else:
        (tmp_path / "out" / ".clip.commit.json").write_text("[]")
    proc = run_cli(frames, "-o", tmp_path / "out", *COMMON, *extra, timeout=60)
    assert proc.returncode == (0 if extra else 1), proc.stderr
    assert "Traceback" not in proc.stderr and read_manifest(result) is not None
    if not extra:
        assert "already holds results" in proc.stderr and (result / "manifest.json").read_bytes() == before


@pytest.mark.parametrize("kind", ["hard link", "named pipe"])
def test_a_lock_file_that_is_a_hard_link_or_a_pipe_is_never_written_into_nor_deleted(frames, tmp_path, kind):
    """The lock file `.<name>.lock` is opened as it is and the run's pid written into it: a hard
    link there to a file of the user's had that file cut to the pid, and a named pipe there was
    deleted when the run ended."""
    out = tmp_path / "out"
    out.mkdir()
    keep = tmp_path / "thesis.tex"
    keep.write_text("years of work\n")
    lock = out / ".clip.lock"
    if kind == "hard link":
        os.link(keep, lock)
    else:
        os.mkfifo(lock)
    proc = run_cli(frames, "-o", out, *COMMON, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "is not a plain file" in proc.stderr and str(lock) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert keep.read_text() == "years of work\n"
    assert os.path.lexists(lock) and not (out / "clip").exists()


@pytest.mark.parametrize("extra", [[], ["--overwrite"]])
def test_a_file_of_the_users_named_like_the_lock_file_is_never_taken_over(frames, tmp_path, extra):
    """A regular file of one link at `.<name>.lock` was taken for a killed run's lock file whatever
    it held: the run cut it to its pid, and deleted it when it ended. Only what a lock file holds
    (a pid and host, a prefix of it, nothing) is a killed run's; anything else is refused, exit 2."""
    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".clip.lock"
    lock.write_text("call the lab about the .lock results\n")
    proc = run_cli(frames, "-o", out, *COMMON, *extra, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert str(lock) in proc.stderr and "refusing to overwrite it" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert lock.read_text() == "call the lab about the .lock results\n"
    assert sorted(os.listdir(out)) == [".clip.lock"]


@pytest.mark.parametrize("content", [b"", b"4242", b"4242\n", b"4242 ", b"4242 node17\n", b"\0" * 12],
                         ids=["empty", "pid", "pid-newline", "cut-write", "pid-host", "power-loss"])
def test_what_a_killed_run_left_in_its_lock_file_is_taken_over(frames, tmp_path, content):
    """Killed between creating the lock file and writing it (empty), by a full disk mid-write, an
    older version (a pid alone) or a power loss (NUL bytes): the next run takes the lock over."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".clip.lock").write_bytes(content)
    proc = run_cli(frames, "-o", out, *COMMON, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["clip"]


def test_the_lock_refuses_a_file_of_the_users_and_leaves_it_as_it_was(tmp_path):
    """The library's lock (taken by every writer, the demo and eval vipseg): a typed error naming
    the file, the file unchanged, no folder made."""
    from entitysam.io.output_lock import OutputLock
    from entitysam.io.paths import UnsafeOverwriteError

    lock = tmp_path / ".clip.lock"
    lock.write_bytes(b"12 34 56\n")  # three words: no lock file holds that
    with pytest.raises(UnsafeOverwriteError, match="refusing to overwrite it") as err:
        OutputLock.acquire(tmp_path / "clip")
    assert str(lock) in str(err.value) and "\n" not in str(err.value)
    assert lock.read_bytes() == b"12 34 56\n" and sorted(os.listdir(tmp_path)) == [".clip.lock"]
    assert not OutputLock.held(tmp_path / "clip")
