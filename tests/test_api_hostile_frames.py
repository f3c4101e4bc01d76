"""Python API audit with hostile inputs: what a caller gets wrong is one EntitySAMError naming the
argument, never a bare error from numpy / pathlib / the file system, an argument ignored without a
word, or a frame limit that does not apply."""

from __future__ import annotations

import numpy as np
import pytest

from entitysam import EntitySAM
from entitysam.errors import EntitySAMError, SourceError
from entitysam.io.sources import FrameSelection, open_source


@pytest.fixture(scope="module")
def demo(one_torch_thread):
    return EntitySAM.from_pretrained("demo")


def _frames(n=2, h=32, w=40):
    return np.random.default_rng(0).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("kwargs, named", [
    ({"fps": 5}, "fps=5.0"), ({"name": "clip"}, "name='clip'"), ({"max_pixels": 1000}, "max_pixels=1000"),
])
@pytest.mark.parametrize("api", ["segment", "stream"])
def test_options_a_frame_source_already_has_are_not_ignored(demo, api, kwargs, named):
    source = open_source(_frames(), FrameSelection(stride=2))
    with pytest.raises(SourceError, match=f"{named} would not apply"):
        getattr(demo, api)(source, **kwargs)


def test_a_frame_source_with_options_equal_to_its_own(demo):
    source = open_source(_frames(), fps=5, name="clip")
    with demo.segment(source, fps=5, name="clip") as result:
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
    assert [first, *frames] and np.array_equal(first, expected[0])
