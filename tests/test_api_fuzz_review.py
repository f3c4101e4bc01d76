"""Review-API and dataset-generator misuses found by fuzzing the Python API: each raises an
EntitySAMError (also a ValueError) naming the argument, before anything is written; never a bare
TypeError / AttributeError from inside, and never the original replaced by a truthy "no"."""

from __future__ import annotations

import numpy as np
import pytest

from entitysam import EntitySAM
from entitysam.errors import EntitySAMError, InvalidArgumentError


@pytest.fixture(scope="module")
def result_dir(tmp_path_factory):
    frames = np.random.default_rng(0).integers(0, 255, (3, 48, 64, 3), dtype=np.uint8)
    out = tmp_path_factory.mktemp("review") / "clip"
    with EntitySAM.from_pretrained("demo").segment(frames) as result:
        result.save(out, formats="panoptic,entities")
    return out


def test_save_revision_replace_original_no_keeps_the_original(result_dir):
    """replace_original="no" (truthy) wrote the revision over the original."""
    from entitysam.review import EditSession, ResultFolder, save_revision

    before = (result_dir / "manifest.json").read_bytes()
    session = EditSession(ResultFolder.open(result_dir))
    session.apply({"op": "delete", "ids": [session.entities[0].id]})
    with pytest.raises(InvalidArgumentError, match="replace_original must be True or False, got 'no'"):
        save_revision(session, replace_original="no")
    assert (result_dir / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in result_dir.parent.iterdir()) == ["clip"]


def test_review_api_arguments(result_dir, tmp_path, monkeypatch):
    from entitysam.review import EditSession, ResultFolder, replay_edits, save_revision
    from entitysam.review.export import export

    monkeypatch.chdir(tmp_path)
    folder = ResultFolder.open(result_dir)
    session = EditSession(folder)
    calls = {
        "path must be a path": lambda: ResultFolder.open(None),
        "path is an empty path": lambda: ResultFolder.open(""),  # not the current folder
        "an EditSession edits a ResultFolder": lambda: EditSession(str(result_dir)),
        "ops must be a list": lambda: EditSession(folder, 3),
        "session must be an EditSession": lambda: save_revision(folder),
        "edits_json must be a path": lambda: replay_edits(result_dir, None),
        "view must be a ResultFolder": lambda: export(str(result_dir), "ytvis", tmp_path / "r.json"),
        "out must be a path": lambda: export(session, "ytvis", None),
        "unknown export format": lambda: export(session, ["ytvis"], tmp_path / "r.json"),
        "overwrite must be True or False": lambda: export(session, "ytvis", tmp_path / "r.json", overwrite="no"),
        "dest must be a path": lambda: save_revision(session, dest=3),
    }
    for words, call in calls.items():
        with pytest.raises(EntitySAMError, match=words) as info:
            call()
        assert isinstance(info.value, ValueError), words
    assert list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in result_dir.parent.iterdir()) == ["clip"]


@pytest.mark.parametrize("kwargs, words", [
    ({"num_videos": 0}, "num_videos must be >= 1"),
    ({"num_videos": 2.5}, "num_videos must be an integer"),
    ({"num_frames": True}, "num_frames must be an integer"),
    ({"num_frames": 2.5}, "num_frames must be an integer"),
    ({"width": 0}, "width must be >= 1"),
    ({"width": 10**9}, "width must be <= 8192"),
    ({"width": 8192, "height": 8192, "num_frames": 2}, "rendered in memory"),
    ({"height": -5}, "height must be >= 1"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"prefix": "../x"}, "prefix must be"),
    ({"split": "../x"}, "split must be"),
    ({"split_file": "no"}, "split_file must be True or False"),
    ({"jpeg_quality": 500}, "jpeg_quality must be <= 100"),
])
def test_make_vipseg_dataset_checks_before_writing(tmp_path, kwargs, words):
    """Each failed deep inside (ZeroDivisionError, MemoryError after 20 s, a bare TypeError),
    after writing part of the dataset, or not at all (prefix="../x" wrote outside images/)."""
    from entitysam.data.synthetic.vipseg import make_vipseg_dataset

    with pytest.raises(InvalidArgumentError, match=words):
        make_vipseg_dataset(tmp_path / "root", **{"num_videos": 1, "num_frames": 1, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_make_vipseg_dataset_root(tmp_path, monkeypatch):
    from entitysam.data.synthetic.vipseg import make_vipseg_dataset

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    for root, words in ((None, "root must be a path"), ("", "root is an empty path"), ("a-file", "not a folder")):
        with pytest.raises(InvalidArgumentError, match=words):
            make_vipseg_dataset(root, num_videos=1, num_frames=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
