"""entitysam.review on results written by the real pipeline (offline `segment` and online
`stream`, tiny configuration on a generated mp4): opened, edited, saved, exported."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _media import link_into
from entitysam import EntitySAM
from entitysam.errors import ResultFolderError
from entitysam.io.idpng import read_id_png
from entitysam.io.sources import open_source
from entitysam.review import EditSession, ResultFolder, replay_edits, save_revision
from entitysam.review.export import export

N = 6  # frames of conftest's scene_clip
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_checkpoint, scene_clip):
    d = tmp_path_factory.mktemp("review-real")
    link_into(d, scene_clip)
    model = EntitySAM.from_checkpoint(tiny_checkpoint)
    offline = model.segment(d / "clip.mp4").save(d / "offline" / "clip", formats=("panoptic", "entities"))
    with model.stream(d / "clip.mp4", delay=1, output=d / "online" / "clip", formats=("panoptic", "entities")) as s:
        for _ in s:
            pass
    return d, offline, d / "online" / "clip"


@pytest.mark.parametrize("which", ["offline", "online"])
def test_real_results_open_with_their_frames_entities_and_sources(made, which):
    d, offline, online = made
    r = ResultFolder.open(offline if which == "offline" else online)
    assert r.kind == which and r.num_frames == N and r.size == (48, 64)
    assert [f["name"] for f in r.frames] == [f"{i:06d}" for i in range(N)]
    source = list(open_source(d / "clip.mp4"))
    for t in range(N):
        assert np.array_equal(r.id_map(t), read_id_png(r.path / "panoptic" / f"{t:06d}.png"))
        assert np.array_equal(r.source_frame(t), source[t].image)
    assert r.entities, "the tiny weights give entities on this clip"
    present = sorted({int(i) for t in range(N) for i in np.unique(r.id_map(t)) if i})
    assert [e.id for e in r.entities if e.num_frames] == present
    assert all(e.score is not None for e in r.entities)
    if which == "online":
        tracks = {t["id"]: t for t in json.loads((online / "manifest.json").read_text())["tracks"]}
        assert {e.id: e.score for e in r.entities} == {i: t["score"] for i, t in tracks.items()}


def test_edit_save_replay_and_export_a_real_online_result(made, tmp_path):
    _, _, online = made
    r = ResultFolder.open(online)
    first = r.entities[0].id
    session = EditSession(r, [{"op": "label", "id": first, "text": "thing"}])
    rev = save_revision(session, dest=tmp_path / "rev")
    reopened = ResultFolder.open(rev)
    assert reopened.kind == "offline" and reopened.manifest["online_origin"] is True
    assert {e.id: e.label for e in reopened.entities}[first] == "thing"
    for t in range(N):
        assert np.array_equal(reopened.id_map(t), r.id_map(t))
    assert replay_edits(online, rev / "edits.json").ops == session.ops
    data = json.loads(export(reopened, "coco-video", tmp_path / "c.json").read_text())
    assert {a["track_id"] for a in data["annotations"]} == {e.id for e in r.entities if e.num_frames}


def test_an_interrupted_online_result_is_refused(made, tmp_path):
    import shutil

    _, _, online = made
    copy = tmp_path / "clip"
    shutil.copytree(online, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted", "complete": False}))
    with pytest.raises(ResultFolderError, match="not complete .*interrupted"):
        ResultFolder.open(copy)


def test_reading_a_video_input_forward_decodes_it_once(made):
    d, offline, _ = made
    r = ResultFolder.open(offline)
    source = list(open_source(d / "clip.mp4"))
    for t in range(N):
        assert np.array_equal(r.source_frame(t), source[t].image)
    assert r.sources.passes == 1
    for t in reversed(range(N)):  # backwards over frames just read: kept, no new pass
        assert np.array_equal(r.source_frame(t), source[t].image)
    assert r.sources.passes == 1


def test_thumbnails_never_move_the_players_cursor_through_a_video_input(made):
    pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
    from entitysam.review.server import Viewer

    d, offline, _ = made
    viewer = Viewer(offline)
    r = viewer.result
    r.sources.keep_bytes = 1  # the player keeps its last 2 frames: an earlier one needs a new pass
    source = list(open_source(d / "clip.mp4"))
    for t in range(N):
        assert np.array_equal(r.source_frame(t), source[t].image)
    for e in r.entities:  # each thumbnail cut from a frame the player has passed
        assert viewer.thumbnail(e.id) is not None
    assert r.sources.passes == 1 and r.still_sources.passes >= 1
    assert np.array_equal(r.source_frame(N - 1), source[N - 1].image)  # still where it was
    assert r.sources.passes == 1


def test_stepping_back_through_a_video_input_costs_one_pass_per_frames_kept(made):
    d, offline, _ = made
    r = ResultFolder.open(offline)
    r.sources.keep_bytes = 1  # keep the fewest frames: 2
    source = list(open_source(d / "clip.mp4"))
    for t in range(N):
        assert np.array_equal(r.source_frame(t), source[t].image)
    assert r.sources.passes == 1
    expected_passes = {5: 1, 4: 1, 3: 2, 2: 2, 1: 3, 0: 3}  # N - 2 and N - 1 kept; each pass keeps 2
    for t in reversed(range(N)):
        assert np.array_equal(r.source_frame(t), source[t].image), t
        assert r.sources.passes == expected_passes[t], t
    assert np.array_equal(r.source_frame(5), source[5].image)  # forward again: the cursor goes on
    assert r.sources.passes == 3
