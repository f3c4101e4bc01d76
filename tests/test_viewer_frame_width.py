"""The width the player asks frames at (static/app.js frameWidthFor, run under node) and the
server's scaling to it (review.images.scale_to_width): full width or a whole fraction of it, so
that a source JPEG is sent as it is or decoded by libjpeg's DCT scaling, and a video frame is
encoded as decoded or averaged over blocks, never resampled to an arbitrary width."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from entitysam.review.images import scale_to_width

STATIC = __import__("pathlib").Path(__file__).resolve().parents[1] / "src" / "entitysam" / "review" / "static"


def test_scale_to_width_keeps_the_frame_at_its_own_width():
    image = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    assert scale_to_width(image, 8) is image


@pytest.mark.parametrize("factor", [2, 4])
def test_scale_to_width_by_a_whole_factor_averages_blocks(factor):
    image = np.random.default_rng(factor).integers(0, 256, (12 * factor, 16 * factor, 3), dtype=np.uint8)
    blocks = image.reshape(12, factor, 16, factor, 3).astype(np.int64).sum(axis=(1, 3))
    area = factor * factor
    assert np.array_equal(scale_to_width(image, 16), (blocks + area // 2) // area)


def test_scale_to_width_to_any_other_width_resamples_smoothly():
    image = np.zeros((90, 160, 3), np.uint8)
    image[:, 80:] = 200
    out = scale_to_width(image, 120)
    assert out.shape == (68, 120, 3)  # round(90 * 120 / 160) = 67.5 -> 68
    assert out[:, 0].max() == 0 and out[:, -1].min() == 200 and 0 < out[0, 59:61].max() < 200  # blended edge


SCRIPT = r"""
const fs = require("fs");
const app = fs.readFileSync(process.argv[1], "utf8");
const start = app.indexOf("function frameWidthFor("), stop = app.indexOf("async function start()");
const frameWidthFor = new Function(app.slice(start, stop) + "; return frameWidthFor;")();
const cases = JSON.parse(fs.readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(cases.map((args) => frameWidthFor(...args))));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_player_asks_the_video_width_or_a_whole_fraction_of_it():
    cases = {  # (columns shown, video width): width asked
        (1200, 1920): 1920,  # more than half: full width (a source JPEG is sent as it is)
        (960, 1920): 960, (900, 1920): 960,  # half covers it
        (400, 1920): 480, (100, 1920): 480,  # an eighth (240) would be under 320 columns
        (2400, 1920): 1920, (1, 1920): 480,
        (853, 853): 853, (427, 853): 427, (300, 853): 427,  # odd widths round up (as libjpeg does)
        (100, 300): 300, (100, 640): 320,  # narrow videos
    }
    out = subprocess.run(["node", "-e", SCRIPT, str(STATIC / "app.js")], input=json.dumps(list(cases)),
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert dict(zip(cases, json.loads(out))) == cases


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_player_counts_the_columns_shown_in_stored_pixels_of_an_anamorphic_video():
    """The frame width was chosen as if pixels were square: wide pixels (64:45 PAL) asked up to
    twice the columns the screen shows (1000 shown of 1920: all of them), tall ones (15:16, turned
    a quarter) too few, shown blurred. A screen column is height/width of a stored one."""
    cases = [  # (columns shown, video width, pixel): width asked
        ((1000, 1920, [64, 45]), 960),  # 703 stored columns
        ((950, 1920, [15, 16]), 1920),  # 1013 stored columns: more than half
        ((400, 720, [64, 45]), 360),
        ((960, 1920, [1, 1]), 960),
    ]
    out = subprocess.run(["node", "-e", SCRIPT, str(STATIC / "app.js")], input=json.dumps([c for c, _ in cases]),
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert json.loads(out) == [w for _, w in cases]
