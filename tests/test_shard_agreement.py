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
    from entitysam.distributed.split_record import agreed_frames, split_record_path

    counts = {"a": 2, "b": None}
    path = split_record_path(tmp_path, list(counts), 2)
    path.write_text('{"format": "entitysam-batch-split", "cou')
    said = []
    assert agreed_frames(tmp_path, counts, 2, said.append) == counts and len(said) == 1
    assert agreed_frames(tmp_path / "new", counts, 2) == counts  # the first shard: its own, recorded
    assert agreed_frames(tmp_path / "new", {"a": 7, "b": 1}, 2) == counts  # a later one: the first's
    assert agreed_frames(tmp_path / "new", {"a": 7, "b": 1}, 3) == {"a": 7, "b": 1}  # another count
