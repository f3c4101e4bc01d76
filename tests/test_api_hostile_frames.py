"""Python API audit with hostile inputs: what a caller gets wrong is one EntitySAMError naming the
argument, never a bare error from numpy / pathlib / the file system, an argument ignored without a
word, or a frame limit that does not apply."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from entitysam import EntitySAM
from entitysam.errors import EntitySAMError, SourceError
from entitysam.io.sources import FrameSelection, open_source


@pytest.fixture(scope="module")
def demo(one_torch_thread):
    return EntitySAM.from_pretrained("demo")


def _frames(n=2, h=32, w=40):
    return np.random.default_rng(0).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("api", ["segment", "stream"])
def test_max_pixels_applies_to_an_array_before_any_work(demo, api, tmp_path):
    with pytest.raises(SourceError, match=r"40x32 = 1280 pixels, over the limit of 1000 pixels.*max_pixels="):
        getattr(demo, api)(_frames(), max_pixels=1000,
                           **({"work_dir": tmp_path} if api == "segment" else {"output": tmp_path / "out"}))
    assert list(tmp_path.iterdir()) == []


def test_max_pixels_applies_to_frames_in_a_list_and_to_pil_images_before_decoding(demo, tmp_path, monkeypatch):
    with pytest.raises(SourceError, match="frame 000000 is 40x32"):
        demo.segment(list(_frames()), max_pixels=1000)
    path = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(path)
    lazy = Image.open(path)  # not decoded yet: decoding it is what the limit prevents
    monkeypatch.setattr(lazy, "load", lambda: pytest.fail("decoded"))  # refused from its header
    with pytest.raises(SourceError, match="frame 000000 is 400x300"):
        demo.segment([lazy], max_pixels=100_000)


def test_frames_under_the_limit_and_no_limit_still_segment(demo):
    with demo.segment(_frames(), max_pixels=1280) as a, demo.segment(_frames(), max_pixels=None) as b:
        assert np.array_equal(np.stack(list(a)), np.stack(list(b)))


@pytest.mark.parametrize("tensor", [
    torch.zeros(32, 40, 3, dtype=torch.uint8, device="meta"),  # as a CUDA tensor: no numpy view of it
    torch.zeros(32, 40, 3, requires_grad=True),
])
def test_a_tensor_that_numpy_cannot_read_in_a_list_of_frames(demo, tensor):
    with pytest.raises(SourceError, match=r"frame 000000 \(a Tensor\) is no array of pixels"):
        demo.segment([tensor, tensor])


@pytest.mark.parametrize("kwargs, named", [
    ({"fps": 5}, "fps=5.0"), ({"name": "clip"}, "name='clip'"), ({"max_pixels": 1000}, "max_pixels=1000"),
])
@pytest.mark.parametrize("api", ["segment", "stream"])
def test_options_a_frame_source_already_has_are_not_ignored(demo, api, kwargs, named):
    source = open_source(_frames(), FrameSelection(stride=2))
    with pytest.raises(SourceError, match=f"{named} would not apply"):
        getattr(demo, api)(source, **kwargs)


def test_a_frame_source_with_options_equal_to_its_own(demo):
    source = open_source(_frames(), fps=5, name="clip", max_pixels=2000)
    with demo.segment(source, fps=5, name="clip", max_pixels=2000) as result:
        assert (result.name, result.fps, len(result)) == ("clip", 5.0, 2)


@pytest.mark.parametrize("protect", ["in", b"in", 3, [3], [None]])
def test_protect_must_be_a_list_of_paths(demo, protect, tmp_path):
    with pytest.raises(EntitySAMError, match="protect"):
        demo.stream(_frames(), output=tmp_path / "out", protect=protect)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("take", [iter, lambda r: r.items(), lambda r: r.masks(r.entities[0].id)])
def test_an_iterator_read_after_close_says_the_result_is_closed(demo, take):
    with demo.segment(_frames()) as result:
        frames = take(result)
    with pytest.raises(EntitySAMError, match="the result is closed"):
        next(frames)


def test_an_iterator_started_before_close_reads_on(demo):
    with demo.segment(_frames()) as result:
        expected = list(result)
        frames = iter(result)
        first = next(frames)
    rest = list(frames)
    assert len(rest) == len(expected) - 1 >= 1
    assert all(np.array_equal(a, b) for a, b in zip([first, *rest], expected))


def test_no_limit_given_with_a_source_that_has_one_is_refused_not_ignored(demo):
    # None is "no limit" (a value), not "not given": it was ignored, and the source's limit refused the
    # frames with "raise the limit: pass max_pixels=N" to a caller who had just passed no limit
    from entitysam.io.sources import open_source

    source = open_source(list(_frames()), max_pixels=1000)
    with pytest.raises(SourceError, match=r"max_pixels=None would not apply"):
        demo.segment(source, max_pixels=None)


@pytest.mark.parametrize("api", ["segment", "stream"])
def test_a_list_of_frame_paths_holding_what_is_no_frame_file_says_what_it_is(demo, api, tmp_path):
    """A folder, a named pipe or a link loop in a list of frame paths was "not found" (it is there)."""
    Image.fromarray(_frames(1)[0]).save(tmp_path / "0.png")
    os.mkfifo(tmp_path / "1.png")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "work").mkdir()
    kwargs = {"work_dir": tmp_path / "work"} if api == "segment" else {"output": tmp_path / "out"}
    for other, words in (("1.png", "is a named pipe"), ("dir.png", "is a folder, not an image file"),
                         ("loop.png", "is a symbolic link loop"), ("gone.png", "1 frame file(s) not found")):
        with pytest.raises(EntitySAMError, match=re.escape(words)):
            getattr(demo, api)([tmp_path / "0.png", tmp_path / other], **kwargs)
    assert not (tmp_path / "out").exists()


NOT_FRAMES = {
    "float32": np.zeros((4, 5, 3), np.float32),
    "float64": np.full((4, 5, 3), 0.5),
    "bool": np.zeros((4, 5, 3), bool),
    "int64": np.zeros((4, 5, 3), np.int64),
    "2-D": np.zeros((4, 5), np.uint8),
    "4-channel": np.zeros((4, 5, 4), np.uint8),
    "0-rows": np.zeros((0, 5, 3), np.uint8),
    "0x0": np.zeros((0, 0, 3), np.uint8),
}


@pytest.mark.parametrize("name", list(NOT_FRAMES))
def test_preprocess_frame_refuses_what_is_no_frame_as_segment_does(demo, name):
    """preprocess_frame (README "Python API", lower level): a float, bool or int64 array was
    Pillow's bare TypeError ("Cannot handle this data type"); a gray or RGBA array was taken
    although segment refuses it; an array of no pixel gave a frame of zeros. Now the rule that
    segment applies to frames in memory, in the same words, as an InvalidArgumentError."""
    from entitysam.errors import InvalidArgumentError
    from entitysam.inference.preprocess import preprocess_frame

    array = NOT_FRAMES[name]
    with pytest.raises(InvalidArgumentError) as refused:
        preprocess_frame(array, 16)
    rule = f"not an RGB uint8 image [H, W, 3] of H, W >= 1 (shape {array.shape}, dtype {array.dtype})"
    assert str(refused.value) == f"preprocess_frame: the image is {rule}; a PIL image of any mode is taken too"
    assert isinstance(refused.value, TypeError) and isinstance(refused.value, ValueError)
    with pytest.raises(SourceError) as by_segment:
        demo.segment([array, array])
    assert str(by_segment.value) == f"video: frame 000000 is {rule}"


def test_preprocess_frame_refuses_an_image_of_no_pixel_and_what_is_no_image():
    from entitysam.errors import InvalidArgumentError
    from entitysam.inference.preprocess import preprocess_frame

    with pytest.raises(InvalidArgumentError, match=r"^preprocess_frame: the image is 0x3: it has no pixel$"):
        preprocess_frame(Image.new("RGB", (0, 3)), 16)  # was resized into a frame of zeros
    with pytest.raises(InvalidArgumentError, match=r"must be a PIL image or an RGB uint8 array \[H, W, 3\], got list"):
        preprocess_frame([[[0, 0, 0]]], 16)  # was an AttributeError ('list' object has no attribute 'mode')


def test_preprocess_frame_still_takes_frames_and_pil_images_of_any_mode():
    from entitysam.inference.preprocess import preprocess_frame

    rgb = np.random.default_rng(1).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    x = preprocess_frame(rgb, 16)
    assert x.shape == (1, 3, 16, 16) and torch.equal(x, preprocess_frame(Image.fromarray(rgb), 16))
    assert torch.equal(preprocess_frame(rgb[:, ::-1], 16), preprocess_frame(np.ascontiguousarray(rgb[:, ::-1]), 16))
    for mode in ("L", "RGBA", "P", "I;16"):
        assert preprocess_frame(Image.new(mode, (7, 6)), 16).shape == (1, 3, 16, 16)
