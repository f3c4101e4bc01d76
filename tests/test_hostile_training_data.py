"""Hostile or mistaken training data: `entitysam train` reading a COCO panoptic dataset, resuming
from a checkpoint, its output folder, and the synthetic dataset generator.

The promise (README "Reliability", docs/training.md): one `error:` line naming the file, exit code
2 for a mistake found before training (1 for a file found unusable during it), never a traceback,
never training on made-up data, nothing outside the output written.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from PIL import Image


def _edit(path, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


@pytest.fixture
def coco(tmp_path):
    from entitysam.data.synthetic.coco import make_synthetic_coco_panoptic

    make_synthetic_coco_panoptic(tmp_path / "coco", num_images=3, seed=2)
    return tmp_path / "coco"


def _coco_json(root):
    return root / "annotations" / "panoptic_train2017.json"


def _train(root, tmp_path, *extra):
    from entitysam.train import cli as train_cli

    return train_cli.main(["--config", "tiny-stage2", f"data.root={root}", f"output_dir={tmp_path / 'out'}",
                           "solver.max_iter=2", "--quiet", *extra])


def _fifo(path):
    import os

    path.unlink()
    os.mkfifo(path)


def _sparse_over_the_json_limit(path):
    from entitysam.jsonio import MAX_JSON_BYTES

    with open(path, "r+b") as f:
        f.truncate(MAX_JSON_BYTES + 1)  # sparse: no disk used, nothing to read if it is sized first


def _link_loop(path):
    path.unlink()
    path.symlink_to(path.name)


def _replace_with_file(path):
    import shutil

    shutil.rmtree(path)
    path.write_text("not a folder")


TRAIN_DATA_MISTAKES = {
    # each was a traceback (JSONDecodeError, KeyError, ValueError of int(), TypeError)
    "invalid-json": (lambda r: _coco_json(r).write_text("{nope"), r"panoptic_train2017\.json is not valid JSON"),
    # was read whole (and decoded: twice its size in memory) before anything looked at it
    "json-over-the-limit": (lambda r: _sparse_over_the_json_limit(_coco_json(r)),
                            r"error: COCO panoptic JSON \S*panoptic_train2017\.json is 1073741825 bytes, more than the "
                            r"1 GiB a JSON file read here may hold \(parsed, it would take several times that in memory\)\n"),
    "no-annotations-key": (lambda r: _edit(_coco_json(r), lambda d: d.pop("annotations")),
                           r"no 'annotations' list"),
    "empty-annotations": (lambda r: _edit(_coco_json(r), lambda d: d.__setitem__("annotations", [])),
                          r"panoptic_train2017\.json: no annotations"),
    "annotation-without-file_name": (lambda r: _edit(_coco_json(r), lambda d: d["annotations"][1].pop("file_name")),
                                     r"annotations\[1\]: no 'file_name'"),
    "segment-id-string": (lambda r: _edit(_coco_json(r), lambda d: d["annotations"][1]["segments_info"][0]
                                          .__setitem__("id", "abc")),
                          r"annotations\[1\] segments_info\[0\]: segment id 'abc' is not an integer"),
    "images-not-a-list": (lambda r: _edit(_coco_json(r), lambda d: d.__setitem__("images", "x")),
                          r"'images' must be a list of objects"),
    # was trained with id 1 (int(1.5)) without a word
    "segment-id-fraction": (lambda r: _edit(_coco_json(r), lambda d: d["annotations"][1]["segments_info"][0]
                                            .__setitem__("id", 1.5)), r"segment id 1\.5 is not an integer"),
    # was dropped as a crowd segment (bool("0") is True)
    "iscrowd-string": (lambda r: _edit(_coco_json(r), lambda d: d["annotations"][1]["segments_info"][0]
                                       .__setitem__("iscrowd", "0")), r"segments_info\[0\]: iscrowd '0' is not 0 or 1"),
    # each trained to the end on clips without a target, without a word: a model that finds nothing
    "every-segment-crowd": (lambda r: _edit(_coco_json(r), lambda d: [s.__setitem__("iscrowd", 1) for a in
                                                                     d["annotations"] for s in a["segments_info"]]),
                            r"error: \S*panoptic_train2017\.json: none of its 3 images has a non-crowd segment "
                            r"\(each segments_info is empty or holds crowd segments only\)"),
    "no-segments": (lambda r: _edit(_coco_json(r), lambda d: [a.__setitem__("segments_info", [])
                                                              for a in d["annotations"]]),
                    r"none of its 3 images has a non-crowd segment"),
    # each was a FileNotFoundError traceback at the iteration that first drew the image (only the
    # first annotation's files were checked)
    "missing-image": (lambda r: (r / "train2017" / "000000000002.jpg").unlink(),
                      r"1 dataset file\(s\) missing: .*train2017/000000000002\.jpg"),
    "missing-png": (lambda r: (r / "panoptic_train2017" / "000000000003.png").unlink(),
                    r"1 dataset file\(s\) missing: .*panoptic_train2017/000000000003\.png"),
    # each was "no such file" / "missing": the file is there but is no file to read
    "json-fifo": (lambda r: _fifo(_coco_json(r)), r"error: COCO panoptic JSON \S*panoptic_train2017\.json is not a "
                                                  r"regular file\n"),
    "json-link-loop": (lambda r: _link_loop(_coco_json(r)), r"error: cannot read COCO panoptic JSON \S*panoptic_train2017\.json: Too "
                                                            r"many levels of symbolic links\n"),
    "image-fifo": (lambda r: _fifo(r / "train2017" / "000000000002.jpg"),
                   r"1 dataset file\(s\) unusable: \S*train2017/000000000002\.jpg \(not a regular file\)\n"),
    "png-link-loop": (lambda r: _link_loop(r / "panoptic_train2017" / "000000000003.png"),
                      r"1 dataset file\(s\) unusable: \S*panoptic_train2017/000000000003\.png \(Too many levels "
                      r"of symbolic links\)\n"),
    # each was found only when its turn came (exit 1, maybe hours in): a 0-byte file is seen in the stat made anyway
    "empty-image": (lambda r: (r / "train2017" / "000000000002.jpg").write_bytes(b""),
                    r"1 dataset file\(s\) unusable: \S*train2017/000000000002\.jpg \(empty\)\n"),
    "empty-png": (lambda r: (r / "panoptic_train2017" / "000000000003.png").write_bytes(b""),
                  r"1 dataset file\(s\) unusable: \S*panoptic_train2017/000000000003\.png \(empty\)\n"),
    # was "error: embedded null byte", naming no file and no entry of the json
    "png-name-with-nul": (lambda r: _edit(_coco_json(r), lambda d: d["annotations"][1].__setitem__("file_name", "a\0.png")),
                          r"annotations\[1\]: 'file_name' 'a\\x00\.png' holds a NUL character\n"),
    "image-name-with-nul": (lambda r: _edit(_coco_json(r), lambda d: d["images"][2].__setitem__("file_name", "a\0.jpg")),
                            r"images\[2\]: 'file_name' 'a\\x00\.jpg' holds a NUL character\n"),
    # each was accepted here: a file outside the dataset's folders was read when its sample was drawn
    # (here a PNG trained on as the image), or found missing there, or trained on from another folder
    "image-name-climbing-out": (lambda r: _edit(_coco_json(r), lambda d: d["images"][2].__setitem__(
                                    "file_name", "../panoptic_train2017/000000000003.png")),
                                r"images\[2\]: 'file_name' '\.\./panoptic_train2017/000000000003\.png' names a file "
                                r"outside data\.image_dir \(\S*train2017\): an absolute name or one with '\.\.' is "
                                r"refused; put the file there \(a symbolic link will do\)\n"),
    "png-name-climbing-out": (lambda r: _edit(_coco_json(r), lambda d: d["annotations"][1].__setitem__(
                                  "file_name", "sub/../../../elsewhere/000000000002.png")),
                              r"annotations\[1\]: 'file_name' 'sub/\.\./\.\./\.\./elsewhere/000000000002\.png' names "
                              r"a file outside data\.panoptic_dir \(\S*panoptic_train2017\)"),
    "png-name-absolute": (lambda r: _edit(_coco_json(r), lambda d: d["annotations"][1].__setitem__(
                              "file_name", str(r / "train2017" / "000000000002.png"))),
                          r"annotations\[1\]: 'file_name' '/\S+/train2017/000000000002\.png' names a file "
                          r"outside data\.panoptic_dir"),
    # silent: every unlabeled pixel (id 0) of the image was trained on as one entity
    "segment-id-0": (lambda r: _edit(_coco_json(r), lambda d: d["annotations"][1]["segments_info"][0]
                                     .__setitem__("id", 0)),
                     r"annotations\[1\] segments_info\[0\]: segment id 0 is the panoptic PNG's value for pixels "
                     r"of no segment\n"),
    # silent: one id listed as a crowd and as an entity was trained on as an entity
    "segment-id-twice": (lambda r: _edit(_coco_json(r), lambda d: d["annotations"][1]["segments_info"].append(
                             dict(d["annotations"][1]["segments_info"][0], iscrowd=1))),
                         r"annotations\[1\] segments_info\[\d+\]: segment id \d+ is also segments_info\[0\]'s\n"),
    # silent: the last of two images with one id was taken (here its size differs: exit 1 when its
    # turn came; of the same size, the masks were trained onto another picture)
    "image-id-twice": (lambda r: _edit(_coco_json(r), lambda d: d["images"][1].__setitem__("id", 1)),
                       r"images\[1\]: id 1 is also images\[0\]'s, which names another file "
                       r"\('000000000001\.jpg', not '000000000002\.jpg'\), and \S+ annotations\[\d\] uses it\n"),
    # was "no such folder": a file is there
    "root-is-a-file": (lambda r: _replace_with_file(r), r"error: data\.root '\S*coco': not a folder \(the dataset root\)\n"),
    "image-dir-is-a-file": (lambda r: _replace_with_file(r / "train2017"),
                            r"error: data\.image_dir '\S*train2017': not a folder\n"),
}


@pytest.mark.parametrize("name", list(TRAIN_DATA_MISTAKES))
def test_train_dataset_mistakes_are_one_line_and_exit_2_before_any_work(coco, tmp_path, capsys, name):
    spoil, message = TRAIN_DATA_MISTAKES[name]
    spoil(coco)
    assert _train(coco, tmp_path) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and re.search(message, err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("quiet", [True, False])
def test_dataset_mostly_without_entities_trains_with_a_warning(coco, tmp_path, capsys, quiet):
    """2 of 3 images with no non-crowd segment: trained on without a word (their clips teach every
    query to find nothing). Now a warning on stderr (--quiet too) and in log.txt; the run goes on."""
    _edit(_coco_json(coco), lambda d: [a.__setitem__("segments_info", []) for a in d["annotations"][1:]])
    from entitysam.train import cli as train_cli

    args = ["--config", "tiny-stage2", f"data.root={coco}", f"output_dir={tmp_path / 'out'}", "solver.max_iter=1"]
    assert train_cli.main(args + ["--quiet"] * quiet) == 0
    warning = ("warning: only 1 of 3 images (33.3%) have a non-crowd segment; the others are trained on as "
               "pictures of nothing (check the json's segments_info and iscrowd flags)")
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "warning" in line] == [f"[entitysam.train] {warning}"], err
    assert (len(err.splitlines()) == 1) == quiet, err
    assert warning in (tmp_path / "out" / "log.txt").read_text()


def test_dataset_half_without_entities_trains_without_a_warning(coco, tmp_path, capsys):
    _edit(_coco_json(coco), lambda d: d["annotations"][2].__setitem__("segments_info", []))
    assert _train(coco, tmp_path, "solver.max_iter=1") == 0
    assert capsys.readouterr().err == ""
    assert "warning" not in (tmp_path / "out" / "log.txt").read_text()


def _corrupt_image(r):
    (r / "train2017" / "000000000002.jpg").write_bytes(b"garbage")


def _jpeg_panoptic(r):
    p = r / "panoptic_train2017" / "000000000001.png"
    Image.open(p).convert("RGB").save(p, format="JPEG")


def _other_size_image(r):
    p = r / "train2017" / "000000000001.jpg"
    Image.open(p).resize((50, 40)).save(p)


def _bomb_header_image(r):
    """A PNG under the image's name whose header claims 12000x12000 (144 MP), one row of data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    (r / "train2017" / "000000000002.jpg").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * (1 + 3 * 12000))) + chunk(b"IEND", b""))


def _panoptic_ids(r, n):
    from entitysam.io.idpng import decode_ids

    return decode_ids(np.asarray(Image.open(r / "panoptic_train2017" / f"00000000000{n}.png").convert("RGB")))


def _bgr_panoptic(r):
    p = r / "panoptic_train2017" / "000000000002.png"
    Image.fromarray(np.ascontiguousarray(np.asarray(Image.open(p).convert("RGB"))[..., ::-1])).save(p)


UNREADABLE_DURING_TRAINING = {
    # was decoded in full (a real 420 KB bomb: 1.8 GB per loader process), after Pillow's
    # DecompressionBombWarning printed two lines
    "image-over-50-megapixels": (_bomb_header_image, r"train2017/000000000002\.jpg is 12000x12000 = 144\.0 megapixels, "
                                                     r"over the limit of 50 megapixels: refused before decoding it"),
    "corrupt-image": (_corrupt_image, r"cannot read .*train2017/000000000002\.jpg: cannot identify image file"),
    # trained on without a word: JPEG artefacts are made-up ids, a stretched mask is another picture's
    "jpeg-panoptic": (_jpeg_panoptic, r"panoptic file .*000000000001\.png: a JPEG image of mode RGB, not an 8-bit"),
    "image-of-another-size": (_other_size_image, r"000000000001\.png is \d+x\d+ but its image .*000000000001\.jpg "
                                                 r"is 50x40"),
    # silent: every clip of the image was trained on as a picture of nothing
    "png-with-none-of-its-ids": (_bgr_panoptic, r"panoptic file \S*000000000002\.png holds none of the \d+ segment ids "
                                                r"its segments_info lists \(the first, \d+, is RGB \(\d+, \d+, \d+\)\): "
                                                r"not this annotation's PNG, or not encoded as id = R \+ 256 G \+ 65536 B"),
}


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("name", list(UNREADABLE_DURING_TRAINING))
def test_unreadable_file_met_during_training_is_one_line_and_exit_1(coco, tmp_path, capsys, name, workers):
    """Met in the data loader (also in a worker process): one line naming the file, no traceback."""
    spoil, message = UNREADABLE_DURING_TRAINING[name]
    spoil(coco)
    assert _train(coco, tmp_path, "solver.max_iter=3", f"data.num_workers={workers}") == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and re.search(message, err), err


def test_a_data_loader_process_that_dies_is_one_line_and_exit_1(coco, tmp_path, capsys, monkeypatch):
    """A loader worker killed (the out-of-memory killer) was torch's RuntimeError traceback."""
    import os
    import signal

    import torch

    from entitysam.train import data as train_data

    real = train_data.ClipDataset.__getitem__

    def dies_in_a_worker(self, position):
        if torch.utils.data.get_worker_info() is not None and position >= 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, position)

    monkeypatch.setattr(train_data.ClipDataset, "__getitem__", dies_in_a_worker)
    assert _train(coco, tmp_path, "solver.max_iter=3", "data.num_workers=1") == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert re.match(r"error: a data loader process stopped: DataLoader worker \(pid\(s\) \d+\) exited unexpectedly "
                    r"\(killed for lack of memory\? data\.num_workers=1: fewer use less\)\n$", err), err


SWAPPED_DURING_TRAINING = {"image": "train2017/000000000002.jpg", "panoptic-png": "panoptic_train2017/000000000003.png"}


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("name", list(SWAPPED_DURING_TRAINING))
def test_dataset_file_replaced_by_a_pipe_during_training_is_one_line_not_a_hang(coco, tmp_path, capsys, monkeypatch,
                                                                               name, workers):
    """A file checked at start-up, then swapped for a named pipe before its turn came: Image.open
    by name waited for a writer for ever, in the main process or a loader worker, and the run hung
    without a word. Now one line naming the file, exit 1, in seconds."""
    from _blocking import release_readers, swap_for_a_pipe, within
    from entitysam.train import trainer

    target = coco / SWAPPED_DURING_TRAINING[name]
    check = trainer.read_panoptic_dataset

    def check_then_swap(*args, **kwargs):
        records = check(*args, **kwargs)
        swap_for_a_pipe(target)
        return records

    monkeypatch.setattr(trainer, "read_panoptic_dataset", check_then_swap)
    try:
        code = within(60, _train, coco, tmp_path, "solver.max_iter=3", f"data.num_workers={workers}")
    finally:
        release_readers(target)
    err = capsys.readouterr().err
    assert code == 1, err
    assert re.fullmatch(rf"error: cannot read \S*{re.escape(target.name)}: not a regular file any more \(it was one "
                        r"when the training started: replaced during the run\?\)\n", err), err


def test_a_segment_absent_from_its_png_is_no_error(coco, tmp_path, capsys):
    """Only a PNG holding none of its listed ids is refused: one listed segment without pixels (the
    official mapper's empty mask) is trained on as before, the others of its image kept."""
    absent = next(i for i in range(1, 1 << 24) if not (_panoptic_ids(coco, 1) == i).any())
    _edit(_coco_json(coco), lambda d: d["annotations"][0]["segments_info"][0].__setitem__("id", absent))
    assert _train(coco, tmp_path) == 0, capsys.readouterr().err
    assert capsys.readouterr().err == ""


def test_training_on_images_far_wider_than_tall(coco, tmp_path, capsys):
    """An image 2000x1: the resize to the clip's scale rounded its height to 0 rows, a ValueError
    traceback from Image.resize in the data loader; now a one-pixel-high clip, trained on."""
    for p in (coco / "train2017").iterdir():
        Image.new("RGB", (2000, 1), (10, 20, 30)).save(p, format="JPEG")
    for p in (coco / "panoptic_train2017").iterdir():
        Image.open(p).convert("RGB").resize((2000, 1), Image.NEAREST).save(p)
    assert _train(coco, tmp_path) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "model_final.pth").is_file()


def test_checkpoint_that_cannot_be_written_is_one_line_and_leaves_no_part(coco, tmp_path, capsys):
    """Was an IsADirectoryError traceback (a full disk: an OSError traceback)."""
    target = tmp_path / "out" / "model_0000000.pth"
    target.mkdir(parents=True)  # a folder where the first checkpoint goes
    assert _train(coco, tmp_path, "solver.checkpoint_period=1") == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: cannot write the checkpoint {target}: Is a directory"], err
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert not (target.parent / "last_checkpoint").exists() and not any(target.iterdir())


# ----------------------------------------------------------------------------- resume


@pytest.fixture
def trained(coco, tmp_path):
    """A finished 2-iteration tiny-stage2 run in tmp_path/out (its model_final.pth)."""
    assert _train(coco, tmp_path) == 0
    return tmp_path / "out" / "model_final.pth"


def _resume_cases(ckpt, tmp_path):
    import torch

    torch.save({"model": {}}, tmp_path / "weights_only.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    (tmp_path / "notes.txt").write_text("hello world\n")
    (tmp_path / "my.yaml").write_text("checkpoint: no\nsolver:\n  max_iter: 3\n")
    (tmp_path / "empty").mkdir()
    return {
        # each was a traceback: FileNotFoundError, load_state_dict's RuntimeError, KeyError, TypeError
        "missing-path": ([f"resume={tmp_path / 'nope.pth'}"], 2, r"resume checkpoint not found: .*nope\.pth"),
        "other-model": ([f"resume={ckpt}", "model.name=demo"], 1,
                        r"checkpoint does not fit the 'demo' model \(.*model_final\.pth\)"),
        "not-a-training-checkpoint": ([f"resume={tmp_path / 'weights_only.pth'}"], 1,
                                      r"weights_only\.pth: not a checkpoint written by `entitysam train`"),
        "a-list": ([f"resume={tmp_path / 'list.pth'}"], 1, r"list\.pth: not a checkpoint written by `entitysam train`"),
        "other-trainable-set": ([f"resume={ckpt}", "model.trainable=all"], 1,
                                r"model_final\.pth: its trainer state does not fit this run"),
        # the cause was torch's unpickler's: "not a readable PyTorch checkpoint (...): 101"
        "text-file": ([f"resume={tmp_path / 'notes.txt'}"], 1,
                      r"^error: cannot read checkpoint \S*/notes\.txt: it is a text file \(starting 'hello world'\), "
                      r"not a checkpoint \(torch\.save writes binary files\)\n$"),
        # "c" is pickle's GLOBAL: "refusing ...: it holds pickled Python objects (heckpoint)", allow_pickle advised
        "yaml-starting-with-c": ([f"resume={tmp_path / 'my.yaml'}"], 1,
                                 r"^error: cannot read checkpoint \S*/my\.yaml: it is a text file \(starting "
                                 r"'checkpoint: no'\), not a checkpoint \(torch\.save writes binary files\)\n$"),
        # each was "resume checkpoint not found: FOLDER", of a folder that is there
        "run-folder": ([f"resume={ckpt.parent}"], 2,
                       rf"^error: resume={re.escape(str(ckpt.parent))} is a folder, not a checkpoint file: pass the "
                       rf"checkpoint in it, resume={re.escape(str(ckpt))} \(its last_checkpoint\)\n$"),
        "folder-without-checkpoint": ([f"resume={tmp_path / 'empty'}"], 2,
                                      r"^error: resume=\S*/empty is a folder, not a checkpoint file, and it holds no "
                                      r"checkpoint \(\*\.pth\)\n$"),
        "own-output-folder": ([f"resume={tmp_path / 'again' / 'out'}"], 2,
                              r"^error: resume=\S*/again/out is a folder, not a checkpoint file: pass a checkpoint in "
                              r"it, e\.g\. resume=\S*/again/out/model_0000009\.pth; to continue this output_dir's run, "
                              r"resume=auto \(the default\) finds its checkpoint\n$"),
    }


@pytest.mark.parametrize("name", ["missing-path", "other-model", "not-a-training-checkpoint", "a-list",
                                  "other-trainable-set", "text-file", "yaml-starting-with-c", "run-folder",
                                  "folder-without-checkpoint", "own-output-folder"])
def test_unusable_resume_checkpoint_is_an_error_not_a_traceback(coco, tmp_path, trained, capsys, name):
    extra, code, message = _resume_cases(trained, tmp_path)[name]
    if name == "own-output-folder":  # a folder with checkpoints but no last_checkpoint
        (tmp_path / "again" / "out").mkdir(parents=True)
        for n in (0, 9):
            (tmp_path / "again" / "out" / f"model_{n:07d}.pth").write_bytes(trained.read_bytes())
    capsys.readouterr()
    assert _train(coco, tmp_path / "again", "solver.max_iter=3", *extra) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and re.search(message, err), err
    if name != "other-model":  # that one lists every differing key, as for `entitysam segment --checkpoint`
        assert len(err.strip().splitlines()) == 1, err


def test_auto_resume_with_its_checkpoint_gone_does_not_start_over(coco, tmp_path, trained, capsys):
    """output_dir/last_checkpoint naming a deleted file: the run silently restarted at iteration 0
    and overwrote the folder's checkpoints; now one line, exit 2, nothing touched."""
    out = trained.parent
    (out / "last_checkpoint").write_text("model_0000001.pth")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert _train(coco, tmp_path, "solver.max_iter=4") == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: .*last_checkpoint names the checkpoint .*model_0000001\.pth, which is not a file: "
                        r".*resume=never.*\n", err), err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


# ----------------------------------------------------------------------------- synthetic data


def test_synthetic_coco_generator_never_replaces_a_real_dataset(tmp_path, capsys):
    """Pointed at a folder holding a COCO panoptic json (e.g. datasets/coco), the generator replaced
    annotations/panoptic_train2017.json and the train2017/0000000000NN.jpg images it names; and
    --num-images 0 or -3 wrote an empty dataset. Now refused (exit 2), nothing written."""
    from entitysam.data.synthetic.coco import main

    real = tmp_path / "coco"
    (real / "annotations").mkdir(parents=True)
    (real / "annotations" / "panoptic_train2017.json").write_text('{"info": {"description": "COCO 2017"}}')
    (real / "train2017").mkdir()
    (real / "train2017" / "000000000001.jpg").write_bytes(b"a real picture")
    before = {p: p.read_bytes() for p in real.rglob("*") if p.is_file()}
    for argv, message in (([str(real)], r"is not empty and does not hold a synthetic dataset"),
                          ([str(tmp_path / "new"), "--num-images", "0"], r"num_images must be a positive integer")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert re.fullmatch(rf"error: .*{message}.*\n", err), err
    assert {p: p.read_bytes() for p in real.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "new").exists()
    main([str(tmp_path / "synth"), "--num-images", "1"])  # new, then its own dataset again: fine
    main([str(tmp_path / "synth"), "--num-images", "2"])
    assert "wrote 2 images" in capsys.readouterr().out


def test_training_reads_a_16_bit_grayscale_image_as_inference_does(tmp_path):
    """convert("RGB") clipped 16-bit grayscale at 255 (a white picture, trained on without a word);
    now scaled to 8 bits like io.sources.images.image_to_rgb (what segmenting the file sees)."""
    from entitysam.io.sources.images import image_to_rgb
    from entitysam.train.data import load_rgb

    gray = np.linspace(0, 65535, 24 * 32).reshape(24, 32).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as im:
        want = image_to_rgb(im)
    got = load_rgb(str(tmp_path / "g.png"))
    np.testing.assert_array_equal(got, want)
    assert got.shape == (24, 32, 3) and 120 <= got[12, 16, 0] <= 136  # mid-gray, not white


@pytest.mark.parametrize("where", ["the-json-itself", "under-the-json"])
def test_train_output_dir_on_a_file_is_one_line_and_exit_2(coco, tmp_path, capsys, where):
    """output_dir naming a file (or a path under one) was a FileExistsError / NotADirectoryError
    traceback after the model was built; now refused first, the file untouched."""
    from entitysam.train import cli as train_cli

    js = _coco_json(coco)
    before = js.read_bytes()
    out = js if where == "the-json-itself" else js / "run"
    code = train_cli.main(["--config", "tiny-stage2", f"data.root={coco}", f"output_dir={out}", "solver.max_iter=1",
                           "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and re.fullmatch(r"error: output_dir '.*': .*(exists and is not a folder|is not a folder)\n",
                                      err), err
    assert js.read_bytes() == before


def test_a_diverging_run_says_so_in_one_line(coco, tmp_path, capsys):
    """A learning rate far too high made the predictions NaN: the Hungarian matcher's scipy call
    raised "matrix contains invalid numeric entries" with a traceback, saying nothing of why."""
    code = _train(coco, tmp_path, "solver.max_iter=4", "solver.base_lr=1e30", "solver.clip_grad_norm=0")
    err = capsys.readouterr().err
    assert code == 1
    assert re.search(r"^error: training diverged at iteration \d+: the model's predictions became infinite or NaN; "
                     r"lower solver\.base_lr \(now 1e\+30\) or clip gradients", err, re.M), err
    assert "Traceback" not in err and "invalid numeric entries" not in err


def test_a_loss_that_is_not_finite_is_a_divergence_with_its_iteration(coco, tmp_path, capsys, monkeypatch):
    from entitysam.errors import TrainingDivergedError
    from entitysam.train.criterion import Criterion

    called = Criterion.__call__

    def nan_dice(self, *args, **kwargs):
        losses, stats = called(self, *args, **kwargs)
        return {**losses, "loss_dice": losses["loss_dice"] * float("nan")}, stats

    monkeypatch.setattr(Criterion, "__call__", nan_dice)
    assert issubclass(TrainingDivergedError, FloatingPointError)  # what the loop raised before
    code = _train(coco, tmp_path)
    err = capsys.readouterr().err
    assert code == 1
    assert re.search(r"^error: training diverged at iteration 0: the loss became infinite or NaN \(.*loss_dice nan",
                     err, re.M), err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- full disk


@pytest.mark.parametrize("limit,period,message", [
    # was an OSError traceback from Path.write_text before anything was trained
    (200, 3, r"cannot write \S*/out/config\.json: File too large"),
    # was "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0" with
    # a traceback: torch.save's zip writer, closed after the failed write, hid the OSError
    (100_000, 1, r"cannot write the checkpoint \S*/out/model_0000000\.pth: File too large"),
], ids=["config-json", "checkpoint-part-way"])
def test_training_on_a_full_disk_is_one_line_and_exit_1(coco, tmp_path, limit, period, message):
    from _disk_full import everything, one_error_line, run_limited

    r = run_limited(limit, "train", "--config", "tiny-stage2", f"data.root={coco}", f"output_dir={tmp_path / 'out'}",
                    "solver.max_iter=2", f"solver.checkpoint_period={period}", "--quiet", cwd=tmp_path)
    assert r.returncode == 1 and re.fullmatch(f"error: {message}", one_error_line(r.stderr)), r.stderr
    assert not [p for p in everything(tmp_path / "out") if p.startswith(".")]  # no temporary file left


def test_training_log_on_a_full_disk_is_one_line_and_exit_1(coco, tmp_path, capsys, monkeypatch):
    """metrics.csv / metrics.jsonl that cannot be written: an OSError traceback."""
    from _disk_full import FullFile
    from entitysam.train import logger

    opened = logger.open_regular_for_writing  # (metrics.csv and metrics.jsonl are opened with it)
    monkeypatch.setattr(logger, "open_regular_for_writing", lambda *a, **kw: FullFile(opened(*a, **kw)))
    assert _train(coco, tmp_path) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: cannot write the training log in \S*/out: No space left on device\n", err), err


def test_log_txt_on_a_full_disk_stops_the_run_in_one_line(coco, tmp_path):
    """log.txt that cannot grow (an earlier run's log at the file size limit): Python's logging
    printed "--- Logging error ---" and a traceback for every record while training went on."""
    from _disk_full import one_error_line, run_limited

    out = tmp_path / "out"
    out.mkdir()
    (out / "log.txt").write_text("x" * 9999 + "\n")
    r = run_limited(10_000, "train", "--config", "tiny-stage2", f"data.root={coco}", f"output_dir={out}",
                    "solver.max_iter=3", "--quiet", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert one_error_line(r.stderr) == f"error: cannot write the training log {out / 'log.txt'}: File too large"
    assert not list(out.glob("*.pth"))  # stopped at the first iteration's log, as for metrics.jsonl


def test_log_txt_failing_mid_run_stops_it_like_metrics(coco, tmp_path, capsys, monkeypatch):
    """A disk that fills up during the run (log.txt's writes fail from the second checkpoint's
    line on): the run stops at that iteration with one line; the checkpoint before stays."""
    from _disk_full import enospc
    from entitysam.train.logger import LogFile

    class Filling:
        def __init__(self, f):
            self.f, self.lines = f, 0

        def write(self, text):
            self.lines += 1
            if self.lines > 2:  # the training line and the first "saved" line fit
                raise enospc()
            return self.f.write(text)

        def __getattr__(self, name):
            return getattr(self.f, name)

    opened = LogFile._open  # (log.txt's handler: logging.FileHandler opening a regular file only)
    monkeypatch.setattr(LogFile, "_open", lambda self: Filling(opened(self)))
    assert _train(coco, tmp_path, "solver.max_iter=4", "solver.checkpoint_period=1") == 1
    out = tmp_path / "out"
    assert capsys.readouterr().err == f"error: cannot write the training log {out / 'log.txt'}: No space left on device\n"
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000000.pth", "model_0000001.pth"]
    assert (out / "log.txt").read_text().count("saved") == 1


# ----------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("entry", [["entitysam", "train"], ["entitysam.train"]], ids=["entitysam-train", "python-m"])
def test_ctrl_c_during_the_first_steps_is_one_line_and_exit_130(coco, tmp_path, entry):
    """`python -m entitysam.train` (the command torchrun runs) printed a KeyboardInterrupt
    traceback from wherever the step was; `entitysam train` already said `error: interrupted`."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", *entry, "--config", "tiny-stage2", f"data.root={coco}",
                             f"output_dir={out}", "solver.max_iter=500", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while "training tiny-stage2" not in ((out / "log.txt").read_text() if (out / "log.txt").exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.05)
        time.sleep(0.3)  # inside the first steps
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130 and err.splitlines()[-1:] == ["error: interrupted"], err
    assert "Traceback" not in err, err


def test_progress_lines_whose_reader_went_away_are_one_line(coco, tmp_path):
    """`python -m entitysam.train ... | head -1` (the command torchrun runs) ended with a
    BrokenPipeError traceback from the progress print; `entitysam train` said this line."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "entitysam.train", "--config", "tiny-stage2", f"data.root={coco}",
                             f"output_dir={tmp_path / 'out'}", "solver.max_iter=3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc.stdout.close()  # the reader is gone before the first progress line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert err.splitlines()[-1:] == ["error: the output was cut short: its reader closed the pipe (broken pipe)"], err
    assert "Traceback" not in err and "Exception ignored" not in err, err


# ----------------------------------------------------------------------------- its output folder


def test_a_resumed_run_drops_log_records_it_cannot_read(coco, tmp_path, trained, capsys):
    """Resuming rewrites metrics.jsonl and metrics.csv up to the iteration it resumes at. A line it
    could not read as a record (a number or a list in the JSONL, an iteration that is no number
    in the CSV, bytes that are not UTF-8, a NUL, a field over csv's size limit) was a traceback
    (AttributeError, ValueError, UnicodeDecodeError) before the run resumed; it is dropped now."""
    out = trained.parent
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b'5\n[1]\n{"iteration": "x"}\n\xff{"iteration": 0}\n' + b"[" * 100000 + b"\n")
    with open(out / "metrics.csv", "ab") as f:
        f.write(b"x,1\n1\x00,2\n\xff,3\n\xb2,4\n" + b"9" * 200000 + b"\n")
    capsys.readouterr()
    assert _train(coco, tmp_path, "solver.max_iter=3") == 0, capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2]
    lines = (out / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["iteration", "0", "1", "2"]


@pytest.mark.parametrize("name", ["config.json", "log.txt", "metrics.jsonl", "metrics.csv"])
def test_a_named_pipe_in_place_of_a_file_of_the_run_is_refused_not_waited_on(coco, tmp_path, name):
    """config.json, log.txt and the metrics logs were opened for writing by name: a named pipe there
    made the run wait for a reader for ever. Now one line naming it, exit 1, at once."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "entitysam.train", "--config", "tiny-stage2", f"data.root={coco}",
                           f"output_dir={out}", "solver.max_iter=1", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert re.fullmatch(rf"error: cannot write .*{re.escape(str(out / name))}: not a regular file \(a named pipe, "
                        r"a device or a socket\)\n", proc.stderr), proc.stderr


def test_a_killed_runs_half_csv_row_is_not_kept_as_an_earlier_iteration(tmp_path):
    """A run killed while writing row 200 of metrics.csv leaves "20" of it: read as iteration 20,
    that half row was kept on resuming at 200 (a second, empty iteration-20 row). A row with
    fields missing, or a last line without its line break, is dropped."""
    from entitysam.train.logger import MetricWriter

    writer = MetricWriter(tmp_path, 0, tensorboard=False)
    for it in (10, 20, 200):
        writer.write({"iteration": it, "lr": 0.1, "total_loss": 1.5})
    writer.close()
    csv_path = tmp_path / "metrics.csv"
    text = csv_path.read_text(encoding="utf-8")
    csv_path.write_text(text[:text.rindex("200,") + 2], encoding="utf-8")  # "...\n20"
    MetricWriter(tmp_path, 200, tensorboard=False).close()
    rows = csv_path.read_text(encoding="utf-8").splitlines()
    assert [r.split(",")[0] for r in rows] == ["iteration", "10", "20"], rows
    assert rows[2].startswith("20,0.1,1.5")


def test_a_resumed_runs_csv_keeps_a_damaged_byte_in_any_locale(tmp_path):
    """metrics.csv is read as UTF-8 (a damaged byte becomes U+FFFD) but was written in the locale's
    encoding: in an ASCII (or cp1252) locale, resuming over a kept row with a damaged byte was a
    UnicodeEncodeError traceback, with the file half rewritten. It is UTF-8 both ways now."""
    import subprocess
    import sys

    from entitysam.train.logger import MetricWriter

    writer = MetricWriter(tmp_path, 0, tensorboard=False)
    writer.write({"iteration": 10, "lr": 0.1})
    writer.close()
    with open(tmp_path / "metrics.csv", "ab") as f:
        f.write(b"15,0.0\xff1" + b"," * 12 + b"\n")  # a whole row, one byte damaged
    code = ("import sys; from entitysam.train.logger import MetricWriter as W; "
            "w = W(sys.argv[1], 30, tensorboard=False); w.write({'iteration': 30, 'lr': 'r\\u00e9'}); w.close()")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "LC_ALL": "C", "LANG": "C",
           "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": "ascii"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = (tmp_path / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert [r.split(",")[0] for r in rows] == ["iteration", "10", "15", "30"], rows
    assert rows[2].startswith("15,0.0\ufffd1") and rows[3].startswith("30,r\u00e9")


def test_an_image_id_named_twice_that_no_annotation_uses_is_no_error(coco):
    # a merged json whose `images` ids overlap where nothing refers to them: the official reader never
    # looks at `images`, so this trains there; only a used id is ambiguous
    from entitysam.train.data import read_panoptic_dataset

    _edit(_coco_json(coco), lambda d: d["images"].append({"id": 999, "file_name": "a.jpg"})
          or d["images"].append({"id": 999, "file_name": "b.jpg"}))
    records = read_panoptic_dataset(coco)
    assert len(records) == 3


def test_an_absolute_file_name_inside_its_folder_is_that_file(coco):
    """An absolute name of a file in its own folder was refused as 'outside' it, with the advice to
    put the file where it already was. ('..' stays refused: a link before it leads elsewhere than its
    letters say.)"""
    from entitysam.train.dataset_index import read_panoptic_dataset
    from entitysam.train.samples import DatasetError

    before = [(r.image_path, r.panoptic_path) for r in read_panoptic_dataset(coco)]
    _edit(_coco_json(coco), lambda d: [e.__setitem__("file_name", str(coco / folder / e["file_name"]))
                                       for folder, entries in (("panoptic_train2017", d["annotations"]),
                                                               ("train2017", d["images"])) for e in entries])
    after = [(r.image_path, r.panoptic_path) for r in read_panoptic_dataset(coco)]
    assert [tuple(map(os.path.realpath, p)) for p in after] == [tuple(map(os.path.realpath, p)) for p in before]
    _edit(_coco_json(coco), lambda d: d["images"][1].__setitem__("file_name", str(coco / "train2017")))
    with pytest.raises(DatasetError, match="names a file outside"):  # the folder itself is no file in it
        read_panoptic_dataset(coco)


def test_a_file_name_that_is_a_link_leading_out_of_the_folder_is_followed(coco, tmp_path):
    """Only the json's names are checked: a plain name whose file in the folder is a symbolic link
    to another place (a dataset assembled from links) is the user's arrangement, followed."""
    from entitysam.train.dataset_index import read_panoptic_dataset

    image = coco / "train2017" / "000000000002.jpg"
    elsewhere = tmp_path / "elsewhere.jpg"
    image.rename(elsewhere)
    image.symlink_to(elsewhere)
    records = read_panoptic_dataset(coco)
    assert [os.path.realpath(r.image_path) for r in records][1] == str(elsewhere.resolve())
