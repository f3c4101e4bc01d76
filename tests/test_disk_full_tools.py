"""A full disk, or writes that fail, in `entitysam eval vipseg`, the viewer's export, `entitysam
export`, `entitysam demo` and a shard's summary file: one line naming what could not be written
(a 400 with the message in the viewer), earlier results kept (how writes are made to fail:
_disk_full.py; `segment` and the Python API: test_disk_full.py).
"""

from __future__ import annotations

import os

import pytest
from PIL import Image

from _disk_full import enospc, everything, fail_write, full_disk_open, one_error_line, segment, tree
from _media import link_into, scene
from entitysam import cli
from entitysam.io import atomic

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_checkpoint):
    d = tmp_path_factory.mktemp("disk-full-tools-media")
    link_into(d, tiny_checkpoint)
    Image.fromarray(scene(2)).save(d / "still.png")
    return d


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
    deleted: a full disk then lost the video's complete predictions. They are kept whole, the part
    set aside (a video whose redo failed is not complete: test_eval_merge.py)."""
    out = tmp_path / "out"
    assert run_eval(vipseg, media, out) == 0
    before = {d: tree(out / d) for d in ("pan_pred", "parts")}
    capsys.readouterr()
    monkeypatch.setattr(atomic, "open", full_disk_open, raising=False)
    assert run_eval(vipseg, media, out, "--overwrite") == 1
    before["parts"] = {f"{name}.earlier": data for name, data in before["parts"].items()}
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
    with TestClient(create_app(viewer, loopback_only=True), raise_server_exceptions=False) as client:
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
