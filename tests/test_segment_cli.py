"""`entitysam segment` end to end on the tiny config: every output format read back, bad inputs,
atomic outputs, batch mode, and the Python API."""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from _media import FPS, H, W, link_into, scene, tiny_state_dict, write_frames
from entitysam import EntitySAM, cli
from entitysam.errors import EntitySAMError
from entitysam.inference.preprocess import preprocess_frame
from entitysam.inference.video import segment_video
from entitysam.io.idpng import read_id_png
from entitysam.io.manifest import MANIFEST
from entitysam.io.panoptic import frame_segments
from entitysam.io.sources import open_source

N_FRAMES = 6  # frames of conftest's scene_clip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_checkpoint, scene_clip):
    d = tmp_path_factory.mktemp("segment-media")
    link_into(d, tiny_checkpoint)
    link_into(d, scene_clip)
    write_frames(d / "frames", ["10", "3", "2", "1"])
    Image.fromarray(scene(2)).save(d / "still.png")
    return d


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return EntitySAM.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def reference(media, model):
    """Id maps of the mp4 from the in-memory path of segment_video (no streaming)."""
    frames = ((f.index, preprocess_frame(f.image, model.cfg.image_size)) for f in open_source(media / "clip.mp4"))
    return segment_video(model, frames, (H, W))


def run(*args):
    return cli.main(["segment", *map(str, args)])


def listing(path):
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def read_pngs(folder, names):
    return np.stack([read_id_png(folder / f"{n}.png") for n in names])


def test_video_end_to_end_every_format(media, reference, tmp_path, capsys):
    from pycocotools import mask as mask_utils
    import av

    out = tmp_path / "out"
    rc = run(media / "clip.mp4", "-o", out, "--checkpoint", media / "tiny.pth", "--labels", "--save-logits", "-q")
    assert rc == 0
    d = out / "clip"
    assert listing(d) == ["entities.json", "logits.npz", MANIFEST, "overlay.mp4", "panoptic", "panoptic.json"]
    assert listing(out) == ["clip"]  # no temporary folders left

    manifest = json.loads((d / MANIFEST).read_text())
    assert manifest["complete"] and manifest["num_frames"] == N_FRAMES and manifest["size"] == [H, W]
    assert manifest["model"]["config"] == "tiny" and manifest["fps"] == FPS

    names = [f"{i:06d}" for i in range(N_FRAMES)]
    maps = read_pngs(d / "panoptic", names)
    np.testing.assert_array_equal(maps, reference.panoptic.id_maps)  # streaming == in-memory merge
    ids = reference.panoptic.segment_ids
    assert len(ids) >= 1 and maps.max() == max(ids)

    pan = json.loads((d / "panoptic.json").read_text())["annotations"][0]
    assert pan["video_id"] == "clip" and [a["image_id"] for a in pan["annotations"]] == names
    for m, entry in zip(maps, pan["annotations"]):
        assert [{k: s[k] for k in ("id", "area", "bbox")} for s in entry["segments_info"]] == frame_segments(m)

    ents = json.loads((d / "entities.json").read_text())
    assert [e["id"] for e in ents["entities"]] == ids
    assert [e["query_index"] for e in ents["entities"]] == reference.panoptic.query_index
    assert [e["score"] for e in ents["entities"]] == pytest.approx(reference.panoptic.scores)
    for e in ents["entities"]:
        present = [t for t in range(N_FRAMES) if (maps[t] == e["id"]).any()]
        assert (e["first_frame"], e["last_frame"]) == (present[0], present[-1])
        for r in e["frames"]:
            rle = {"size": r["rle"]["size"], "counts": r["rle"]["counts"].encode()}
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), maps[r["frame"]] == e["id"])

    with av.open(str(d / "overlay.mp4")) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        assert float(s.average_rate) == FPS
    assert len(frames) == N_FRAMES and frames[0].shape == (H, W, 3)

    with np.load(d / "logits.npz") as z:
        q, side = 6, 32
        assert z["logits"].shape == (N_FRAMES, q, side, side) and z["scores"].shape == (q,)
        np.testing.assert_allclose(z["scores"], reference.scores.numpy())
        assert z["frame_name"].tolist() == names

    # panoptic/ + panoptic.json are the official layout: scored against themselves by `entitysam metrics`.
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    shutil.copytree(d / "panoptic", pred / "pan_pred" / "clip")
    shutil.copytree(d / "panoptic", gt / "clip")
    shutil.copy(d / "panoptic.json", pred / "pred.json")
    gt_json = {"videos": [{"video_id": "clip", "images": [{"file_name": a["file_name"]} for a in pan["annotations"]]}],
               "annotations": [{"video_id": "clip", "annotations": [{"segments_info": a["segments_info"]}
                                                                    for a in pan["annotations"]]}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    capsys.readouterr()
    assert cli.main(["metrics", str(pred), str(gt), str(tmp_path / "gt.json"), "--workers", "1"]) == 0
    assert "STQ 1.000000" in capsys.readouterr().out


def test_frame_folder_selection_natural_order(media, tmp_path):
    out = tmp_path / "out"
    rc = run(media / "frames", "-o", out, "--checkpoint", media / "tiny.pth", "--start", "1", "--stride", "2",
             "--save", "panoptic", "-q")
    assert rc == 0
    d = out / "frames"
    assert listing(d) == [MANIFEST, "panoptic", "panoptic.json"]
    assert listing(d / "panoptic") == ["10.png", "2.png"]
    entries = json.loads((d / "panoptic.json").read_text())["annotations"][0]["annotations"]
    assert [(e["image_id"], e["source_frame"]) for e in entries] == [("2", 1), ("10", 3)]  # natural order 1 2 3 10


@pytest.mark.parametrize("mode", [(), ("--online",)])
def test_a_relative_input_is_recorded_by_its_absolute_path(media, tmp_path, monkeypatch, mode):
    """The manifest's input was the path as typed, relative to the folder of the run: the result
    opened from any other folder lost its frames (grey background), or was shown over the frames
    of another input of that name there."""
    from entitysam.review import ResultFolder

    shutil.copytree(media / "frames", tmp_path / "frames")
    monkeypatch.chdir(tmp_path)
    assert run("frames", "-o", "out", "--checkpoint", media / "tiny.pth", "--save", "panoptic", "-q", *mode) == 0
    assert json.loads((tmp_path / "out" / "frames" / MANIFEST).read_text())["input"] == str(tmp_path / "frames")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = ResultFolder.open(tmp_path / "out" / "frames")
    assert np.array_equal(result.source_frame(0), np.asarray(Image.open(tmp_path / "frames" / "1.jpg")))
    # "link/../frames": beside the link's target, as the frames were read (abspath recorded the
    # folder beside the link: here none)
    (tmp_path / "a").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "a" / "link").symlink_to(tmp_path / "sub")
    monkeypatch.chdir(tmp_path / "a")
    assert run("link/../frames", "-o", "out2", "--checkpoint", media / "tiny.pth", "--save", "panoptic", "-q",
               *mode) == 0
    recorded = json.loads((tmp_path / "a" / "out2" / "frames" / MANIFEST).read_text())["input"]
    assert os.path.exists(recorded) and os.path.samefile(recorded, tmp_path / "frames"), recorded


def test_existing_results_refused_skipped_overwritten(media, tmp_path, capsys):
    out = tmp_path / "out"
    args = [media / "still.png", "-o", out, "--checkpoint", media / "tiny.pth", "--save", "entities", "-q"]
    assert run(*args) == 0
    first = (out / "still" / MANIFEST).read_text()
    capsys.readouterr()
    assert run(*args) == 1
    assert "already holds results: use --overwrite" in capsys.readouterr().err
    assert run(*args, "--skip-existing") == 0
    assert (out / "still" / MANIFEST).read_text() == first
    assert run(*args, "--overwrite", "--save", "panoptic") == 0
    assert listing(out / "still") == [MANIFEST, "panoptic", "panoptic.json"]
    assert listing(out) == ["still"]


def test_failure_while_writing_leaves_nothing(media, tmp_path, monkeypatch, capsys):
    from entitysam.io import overlay

    calls = []

    def broken_encode(self, frame, time_s=None):
        calls.append(1)
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(overlay.OverlayWriter, "encode", broken_encode)
    out = tmp_path / "out"
    assert run(media / "still.png", "-o", out, "--checkpoint", media / "tiny.pth", "-q") == 1
    assert calls and "still: failed: RuntimeError: encoder exploded" in capsys.readouterr().err
    assert listing(out) == []


def test_disk_full_message(media, tmp_path, monkeypatch, capsys):
    from entitysam.io import idpng

    def full(path, id_map):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(idpng, "write_id_png", full)
    out = tmp_path / "out"
    assert run(media / "still.png", "-o", out, "--checkpoint", media / "tiny.pth", "-q") == 1
    err = capsys.readouterr().err
    assert "no space left on the device (disk full)" in err and "still.png" in err
    assert listing(out) == []


def test_interrupted_while_tracking(media, tmp_path, monkeypatch, capsys):
    from entitysam.pipeline import segment as api

    real = api.preprocess_frame
    seen = []

    def interrupt_on_second(image, size):
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(image, size)

    monkeypatch.setattr(api, "preprocess_frame", interrupt_on_second)
    out = tmp_path / "out"
    assert run(media / "clip.mp4", "-o", out, "--checkpoint", media / "tiny.pth", "-q") == 130
    assert "interrupted; no result written" in capsys.readouterr().err
    assert listing(out) == []


def test_corrupt_frame_mid_video(media, tmp_path, capsys):
    folder = tmp_path / "broken"
    shutil.copytree(media / "frames", folder)
    data = (folder / "3.jpg").read_bytes()
    (folder / "3.jpg").write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    assert run(folder, "-o", out, "--checkpoint", media / "tiny.pth", "-q") == 1
    err = capsys.readouterr().err
    assert "broken: cannot read frame" in err and "3.jpg" in err
    assert listing(out) == []


def test_batch_continues_after_a_failure(media, tmp_path, capsys):
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "bad.mp4").write_text("not a video")
    write_frames(batch / "good", ["1", "2"])
    Image.new("RGB", (10, 10)).save(batch / "ignored.png")
    out = tmp_path / "out"
    rc = run("--batch", batch, "-o", out, "--checkpoint", media / "tiny.pth", "--save", "panoptic", "-q")
    assert rc == 1
    err = capsys.readouterr().err
    assert "bad: cannot read video" in err and "1 of 2 videos failed: bad" in err
    assert listing(out) == ["good"] and (out / "good" / MANIFEST).is_file()


def test_bad_command_lines(media, tmp_path, capsys):
    ck = ["--checkpoint", media / "tiny.pth"]
    assert run(tmp_path / "missing.mp4", "-o", tmp_path / "o", *ck, "-q") == 1
    assert "input not found" in capsys.readouterr().err
    assert run(media / "still.png", "-o", tmp_path / "o", *ck, "--save", "gif") == 2
    assert "unknown output format 'gif'" in capsys.readouterr().err
    assert run(media / "still.png", media / "clip.mp4", "-o", tmp_path / "o", *ck, "--save-logits", "x.npz") == 2
    assert "needs {video}" in capsys.readouterr().err
    assert run(media / "still.png", "-o", tmp_path / "o", *ck, "--start", "abc", "-q") == 2
    assert "invalid frame position 'abc'" in capsys.readouterr().err
    assert run("-o", tmp_path / "o", *ck) == 2
    assert "no INPUT given" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert run(media / "still.png", "-o", tmp_path / "file", *ck, "-q") == 2
    assert "is an existing file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_wrong_checkpoint(media, tmp_path, capsys):
    state = tiny_state_dict()
    state.pop("no_mem_embed")
    torch.save({"model": state}, tmp_path / "bad.pth")
    assert run(media / "still.png", "-o", tmp_path / "o", "--checkpoint", tmp_path / "bad.pth") == 1
    err = capsys.readouterr().err
    assert "checkpoint does not fit" in err and "no_mem_embed" in err
    assert run(media / "still.png", "-o", tmp_path / "o", "--checkpoint", media / "tiny.pth", "--model", "vit-s") == 1
    err = capsys.readouterr().err
    assert "fits the 'tiny' configuration" in err
    # the advice is one the command line takes (--model has no 'tiny'): leave --model out
    assert "--model tiny" not in err and "leave out --model to load it" in err
    assert run(media / "still.png", "-o", tmp_path / "o", "--checkpoint", media / "tiny.pth", "-q") == 0
    shutil.rmtree(tmp_path / "o")
    assert run(media / "still.png", "-o", tmp_path / "o", "--checkpoint", tmp_path / "none.pth") == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_metrics_subcommand_is_wired(capsys):
    assert cli.main(["metrics", "--help"]) == 0
    assert "pred_dir" in capsys.readouterr().out
    assert cli.main(["metrics"]) == 2  # its own usage error
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("segment", "download", "metrics"))


def test_python_api(media, model, reference, tmp_path):
    with model.segment(media / "clip.mp4") as result:
        assert len(result) == N_FRAMES and result.size == (H, W) and result.fps == FPS
        np.testing.assert_array_equal(np.stack(list(result)), reference.panoptic.id_maps)
        np.testing.assert_array_equal(result[-1], reference.panoptic.id_maps[-1])
        assert [e.id for e in result.entities] == reference.panoptic.segment_ids
        for e in result.entities:
            present = [t for t in range(N_FRAMES) if (reference.panoptic.id_maps[t] == e.id).any()]
            assert (e.first_frame, e.last_frame, e.num_frames) == (present[0], present[-1], len(present))
        info, first = next(result.items())
        assert (info.t, info.index, info.name) == (0, 0, "000000")
        saved = result.save(tmp_path / "api", formats=("entities",))
        assert listing(saved) == ["entities.json", MANIFEST]
    with pytest.raises(ValueError, match="closed"):
        list(result)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_on_cpu(model, dtype):
    frames = np.stack([scene(0)])
    with model.segment(frames, dtype=dtype) as result:
        assert len(result) == 1 and result.model_info["dtype"] == dtype
        assert result[0].shape == (H, W)


def test_exact_mode(media, model, reference, tmp_path, capsys):
    """`--exact` (official order of operations) runs through the same outputs; float32 only."""
    with model.segment(media / "clip.mp4", exact=True) as result:
        assert result.model_info["exact"] is True
        exact = np.stack(list(result))
    assert exact.shape == reference.panoptic.id_maps.shape
    assert (exact == reference.panoptic.id_maps).mean() > 0.99  # same maths, other rounding
    with pytest.raises(EntitySAMError, match="exact mode computes in float32"):
        model.segment(media / "clip.mp4", exact=True, dtype="bfloat16")
    with pytest.raises(EntitySAMError, match="exact mode computes in float32"):
        model.stream(media / "clip.mp4", exact=True, dtype="float16")
    ck = ["--checkpoint", media / "tiny.pth"]
    # a command-line error, found before the model is loaded: exit code 2, nothing written
    assert run(media / "still.png", "-o", tmp_path / "o", *ck, "--exact", "--dtype", "bfloat16", "-q") == 2
    assert "use --dtype float32" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert run(media / "clip.mp4", "-o", tmp_path / "o", *ck, "--exact", "--save", "panoptic", "-q") == 0
    manifest = json.loads((tmp_path / "o" / "clip" / MANIFEST).read_text())
    assert manifest["model"]["exact"] is True
    np.testing.assert_array_equal(read_pngs(tmp_path / "o" / "clip" / "panoptic", [f"{t:06d}" for t in range(N_FRAMES)]),
                                  exact)
