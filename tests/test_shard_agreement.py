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
