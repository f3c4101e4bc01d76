"""Shards started on different machines agree on their slices: the same videos listed in another
order (a shell's glob sorts by the locale, arguments written in another order) still give every
video to exactly one shard, and nothing is left undone with every shard exiting 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from _media import scene
from entitysam import cli
from entitysam.distributed.local import default_summary_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMMON = ["--model", "demo", "--save", "panoptic", "--threads", "1", "-q"]
NAMES = ("a", "b", "c", "d")  # the same frame count each: only the order could break the ties


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("same-length")
    for name in NAMES:
        (root / name).mkdir()
        for t in range(2):
            Image.fromarray(scene(t)).save(root / name / f"{t:05d}.png")
    return [root / name for name in NAMES]


def segment(*args) -> int:
    return cli.main(["segment", *map(str, args)])


def test_shards_given_the_videos_in_another_order_cover_each_video_once(videos, tmp_path):
    out = tmp_path / "out"
    assert segment(*videos, "-o", out, *COMMON, "--shard", "0/2") == 0
    assert segment(*reversed(videos), "-o", out, *COMMON, "--shard", "1/2") == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == list(NAMES)
    slices = [json.loads(default_summary_path(out, (i, 2)).read_text()) for i in range(2)]
    assert sorted(slices[0]["done"] + slices[1]["done"]) == list(NAMES)  # none twice, none skipped


def test_shards_that_read_other_frame_counts_still_cover_each_video_once(videos, tmp_path):
    """Each shard reads the frame counts on its own machine: one that reads them otherwise (a header
    unreadable for a moment, a file still being copied) splits by the first shard's counts."""
    from entitysam import EntitySAM
    from entitysam.distributed.jobs import SegmentOptions, VideoJob
    from entitysam.distributed.local import segment_many_local

    model = EntitySAM.from_pretrained("demo")
    options = SegmentOptions(formats=("panoptic",), skip_existing=True, quiet=True)
    out = tmp_path / "out"
    read_here = {"a": 2, "b": 2, "c": 2, "d": 9}  # d's header read wrong (or the file half copied)
    read_there = dict.fromkeys(NAMES, 2)
    done = []
    for index, counts in ((0, read_here), (1, read_there)):
        jobs = [VideoJob(v, v.name, counts[v.name]) for v in videos]
        done += segment_many_local(model, jobs, options, out, (index, 2)).names("done")
    assert sorted(done) == list(NAMES)  # was: d in both slices, a and c in none
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == list(NAMES)


def test_a_damaged_split_record_leaves_each_shard_its_own_counts(tmp_path):
    from entitysam.distributed.split_record import agreed_slices, split_record_path, split_slices

    counts = {"a": 2, "b": None}
    path = split_record_path(tmp_path, list(counts), 2)
    path.write_text('{"format": "entitysam-batch-split", "cou')
    said = []
    assert agreed_slices(tmp_path, counts, 2, said.append) == split_slices(counts, 2) and len(said) == 1
    for other in ("[1]", "null"):  # valid JSON, no record: was an AttributeError in every shard of 2
        (tmp_path / "other").mkdir(exist_ok=True)
        split_record_path(tmp_path / "other", ["x", "y"], 2).write_text(other)
        assert agreed_slices(tmp_path / "other", counts, 2) == split_slices(counts, 2)
    first = agreed_slices(tmp_path / "new", counts, 2)  # the first shard: its own, recorded
    assert first == split_slices(counts, 2) == {"a": 0, "b": 1}
    assert split_slices({"a": 7, "b": 1}, 2) == {"a": 0, "b": 1} and split_slices({"a": 1, "b": 7}, 2) == {"a": 1, "b": 0}
    assert agreed_slices(tmp_path / "new", {"a": 1, "b": 7}, 2) == first  # a later one: the first's
    assert agreed_slices(tmp_path / "new", {"a": 1, "b": 7}, 3) == {"a": 1, "b": 0}  # another count


def _results(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


def test_a_video_added_between_the_starts_of_two_shards_moves_no_other_video(videos, tmp_path, capsys):
    """Shard 0 of 2 runs over a, b, c, d (a and c); then "aa" is added to the folder and shard 1
    starts: split afresh over the five videos, it took aa and c (done already), and b and d went
    to no shard, both shards exiting 0. The videos of the first shard's record keep their slices
    (shard 1 does b and d); the new one is split too and named in a warning."""
    import shutil

    batch, out = tmp_path / "videos", tmp_path / "out"
    for video in videos:
        shutil.copytree(video, batch / video.name)
    assert segment("--batch", batch, "-o", out, *COMMON, "--shard", "0/2") == 0
    assert _results(out) == ["a", "c"]
    shutil.copytree(videos[0], batch / "aa")  # added while the array job runs
    capsys.readouterr()
    assert segment("--batch", batch, "-o", out, *COMMON, "--shard", "1/2") == 0
    err = capsys.readouterr().err
    assert _results(out) == ["a", "b", "c", "d"]  # was: a, aa, c (b and d in no slice)
    second = json.loads(default_summary_path(out, (1, 2)).read_text())
    assert second["done"] == ["b", "d"] and second["skipped"] == []
    warning = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "1 video of this batch was not listed" in warning[0] and "(aa)" in warning[0]
    # aa went to slice 0, which had started without it: running every shard again finishes it
    for shard in ("0/2", "1/2"):
        assert segment("--batch", batch, "-o", out, *COMMON, "--shard", shard) == 0
    assert _results(out) == ["a", "aa", "b", "c", "d"]
    assert "warning" not in capsys.readouterr().err  # the longer list has its own record now


@pytest.mark.parametrize("first", ["shorter", "longer"])
def test_shards_of_two_lists_cover_the_videos_both_list_once(tmp_path, first):
    """Whichever list is recorded first, the other one follows it: a video both lists hold is in
    exactly one slice. A shard whose recorded slice holds a video it does not list says so."""
    from entitysam.distributed.split_record import agreed_slices

    shorter = {f"v{k:02d}": 3 + (k * 7) % 11 for k in range(20)}
    longer = {**shorter, "v99": 12}
    lists = [shorter, longer] if first == "shorter" else [longer, shorter]
    owners: dict[str, list[int]] = {}
    warnings: list[str] = []
    for index in range(4):  # shards 0 and 1 start with the first list, 2 and 3 with the other
        frames = lists[index // 2]
        slices = agreed_slices(tmp_path, frames, 4, warn=warnings.append, index=index)
        assert set(slices) == set(frames)
        for name, s in slices.items():
            if s == index:
                owners.setdefault(name, []).append(index)
    assert all(owners.get(name, []) and len(owners[name]) == 1 for name in shorter), owners
    assert any("v99" in w for w in warnings)  # the video that may be left undone is named
    assert len(list(tmp_path.glob("split-of-4-*.json"))) == 2 and not list(tmp_path.glob(".*.lock"))
