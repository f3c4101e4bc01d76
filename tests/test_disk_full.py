"""A full disk, or writes that fail: one line naming what could not be written and why, exit code
1, nothing half-written left as a result, an older result that --overwrite was to replace kept
whole, no temporary file or staging folder left, no hang.

Two ways to fail writes without root: a process whose files may not grow (RLIMIT_FSIZE: a
write past the limit fails with EFBIG; Python ignores the SIGXFSZ that comes with it), and, in
this process, a module's ``open`` (or one writer) replaced by one whose writes fail with ENOSPC,
as on a full disk, where creating a file works and writing to it does not.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from _media import link_into, scene
from entitysam import cli
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


def segment(*args):
    return cli.main(["segment", *map(str, args)])


def tree(path):
    """Every file under `path` with its bytes (to show nothing changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def everything(path):
    """Every entry under `path`, hidden ones included (to show nothing was left behind)."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def run_limited(limit: int, *args, cwd, timeout: float = 180):
    """`entitysam ARGS` in a process whose files may not grow past `limit` bytes."""
    code = ("import resource, runpy, sys\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            "sys.argv = ['entitysam', *sys.argv[1:]]\n"
            "runpy.run_module('entitysam', run_name='__main__')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # set by torch in this process: a user's shell has none
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def one_error_line(stderr: str) -> str:
    """The one `error:` line of a failed command (no traceback, nothing else)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def enospc(path=None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([] if path is None else [str(path)]))


class _FullFile:
    """A file open for writing on a full disk: every write fails (with no file name, as write(2))."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise enospc()

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def fail_write(*args, **kwargs):
    raise enospc()


def full_disk_open(file, mode="r", *args, **kwargs):
    """`open` on a full disk: files open (and are created), writes fail with ENOSPC."""
    f = builtins.open(file, mode, *args, **kwargs)
    return _FullFile(f) if any(c in mode for c in "wax+") else f


# ----------------------------------------------------------------------------- the wording, the lock


def test_no_usable_temporary_folder_is_one_line(media, tmp_path):
    """With every candidate temporary folder full, importing torch fails (Python finds no usable
    temporary folder): that was a traceback."""
    out = tmp_path / "out"
    proc = run_limited(0, "segment", media / "still.png", "-o", out, "--checkpoint", media / "tiny.pth", "-q",
                       cwd=tmp_path)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert "no usable temporary folder" in line and "TMPDIR" in line
    assert not out.exists()


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


# ----------------------------------------------------------------------------- eval vipseg


@pytest.fixture(scope="module")
def vipseg(tmp_path_factory):
    from entitysam.data.synthetic.vipseg import make_vipseg_dataset

    return make_vipseg_dataset(tmp_path_factory.mktemp("disk-full-eval") / "VIPSeg_720P", num_videos=2,
                               num_frames=(3, 2), seed=0)


def run_eval(vipseg, media, out, *extra):
    return cli.main(["eval", "vipseg", "--data-root", str(vipseg.root), "--checkpoint", str(media / "tiny.pth"),
                     "--output", str(out), "--threads", "1", "--workers", "1", "--no-metrics", "-q",
                     *map(str, extra)])


def test_eval_merge_on_a_full_disk_is_one_line(vipseg, media, tmp_path, monkeypatch, capsys):
    """pred.json (the merge, after every video) on a full disk: a traceback with --merge-only
    (and "OSError: [Errno 28] ..." otherwise)."""
    out = tmp_path / "out"
    assert run_eval(vipseg, media, out) == 0
    (out / "pred.json").unlink()
    capsys.readouterr()
    monkeypatch.setattr(atomic, "open", full_disk_open, raising=False)
    assert run_eval(vipseg, media, out, "--merge-only") == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == f"error: cannot write the merged predictions {out / 'pred.json'}: no space left on the device " \
                   "(disk full)"
    assert not (out / "pred.json").exists() and not any(p.name.startswith(".") for p in out.iterdir())


def test_eval_overwrite_on_a_full_disk_keeps_the_old_predictions(vipseg, media, tmp_path, monkeypatch, capsys):
    """The part file (which marks a video complete) was written after the old predictions were
    deleted: a full disk then lost the video's complete predictions."""
    out = tmp_path / "out"
    assert run_eval(vipseg, media, out) == 0
    before = {d: tree(out / d) for d in ("pan_pred", "parts")}
    capsys.readouterr()
    monkeypatch.setattr(atomic, "open", full_disk_open, raising=False)
    assert run_eval(vipseg, media, out, "--overwrite") == 1
    assert {d: tree(out / d) for d in ("pan_pred", "parts")} == before
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for vid in vipseg.videos:
        assert f"{vid}: failed: cannot write predictions of {vid} {out / 'parts' / vid}.json: no space left" in err
    assert not [p for p in everything(out) if os.path.basename(p).startswith(".")]  # no staging, lock, temporary


def test_eval_temporary_files_on_a_full_disk(vipseg, media, tmp_path, monkeypatch, capsys):
    """Each video fails with the command line's words (its flags, not Python arguments) and
    leaves no staging folder; the run goes on to the next video."""
    from entitysam.inference.video import LogitStore

    out = tmp_path / "out"
    monkeypatch.setattr(LogitStore, "append", fail_write)
    assert run_eval(vipseg, media, out) == 1
    err = capsys.readouterr().err
    for k, vid in enumerate(vipseg.videos, 1):
        assert f"[{k}/2] {vid}: failed: cannot write the temporary files of {vid} in {out / 'pan_pred'}/" in err
    assert err.count("use --logits-dtype float16") == 2 and "logits_dtype=" not in err
    assert not [p for p in everything(out) if os.path.basename(p).startswith(".")]


# ----------------------------------------------------------------------------- review, export, demo, batch


@pytest.mark.parametrize("fmt", ["ytvis", "coco-video"])
def test_viewer_export_with_a_full_temporary_folder(tmp_path, monkeypatch, fmt):
    """The viewer's export is built in the temporary folder: full, it was a 500 (and a traceback
    on the server's console)."""
    pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
    pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")
    import tempfile

    from starlette.testclient import TestClient

    from _review_result import make_result
    from entitysam.review.server import TOKEN_HEADER, Viewer, create_app

    viewer = Viewer(make_result(tmp_path / "results"), token="t")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(atomic, "open", full_disk_open, raising=False)
    with TestClient(create_app(viewer), raise_server_exceptions=False) as client:
        res = client.post(f"/api/export?format={fmt}", headers={TOKEN_HEADER: "t"})
    assert res.status_code == 400
    assert res.json() == {"error": f"cannot write the {fmt} export of clip in {tmp}: no space left on the device "
                                   "(disk full)"}
    assert os.listdir(tmp) == []


def test_export_command_on_a_full_disk(tmp_path, monkeypatch, capsys):
    """`entitysam export` said "OUT: No space left on device"; now the one wording."""
    from _review_result import make_result

    result = make_result(tmp_path / "results")
    out = tmp_path / "exports" / "clip.json"
    out.parent.mkdir()
    monkeypatch.setattr(atomic, "open", full_disk_open, raising=False)
    assert cli.main(["export", str(result), "--format", "ytvis", "-o", str(out)]) == 1
    assert one_error_line(capsys.readouterr().err) == \
        f"error: cannot write the ytvis export {out}: no space left on the device (disk full)"
    assert os.listdir(out.parent) == []


def test_demo_on_a_full_disk(tmp_path, monkeypatch, capsys):
    """`entitysam demo` printed the bare "[Errno 28] No space left on device"."""
    from entitysam.pipeline import demo

    def full(folder, **kwargs):
        raise enospc()

    monkeypatch.setattr(demo, "make_demo_video", full)
    out = tmp_path / "demo"
    assert cli.main(["demo", "-o", str(out), "-q"]) == 1
    assert one_error_line(capsys.readouterr().err) == \
        f"error: cannot write the demo in {out}: no space left on the device (disk full)"


def test_batch_summary_on_a_full_disk(media, tmp_path, monkeypatch, capsys):
    """A shard's summary file on a full disk was "summary: [Errno 28] No space left on device"."""
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    monkeypatch.setattr(atomic, "open", full_disk_open, raising=False)
    assert segment(media / "still.png", "-o", out, "--checkpoint", media / "tiny.pth", "-q", "--save", "panoptic",
                   "--shard", "0/1", "--summary", summary) == 1
    lines = capsys.readouterr().err.splitlines()
    assert all(line.startswith("error: [shard 0/1] ") for line in lines), lines
    assert "still: cannot write " in lines[0] and "no space left on the device" in lines[0]
    assert lines[-1] == f"error: [shard 0/1] cannot write the summary file {summary}: no space left on the device " \
                        "(disk full)"
    assert everything(out) == [] and not summary.exists()
