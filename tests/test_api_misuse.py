"""Python API misuses found by review: each raises an EntitySAMError with one message (never a bare
TypeError / ValueError / IndexError from deep inside), before any work, and writes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from entitysam import EntitySAM
from entitysam.errors import EntitySAMError


@pytest.fixture(scope="module")
def demo():
    return EntitySAM.from_pretrained("demo")


def _frames(n=2):
    return np.random.default_rng(0).integers(0, 255, (n, 32, 40, 3), dtype=np.uint8)


def _gen():
    yield _frames(1)[0]


@pytest.mark.parametrize("video, message", [
    (torch.zeros(2, 32, 40, 3, dtype=torch.uint8), "torch tensor"),
    (_gen(), "generator"),
    (b"clip.mp4", "bytes"),
    (3, "int"),
    ({"a": 1}, "dict"),
    ("", "empty path"),  # not the current folder
])
@pytest.mark.parametrize("api", ["segment", "stream"])
def test_unusable_video_argument(demo, api, video, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EntitySAMError, match=message):
        getattr(demo, api)(video)
    assert list(tmp_path.iterdir()) == []


def test_a_custom_sequence_of_frames_is_still_a_video(demo):
    class Frames:  # a Sequence by protocol registration, not a list
        def __init__(self, a): self.a = a
        def __len__(self): return len(self.a)
        def __getitem__(self, i): return self.a[i]
    from collections.abc import Sequence
    Sequence.register(Frames)
    with demo.segment(Frames(list(_frames()))) as result:
        assert len(result) == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"exact": "yes"}, "exact"),
    ({"on_frame": 3}, "on_frame"),
    ({"work_dir": 3}, "work_dir"),
    ({"work_dir": "MISSING"}, "work_dir"),
    ({"save_logits": 3}, "save_logits"),
])
def test_segment_keyword_types_checked_before_work(demo, kwargs, message, tmp_path):
    kwargs = {k: (tmp_path / "missing" if v == "MISSING" else v) for k, v in kwargs.items()}
    with pytest.raises(EntitySAMError, match=message):
        demo.segment(_frames(), **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_stream_output_must_be_a_path(demo):
    with pytest.raises(EntitySAMError, match="output"):
        demo.stream(_frames(), output=3)


def test_result_indexing_and_use_after_close(demo, tmp_path):
    with demo.segment(_frames(3)) as result:
        for bad in ("1", 1.5, slice(0, 2), True):
            with pytest.raises(EntitySAMError, match="integer"):
                result[bad]
        assert result[np.int64(-1)].shape == (32, 40)
        with pytest.raises(EntitySAMError, match="out of range") as info:
            result[3]
        assert isinstance(info.value, IndexError)  # still the sequence protocol's error
        for bad in (None, 3, b"out", ""):
            with pytest.raises(EntitySAMError, match="directory"):
                result.save(bad)
    for use in (lambda: list(result), lambda: result[0], lambda: list(result.items()),
                lambda: result.save(tmp_path / "out")):
        with pytest.raises(EntitySAMError, match="closed") as info:
            use()
        assert isinstance(info.value, ValueError)
    assert list(tmp_path.iterdir()) == []  # no staging folder left by the closed save


def test_overwrite_given_as_a_string_is_refused_not_taken_for_yes(demo, tmp_path):
    """save(overwrite="no") replaced an existing result: any non-empty string is truthy."""
    with demo.segment(_frames()) as result:
        first = result.save(tmp_path / "out", "panoptic")
        before = sorted(p.name for p in first.rglob("*"))
        with pytest.raises(EntitySAMError, match=r"overwrite must be True or False, got 'no'"):
            result.save(tmp_path / "out", "panoptic,entities", overwrite="no")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == before


@pytest.mark.parametrize("api, kwargs", [
    ("save", {"labels": "yes"}), ("save", {"progress": "yes"}), ("save", {"wait_lock": 1}),
    ("segment", {"progress": "no"}), ("segment", {"batched": "no"}), ("segment", {"exact": 1}),
    ("stream", {"overwrite": "no"}), ("stream", {"live": "yes"}), ("stream", {"keep_images": "no"}),
    ("stream", {"labels": 3}), ("stream", {"progress": "yes"}),
])
def test_flags_must_be_booleans(demo, api, kwargs, tmp_path):
    (name, value), = kwargs.items()
    with pytest.raises(EntitySAMError, match=rf"{name} must be True or False"):
        if api == "save":
            with demo.segment(_frames(1)) as result:
                result.save(tmp_path / "out", **kwargs)
        else:
            getattr(demo, api)(_frames(1), **kwargs)
    assert list(tmp_path.iterdir()) == []
    # numpy's booleans are booleans
    getattr(demo, "segment")(_frames(1), progress=np.bool_(False)).close()


@pytest.mark.parametrize("name, suggestion", [("../x", "'__x'"), ("a/b", "'a_b'"), (".hidden", "'_hidden'"),
                                              ("", "'_'"), (" x", "'x'"), (3, None)])
@pytest.mark.parametrize("api", ["segment", "stream"])
def test_a_name_that_is_not_one_folder_name_is_refused(demo, api, name, suggestion):
    """segment(name="../x") was accepted: the result's name is its folder name in batches and
    exports, where such a name cannot be used (export refuses a result naming itself so)."""
    with pytest.raises(EntitySAMError, match="name must be a non-empty string usable as one folder name") as info:
        getattr(demo, api)(_frames(1), name=name)
    if suggestion:
        assert suggestion in str(info.value)
    with demo.segment(_frames(1), name="a clip (2)") as result:  # spaces and brackets are fine
        assert result.name == "a clip (2)"


def test_masks_of_an_id_no_entity_has_is_refused():
    """result.masks("a") or masks(99) gave all-empty masks for every frame without a word."""
    from entitysam.pipeline.result import Entity

    model = EntitySAM.from_pretrained("demo")
    with model.segment(_frames(2)) as result:
        result.entities = [Entity(id=1, score=0.9, query_index=0, first_frame=0, last_frame=1, num_frames=2, area=4)]
        for bad, words in (("a", "an entity id is an integer"), (True, "an entity id is an integer"),
                           (99, r"no entity 99 in this result \(its ids: 1\)")):
            with pytest.raises(EntitySAMError, match=words):
                result.masks(bad)
        frames = list(result.masks(np.int64(1)))
        assert len(frames) == 2 and all(mask.shape == (32, 40) and mask.dtype == bool for _, mask in frames)


# ----------------------------------------------------------------------------- found by fuzzing the API


def _model_variants(demo):
    import copy

    with torch.device("meta"):
        meta = EntitySAM(demo.cfg).eval()
    return {"None": None, "a name": "demo", "a Linear": torch.nn.Linear(2, 2), "frames (swapped)": _frames(),
            "train mode": copy.deepcopy(demo).train(), "half": copy.deepcopy(demo).half(),
            "bfloat16": copy.deepcopy(demo).to(torch.bfloat16), "meta": meta}


@pytest.mark.parametrize("api", ["segment", "stream"])
def test_a_model_that_cannot_run_is_refused_before_any_work(demo, api, tmp_path):
    """segment(None, ...) / a half model / a meta model failed deep inside (AttributeError, a dtype
    mismatch in the first convolution, a meta tensor copied); a model in training mode gave
    random results without a word (dropout in the memory attention)."""
    from entitysam.pipeline.segment import segment
    from entitysam.pipeline.stream import stream

    run = {"segment": segment, "stream": stream}[api]
    for label, model in _model_variants(demo).items():
        with pytest.raises(EntitySAMError, match=r"^model (must be|is|weights)") as info:
            run(model, _frames(), work_dir=tmp_path) if api == "segment" else run(model, _frames())
        assert isinstance(info.value, ValueError), label
    assert list(tmp_path.iterdir()) == []


def test_loader_flags_names_and_folders_are_checked(tmp_path, monkeypatch):
    """allow_pickle="no" / download="no" are truthy (unpickle the file, download gigabytes);
    cache_dir=3 was the folder "3"; config=["tiny"] a bare TypeError (unhashable)."""
    monkeypatch.chdir(tmp_path)
    calls = {"allow_pickle must be True or False": lambda: EntitySAM.from_checkpoint(tmp_path / "x.pth",
                                                                                     allow_pickle="no"),
             "download must be True or False": lambda: EntitySAM.from_pretrained("vit-s", download="no"),
             "cache_dir must be a path": lambda: EntitySAM.from_pretrained("vit-s", cache_dir=3),
             "unknown model configuration": lambda: EntitySAM.from_checkpoint(tmp_path / "x.pth", config=["tiny"])}
    for words, call in calls.items():
        with pytest.raises(EntitySAMError, match=words) as info:
            call()
        assert isinstance(info.value, ValueError), words
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("api", ["segment", "stream"])
@pytest.mark.parametrize("option", ["fps", "max_frames"])
def test_true_is_no_number(demo, api, option):
    """fps=True ran at 1 frame per second, max_frames=True took one frame."""
    with pytest.raises(EntitySAMError, match=rf"{option} must be a positive"):
        getattr(demo, api)(_frames(), **{option: True})


def test_queue_size_is_an_invalid_argument(demo):
    """A bare EntitySAMError (no ValueError) naming "queue size", not the argument."""
    for bad in (0, True, 1.5, "4"):
        with pytest.raises(ValueError, match="queue_size must be"):
            demo.stream(_frames(), queue_size=bad)


def test_write_into_checks_its_arguments(demo, tmp_path, monkeypatch):
    """write_into(None) was a bare TypeError, write_into("") wrote into the current folder, a file
    gave NotADirectoryError from inside pathlib, labels="no" wrote labels."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    with demo.segment(_frames()) as result:
        for bad, words in ((None, "directory must be a path"), (3, "directory must be a path"),
                           ("", "directory is an empty path"), (tmp_path / "a-file", "is not a folder"),
                           # a missing folder: created for panoptic and entities alone (folders above it
                           # too), a bare FileNotFoundError naming no file for the overlay
                           (tmp_path / "missing" / "x", "missing/x does not exist")):
            with pytest.raises(EntitySAMError, match=words):
                result.write_into(bad, "entities")
        with pytest.raises(EntitySAMError, match="labels must be True or False"):
            result.write_into(tmp_path, "entities", labels="no")
        with pytest.raises(EntitySAMError, match="missing does not exist"):
            result.write_into(tmp_path / "missing", "overlay")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_result_whose_temporary_folder_was_deleted_says_so(demo, tmp_path):
    """A cleaner of the temporary folder deleting the id maps gave a FileNotFoundError from inside."""
    import shutil

    from entitysam.errors import ResultFileGoneError

    (tmp_path / "work").mkdir()
    with demo.segment(_frames(), work_dir=tmp_path / "work") as result:
        for folder in (tmp_path / "work").iterdir():
            shutil.rmtree(folder)
        for use in (lambda: result[0], lambda: list(result), lambda: result.save(tmp_path / "out")):
            with pytest.raises(ResultFileGoneError, match="gone from disk.*work_dir"):
                use()
    assert not (tmp_path / "out").exists()


def test_numpy_integers_are_integers(demo):
    """Notebooks pass numpy integers (a length from an array, an index from np.arange): stride,
    max_frames, max_pixels, delay and queue_size refused them while start and end took them. Now
    each is the int it holds; a numpy bool is still no count."""
    frames = _frames(5)
    assert len(demo.segment(frames, stride=np.int64(2))) == len(demo.segment(frames, stride=2)) == 3
    assert len(demo.segment(frames, max_frames=np.int32(2), max_pixels=np.int64(10**6))) == 2
    assert sum(1 for _ in demo.stream(frames, delay=np.int64(1), queue_size=np.uint8(3))) == 5
    for option in ("stride", "max_frames"):
        with pytest.raises(EntitySAMError, match=f"{option} must be a positive integer"):
            demo.segment(frames, **{option: np.bool_(True)})
