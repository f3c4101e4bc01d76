"""A full disk, or writes that fail, under `entitysam segment` (offline, online, --batch) and the
Python API: one line naming what could not be written and why, exit code 1, nothing half-written
left as a result, an older result that --overwrite was to replace kept whole, no temporary file
or staging folder left, no hang. (eval vipseg, the viewer, export, demo: test_disk_full_tools.py;
how writes are made to fail: _disk_full.py.)
"""

from __future__ import annotations

import errno
import json
import os

import pytest
from PIL import Image

from _disk_full import (enospc, everything, fail_write, full_disk_open, one_error_line, run_limited, segment,
                        tree)
from _media import link_into, scene
from entitysam.io import atomic
from entitysam.io.manifest import read_manifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_checkpoint, scene_clip):
    d = tmp_path_factory.mktemp("disk-full-media")
    link_into(d, tiny_checkpoint)
    link_into(d, scene_clip)
    Image.fromarray(scene(2)).save(d / "still.png")
    return d


# ----------------------------------------------------------------------------- the wording, the lock


def test_no_usable_temporary_folder_is_one_line(media, tmp_path):
    """With no file writable anywhere (ulimit -f 0), whatever write comes first fails in one line:
    Python finding no usable temporary folder (torch._dynamo's import asked for one; that was a
    traceback), now that nothing imports it, the run's own temporary files."""
    out = tmp_path / "out"
    proc = run_limited(0, "segment", media / "still.png", "-o", out, "--checkpoint", media / "tiny.pth", "-q",
                       cwd=tmp_path)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert ("no usable temporary folder" in line and "TMPDIR" in line) or (
        line.startswith("error: still: cannot write the temporary files of still in ")
        and "file too large (over the file-size limit" in line), line
    assert not out.exists() or os.listdir(out) == []


def test_file_size_limit_is_worded_and_the_old_result_kept(media, tmp_path):
    """EFBIG was shown as "File too large"; the result --overwrite was to replace stays whole and
    nothing is left beside it."""
    out = tmp_path / "out"
    assert segment(media / "clip.mp4", "-o", out, "--checkpoint", media / "tiny.pth", "-q") == 0
    before = tree(out)
    proc = run_limited(4096, "segment", media / "clip.mp4", "-o", out, "--checkpoint", media / "tiny.pth", "-q",
                       "--overwrite", cwd=tmp_path)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert line.startswith("error: clip: cannot write ") and "file too large (over the file-size limit" in line
    assert tree(out) == before and sorted(os.listdir(out)) == ["clip"]


def test_lock_holds_without_its_pid_on_a_full_disk(tmp_path, monkeypatch):
    """The pid in the lock file only names the holder: failing to write it failed the video and
    left the lock file and the output folder it had created behind."""
    from entitysam.io import output_lock
    from entitysam.io.output_lock import OutputLock

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(output_lock.os, "write", fail_write)
        lock = OutputLock.acquire(out / "clip")
    try:
        assert lock.path.is_file()
        other = os.open(lock.path, os.O_RDWR)
        try:  # held: another open file description cannot take it
            with pytest.raises(BlockingIOError):
                output_lock.fcntl.flock(other, output_lock.fcntl.LOCK_EX | output_lock.fcntl.LOCK_NB)
        finally:
            os.close(other)
    finally:
        lock.release()
    assert not out.exists()


def test_atomic_write_names_the_file_not_its_hidden_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "open", full_disk_open, raising=False)
    target = tmp_path / "result.json"
    with pytest.raises(OSError) as caught:
        atomic.write_json_atomic(target, {"a": 1})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- temporary files, logits


def logits_bytes(frames: int = 6) -> int:
    """The temporary logits of `frames` frames of the tiny model (float32): the largest file of a
    run on the test clip; logits.npz holds the same array plus headers and the scores."""
    from entitysam.config import get_config

    cfg = get_config("tiny")
    return frames * cfg.num_queries * cfg.lowres_mask_size ** 2 * 4


@pytest.mark.parametrize("where", ["file", "result"])
def test_logits_file_that_does_not_fit_is_named(media, tmp_path, where):
    """--save-logits FILE (or the result's logits.npz) past the limit: the failure blamed "results
    of clip", whatever disk FILE is on."""
    out, elsewhere = tmp_path / "out", tmp_path / "logits"
    elsewhere.mkdir()
    target = elsewhere / "clip.npz" if where == "file" else None
    args = ["--save-logits", target] if target else ["--save-logits"]
    proc = run_limited(logits_bytes() + 64, "segment", media / "clip.mp4", "-o", out, "--checkpoint",
                       media / "tiny.pth", "-q", "--save", "panoptic", *args, cwd=tmp_path)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    named = str(target) if target else "logits.npz"
    assert "cannot write logits file " in line and named in line and "file too large" in line, line
    assert everything(out) == [] and os.listdir(elsewhere) == []


def test_temporary_files_on_a_full_disk_say_where_and_what_helps(media, tmp_path):
    """The logits kept on disk while a video is tracked (as large as the video is long) on a full
    disk: the message says they are temporary files, where, and that --logits-dtype float16
    halves them; nothing is left."""
    out = tmp_path / "out"
    proc = run_limited(4096, "segment", media / "clip.mp4", "-o", out, "--checkpoint", media / "tiny.pth", "-q",
                       cwd=tmp_path)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert line.startswith(f"error: clip: cannot write the temporary files of clip in {out}/"), line
    assert line.endswith("use --logits-dtype float16 to halve the space the temporary logits take"), line
    assert everything(out) == []


def test_api_segment_with_a_full_temporary_folder(media, tmp_path, monkeypatch, tiny_checkpoint):
    """`model.segment` keeps its temporary files in the system temporary folder: a full /tmp was
    a bare `OSError: [Errno 28] No space left on device`, with no word of /tmp or of work_dir."""
    import tempfile

    from entitysam import EntitySAM
    from entitysam.errors import OutputError
    from entitysam.inference.video import LogitStore

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(LogitStore, "append", fail_write)
    model = EntitySAM.from_checkpoint(tiny_checkpoint)
    with pytest.raises(OutputError) as caught:
        model.segment(media / "clip.mp4")
    message = str(caught.value)
    assert message.startswith(f"cannot write the temporary files of clip in {tmp}: no space left on the device")
    assert "pass work_dir=DIR to keep them on a disk with more space" in message
    assert "pass logits_dtype='float16'" in message
    assert os.listdir(tmp) == []


# ----------------------------------------------------------------------------- offline writers (coverage)


def _png_full(path, id_map):
    raise enospc(path)


def _overlay_full(self, frame, time_s=None):
    raise enospc(self.path)


WRITERS = {  # --save format -> (module or class, attribute, what writes fail there)
    "panoptic PNGs": ("panoptic", "entitysam.io.idpng", "write_id_png", _png_full),
    "panoptic.json": ("panoptic", "entitysam.io.panoptic", "open", full_disk_open),
    "entities.json": ("entities", "entitysam.io.entities", "open", full_disk_open),
    "overlay.mp4": ("overlay", "entitysam.io.overlay.OverlayWriter", "encode", _overlay_full),
    "manifest.json": ("none", "entitysam.io.atomic", "open", full_disk_open),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_offline_full_disk_keeps_the_old_result(media, tmp_path, monkeypatch, capsys, writer):
    fmt, target, name, fake = WRITERS[writer]
    out = tmp_path / "out"
    assert segment(media / "still.png", "-o", out, "--checkpoint", media / "tiny.pth", "-q") == 0
    before = tree(out)
    capsys.readouterr()
    monkeypatch.setattr(f"{target}.{name}", fake, raising=False)
    assert segment(media / "still.png", "-o", out, "--checkpoint", media / "tiny.pth", "-q", "--save", fmt,
                   "--overwrite") == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: still: cannot write ") and "no space left on the device (disk full)" in line
    assert ".partial-" not in line and atomic.TEMP_PREFIX not in line, line  # final names, not hidden ones
    assert tree(out) == before and sorted(os.listdir(out)) == ["still"]


def test_batch_goes_on_after_a_video_fills_the_disk(media, tmp_path, monkeypatch, capsys):
    """The space a failed video took is freed (its staging folder removed): the next video is
    tried, and the summary names the one that failed."""
    from entitysam.io import idpng

    batch = tmp_path / "batch"
    batch.mkdir()
    for name in ("a", "b"):  # two one-frame videos (frame folders)
        (batch / name).mkdir()
        (batch / name / "0001.png").write_bytes((media / "still.png").read_bytes())
    real = idpng.write_id_png

    def full_for_a(path, id_map):
        if "/.a." in str(path):
            raise enospc(path)
        real(path, id_map)

    monkeypatch.setattr(idpng, "write_id_png", full_for_a)
    out = tmp_path / "out"
    assert segment("--batch", batch, "-o", out, "--checkpoint", media / "tiny.pth", "-q", "--save", "panoptic") == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("error: a: cannot write ") and "no space left" in err[0]
    assert err[1] == "error: 1 of 2 videos failed: a"
    assert sorted(os.listdir(out)) == ["b"] and read_manifest(out / "b") is not None


def test_api_save_on_a_full_disk_keeps_the_old_result(media, tmp_path, monkeypatch, tiny_checkpoint):
    from entitysam import EntitySAM
    from entitysam.errors import OutputError
    from entitysam.io import idpng

    model = EntitySAM.from_checkpoint(tiny_checkpoint)
    out = tmp_path / "out" / "still"
    with model.segment(media / "still.png") as result:
        result.save(out)
        before = tree(out)
        monkeypatch.setattr(idpng, "write_id_png", _png_full)
        with pytest.raises(OutputError) as caught:
            result.save(out, overwrite=True)
    assert str(caught.value) == f"cannot write {out} {out}/panoptic/still.png: no space left on the device (disk full)"
    assert tree(out) == before and sorted(os.listdir(out.parent)) == ["still"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_folder_keeps_the_old_result(media, tmp_path, capsys):
    out = tmp_path / "out"
    assert segment(media / "still.png", "-o", out, "--checkpoint", media / "tiny.pth", "-q") == 0
    before = tree(out)
    capsys.readouterr()
    out.chmod(0o555)
    try:
        rc = segment(media / "still.png", "-o", out, "--checkpoint", media / "tiny.pth", "-q", "--overwrite")
    finally:
        out.chmod(0o755)
    assert rc == 1
    assert "(the output folder is not writable)" in one_error_line(capsys.readouterr().err)
    assert tree(out) == before and sorted(os.listdir(out)) == ["still"]


def test_output_folder_removed_during_an_offline_run(media, tmp_path, monkeypatch, capsys):
    import shutil

    from entitysam.pipeline import segment as api

    real, calls = api.preprocess_frame, []
    out = tmp_path / "out"

    def removes_output(image, size):
        calls.append(1)
        if len(calls) == 3:
            shutil.rmtree(out)
        return real(image, size)

    monkeypatch.setattr(api, "preprocess_frame", removes_output)
    assert segment(media / "clip.mp4", "-o", out, "--checkpoint", media / "tiny.pth", "-q") == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: clip: cannot write ") and "No such file or directory" in line, line
    assert not out.exists()


# ----------------------------------------------------------------------------- online


ONLINE = ["-q", "--online", "--save", "panoptic"]


def manifest_write_fails(path, data, **kwargs):
    raise enospc(path)


def test_online_start_on_a_full_disk_leaves_no_orphan(media, tmp_path, monkeypatch, capsys):
    """The first manifest (status running) could not be written: the new folder stayed without
    it, and no later run could replace it (not written by entitysam), not even with --overwrite."""
    from entitysam.io import stream_files

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(stream_files, "write_bytes_atomic", manifest_write_fails)
        assert segment(media / "clip.mp4", "-o", out, "--checkpoint", media / "tiny.pth", *ONLINE) == 1
    assert "no space left on the device" in one_error_line(capsys.readouterr().err)
    assert everything(out) == []
    assert segment(media / "clip.mp4", "-o", out, "--checkpoint", media / "tiny.pth", *ONLINE) == 0  # space again
    assert read_manifest(out / "clip")["status"] == "complete"


def test_online_start_on_a_full_disk_keeps_the_old_result(media, tmp_path, monkeypatch, capsys):
    """--online --overwrite deleted the older result before its first file was written: a run
    that could not even start left nothing of either."""
    from entitysam.io import stream_files

    out = tmp_path / "out"
    assert segment(media / "clip.mp4", "-o", out, "--checkpoint", media / "tiny.pth", *ONLINE) == 0
    before = tree(out)
    capsys.readouterr()
    monkeypatch.setattr(stream_files, "write_bytes_atomic", manifest_write_fails)
    assert segment(media / "clip.mp4", "-o", out, "--checkpoint", media / "tiny.pth", *ONLINE, "--overwrite") == 1
    assert "no space left on the device" in one_error_line(capsys.readouterr().err)
    assert tree(out) == before and sorted(os.listdir(out)) == ["clip"]


def test_online_full_disk_mid_run_keeps_the_frames_done_and_reruns(media, tmp_path, monkeypatch, capsys):
    from entitysam.io import idpng

    real, calls = idpng.write_id_png, []

    def fills_up(f, id_map):
        calls.append(1)
        if len(calls) > 2:
            raise enospc()
        real(f, id_map)

    out = tmp_path / "out"
    args = ["--checkpoint", media / "tiny.pth", *ONLINE]
    with monkeypatch.context() as m:
        m.setattr(idpng, "write_id_png", fills_up)
        assert segment(media / "clip.mp4", "-o", out, *args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "the results of the 2 frames done are in" in err
    assert "no space left on the device (disk full)" in err
    manifest = json.loads((out / "clip" / "manifest.json").read_text())  # (not complete: read as it is)
    assert manifest["status"] == "failed" and manifest["num_frames"] == 2
    assert "no space left on the device" in manifest["error"]
    assert sorted(os.listdir(out / "clip" / "panoptic")) == ["000000.png", "000001.png"]
    assert segment(media / "clip.mp4", "-o", out, *args) == 1  # an unfinished result: not replaced unasked
    assert "--overwrite" in capsys.readouterr().err
    assert segment(media / "clip.mp4", "-o", out, *args, "--overwrite") == 0
    assert read_manifest(out / "clip")["status"] == "complete"
    assert sorted(os.listdir(out)) == ["clip"]


def test_online_output_removed_during_the_run(media, tmp_path, monkeypatch, capsys):
    """The output folder deleted while an online run wrote into it: the run said the frames done
    were in that folder (gone), and named a hidden temporary file."""
    import shutil

    from entitysam.pipeline import online_tracking

    real, calls = online_tracking.preprocess_frame, []
    out = tmp_path / "out"

    def removes_output(image, size):
        calls.append(1)
        if len(calls) == 4:
            shutil.rmtree(out)
        return real(image, size)

    monkeypatch.setattr(online_tracking, "preprocess_frame", removes_output)
    assert segment(media / "clip.mp4", "-o", out, "--checkpoint", media / "tiny.pth", *ONLINE) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: clip: cannot write ") and atomic.TEMP_PREFIX not in line, line
    assert not out.exists()
