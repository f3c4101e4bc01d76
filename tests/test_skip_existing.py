"""`--skip-existing` (and every resumable shard) skips a video only when the complete result on disk
answers this run: same mode, same frames, every format it saves. A complete result made otherwise
(another --save, --max-frames, --fps, --online, --delay) used to be skipped without a word, leaving
the asked files missing; it is now that video's failure, naming the difference, and left untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from _media import write_video
from entitysam import cli
from entitysam.distributed.jobs import SegmentOptions
from entitysam.distributed.resume import mismatches
from entitysam.io.sources import FrameSelection

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMMON = ["--model", "demo", "--threads", "1", "-q"]
ALL_FRAMES = {"start": None, "end": None, "stride": 1, "max_frames": None}


def offline(files, **fields):
    return {"format": "entitysam-segment", "files": files, "selection": dict(ALL_FRAMES), "fps": 25.0, **fields}


def online(files, **fields):
    return {"format": "entitysam-online", "files": files, "selection": dict(ALL_FRAMES), "fps": 25.0,
            "delay": 0, **fields}


OFFLINE_ALL = ["panoptic/", "panoptic.json", "entities.json", "overlay.mp4"]
ONLINE_ALL = ["entities.jsonl", "panoptic/", "panoptic.json", "overlay.ts"]


@pytest.mark.parametrize("manifest, options", [
    (offline(OFFLINE_ALL), SegmentOptions()),
    (offline(["panoptic/", "panoptic.json"]), SegmentOptions(formats=("panoptic",))),
    (offline(OFFLINE_ALL + ["logits.npz"]), SegmentOptions(save_logits="")),
    (offline(OFFLINE_ALL), SegmentOptions(save_logits="elsewhere/{video}.npz")),  # not in the result
    (offline(OFFLINE_ALL, selection={**ALL_FRAMES, "max_frames": 3}),
     SegmentOptions(selection=FrameSelection(max_frames=3))),
    (offline(OFFLINE_ALL, fps=10.0), SegmentOptions(fps=10)),
    (offline(OFFLINE_ALL, fps=10.0), SegmentOptions()),  # no --fps: the rate is the input's own
    # the recorded rate is that of the frames kept (--fps / --stride): every re-run with a stride failed
    (offline(OFFLINE_ALL, fps=5.0, selection={**ALL_FRAMES, "stride": 2}),
     SegmentOptions(fps=10, selection=FrameSelection(stride=2))),
    (offline(OFFLINE_ALL, fps=10 / 3, selection={**ALL_FRAMES, "stride": 3}),
     SegmentOptions(fps=10, selection=FrameSelection(stride=3))),
    (online(ONLINE_ALL, fps=12.5, selection={**ALL_FRAMES, "stride": 2}),
     SegmentOptions(online=True, fps=25, selection=FrameSelection(stride=2))),
    (online(ONLINE_ALL), SegmentOptions(online=True)),
    (online(ONLINE_ALL, delay=2), SegmentOptions(online=True, delay=2)),
    (online(["entities.jsonl"]), SegmentOptions(online=True, formats=("entities",))),
])
def test_a_result_that_answers_the_run_has_no_mismatch(manifest, options):
    assert mismatches(manifest, options) == []


@pytest.mark.parametrize("manifest, options, words", [
    (offline(["panoptic/", "panoptic.json"]), SegmentOptions(), "lacks entities, overlay"),
    (offline(OFFLINE_ALL), SegmentOptions(save_logits=""), "lacks logits.npz"),
    (offline(OFFLINE_ALL), SegmentOptions(selection=FrameSelection(max_frames=3)), "other frames (all frames"),
    (offline(OFFLINE_ALL, selection={**ALL_FRAMES, "stride": 2}), SegmentOptions(), "other frames (stride 2"),
    (offline(OFFLINE_ALL), SegmentOptions(selection=FrameSelection(start="2.5s")), "start 2.5"),
    (offline(OFFLINE_ALL), SegmentOptions(fps=10), "25.0 frames/s"),
    (offline(OFFLINE_ALL, fps=10.0, selection={**ALL_FRAMES, "stride": 2}),
     SegmentOptions(fps=10, selection=FrameSelection(stride=2)), "10.0 frames/s (this run: 5.0: 10.0 frames/s with a stride of 2)"),
    (offline(OFFLINE_ALL), SegmentOptions(online=True), "is an offline result"),
    (online(ONLINE_ALL), SegmentOptions(), "is an online result"),
    (online(ONLINE_ALL), SegmentOptions(online=True, delay=3), "delay 0"),
    # the online overlay is overlay.ts and its entities a JSON-lines file: the offline names do not count
    (online(["entities.jsonl", "overlay.mp4"]), SegmentOptions(online=True, formats=("overlay",)), "lacks overlay"),
    # damaged records: a mismatch, never a crash
    (offline("panoptic.json"), SegmentOptions(formats=("panoptic",)), "lacks panoptic"),
    (offline([1, "panoptic.json"]), SegmentOptions(formats=("panoptic",)), "lacks panoptic"),
    (offline(OFFLINE_ALL, selection=None), SegmentOptions(), "other frames (unrecorded"),
    ({"format": "entitysam-segment"}, SegmentOptions(), "lacks panoptic, entities, overlay"),
])
def test_a_result_made_otherwise_is_named(manifest, options, words):
    reasons = mismatches(manifest, options)
    assert reasons and words in "; ".join(reasons), reasons


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def video(tmp_path) -> Path:
    path = tmp_path / "clip.mp4"
    write_video(path, 3)
    return path


def test_skip_existing_refuses_a_result_saved_with_fewer_formats(video, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["segment", str(video), "-o", str(out), "--save", "panoptic", *COMMON]) == 0
    before = digest(out / "clip")
    capsys.readouterr()

    assert cli.main(["segment", str(video), "-o", str(out), "--save", "all", "--skip-existing", *COMMON]) == 1
    err = capsys.readouterr().err
    assert "does not answer this run: it lacks entities, overlay" in err and "--overwrite" in err, err
    assert digest(out / "clip") == before  # nothing replaced

    # the same request is skipped, and --overwrite redoes it with every format
    assert cli.main(["segment", str(video), "-o", str(out), "--save", "panoptic", "--skip-existing", *COMMON]) == 0
    assert digest(out / "clip") == before
    assert cli.main(["segment", str(video), "-o", str(out), "--save", "all", "--overwrite", *COMMON]) == 0
    assert {"entities.json", "overlay.mp4"} <= {p.name for p in (out / "clip").iterdir()}


def test_a_resumed_shard_does_not_skip_a_result_of_other_frames(video, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["segment", str(video), "-o", str(out), "--save", "panoptic", "--max-frames", "2", *COMMON]) == 0
    before = digest(out / "clip")
    capsys.readouterr()

    assert cli.main(["segment", str(video), "-o", str(out), "--save", "panoptic", "--shard", "0/1", *COMMON]) == 1
    err = capsys.readouterr().err
    assert "made from other frames (max_frames 2; this run: all frames)" in err, err
    assert digest(out / "clip") == before
    # the run that made it, resumed, skips it
    assert cli.main(["segment", str(video), "-o", str(out), "--save", "panoptic", "--max-frames", "2",
                     "--shard", "0/1", *COMMON]) == 0
    assert digest(out / "clip") == before


def test_an_online_run_does_not_skip_an_offline_result(video, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["segment", str(video), "-o", str(out), "--save", "panoptic", *COMMON]) == 0
    before = digest(out / "clip")
    capsys.readouterr()
    assert cli.main(["segment", str(video), "-o", str(out), "--save", "panoptic", "--online", "--skip-existing",
                     *COMMON]) == 1
    assert "is an offline result (this run is online)" in capsys.readouterr().err
    assert digest(out / "clip") == before
