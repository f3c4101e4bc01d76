"""entitysam.review: reading result folders and every edit operation (issue 21).

Each edit is applied, saved as a revision, and the revision read back: its id maps must be
exactly what the test computes itself with numpy from the generated ground truth.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from _review_result import BIG_ID, FPS, H, N, SCORES, W, id_maps, images, make_result
from entitysam.errors import EditError, EntitySAMError, InvalidArgumentError, ResultFolderError, ResultFolderNotFoundError
from entitysam.review import EditSession, ResultFolder, save_revision


@pytest.fixture
def result_dir(tmp_path):
    return make_result(tmp_path)


def test_open_reads_frames_entities_id_maps_and_source_frames(result_dir):
    r = ResultFolder.open(result_dir)
    assert r.kind == "offline" and r.size == (H, W) and r.fps == FPS and r.num_frames == N
    assert r.frames[3] == {"frame": 3, "source_frame": 3, "name": "f003", "time": round(3 / FPS, 6)}
    truth = id_maps()
    for t in range(N):
        got = r.id_map(t)
        assert got.dtype == np.uint32 and np.array_equal(got, truth[t])
        assert np.array_equal(r.source_frame(t), images()[t])
    by_id = {e.id: e for e in r.entities}
    assert sorted(by_id) == sorted(SCORES)
    for sid, e in by_id.items():
        present = [t for t in range(N) if (truth[t] == sid).any()]
        assert (e.first_frame, e.last_frame, e.num_frames) == (present[0], present[-1], len(present))
        assert e.area == sum(int((m == sid).sum()) for m in truth)
        assert e.score == pytest.approx(SCORES[sid]) and e.label is None and e.hidden is False


def test_source_frame_is_none_once_the_input_is_gone(result_dir):
    shutil.rmtree(result_dir.parent / "input-clip")
    assert ResultFolder.open(result_dir).source_frame(0) is None


def test_open_refuses_what_is_not_a_complete_result(tmp_path, result_dir):
    with pytest.raises(ResultFolderNotFoundError, match="nope: not found"):
        ResultFolder.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultFolderError, match="manifest.json"):
        ResultFolder.open(tmp_path / "empty")
    manifest = json.loads((result_dir / "manifest.json").read_text())
    (result_dir / "manifest.json").write_text(json.dumps({**manifest, "complete": False, "status": "running"}))
    with pytest.raises(ResultFolderError, match="not complete .*running"):
        ResultFolder.open(result_dir)
    (result_dir / "manifest.json").write_text(json.dumps(manifest))
    png = result_dir / "panoptic" / "f004.png"
    png.rename(tmp_path / "elsewhere.png")
    with pytest.raises(ResultFolderError, match="f004.png is missing"):
        ResultFolder.open(result_dir)
    png.symlink_to(tmp_path / "elsewhere.png")  # a link out of the result (the viewer would serve its target)
    with pytest.raises(ResultFolderError, match="f004.png is a symbolic link"):
        ResultFolder.open(result_dir)
    png.unlink()
    os.mkfifo(png)
    with pytest.raises(ResultFolderError, match="f004.png is not a regular file"):
        ResultFolder.open(result_dir)
    png.unlink()
    shutil.rmtree(result_dir / "panoptic")
    with pytest.raises(ResultFolderError, match="no panoptic output"):
        ResultFolder.open(result_dir)


def test_frame_index_out_of_range_is_a_clear_error(result_dir):
    r = ResultFolder.open(result_dir)
    with pytest.raises(InvalidArgumentError, match=r"\[0, 8\)"):
        r.id_map(N)


def saved_maps(session: EditSession, tmp_path) -> tuple[list[np.ndarray], ResultFolder]:
    """Save the session as a revision and read it back (the maps and the reopened folder)."""
    rev = ResultFolder.open(save_revision(session, dest=tmp_path / "rev"))
    return [rev.id_map(t) for t in range(rev.num_frames)], rev


def remap(maps: list[np.ndarray], mapping: dict[int, int]) -> list[np.ndarray]:
    out = []
    for m in maps:
        m = m.copy()
        for a, b in mapping.items():
            m[maps[len(out)] == a] = b
        out.append(m)
    return out


@pytest.mark.parametrize("op, expected", [
    ({"op": "delete", "ids": [2, BIG_ID]}, lambda ms: remap(ms, {2: 0, BIG_ID: 0})),
    ({"op": "merge", "ids": [3, 2], "into": 3}, lambda ms: remap(ms, {2: 3})),
    ({"op": "merge", "ids": [1, 2, 3], "into": 2}, lambda ms: remap(ms, {1: 2, 3: 2})),
    ({"op": "hide", "ids": [3]}, lambda ms: ms),
    ({"op": "label", "id": 1, "text": "sky"}, lambda ms: ms),
    ({"op": "split", "id": 2, "frame": 3},
     lambda ms: [np.where(m == 2, BIG_ID + 1, m) if t >= 3 else m for t, m in enumerate(ms)]),
    ({"op": "split", "id": 3, "frame": 5, "new_id": 77},
     lambda ms: [np.where(m == 3, 77, m) if t >= 5 else m for t, m in enumerate(ms)]),
])
def test_each_edit_saved_and_reloaded_gives_the_expected_id_maps(result_dir, tmp_path, op, expected):
    session = EditSession(ResultFolder.open(result_dir))
    session.apply(op)
    want = expected(id_maps())
    for t in range(N):
        assert np.array_equal(session.id_map(t), want[t]), f"session, frame {t}"
    got, rev = saved_maps(session, tmp_path)
    for t in range(N):
        assert np.array_equal(got[t], want[t]), f"revision, frame {t}"
    assert [e.to_dict() for e in rev.entities] == [e.to_dict() for e in session.entities]
    ids = sorted({int(i) for m in want for i in np.unique(m) if i})
    assert [e.id for e in rev.entities] == ids


def test_hide_show_and_label_are_recorded_in_the_revision(result_dir, tmp_path):
    session = EditSession(ResultFolder.open(result_dir))
    session.apply({"op": "hide", "ids": [3, 1]})
    session.apply({"op": "show", "ids": [1]})
    session.apply({"op": "label", "id": 2, "text": "ball"})
    _, rev = saved_maps(session, tmp_path)
    by_id = {e.id: e for e in rev.entities}
    assert by_id[3].hidden and not by_id[1].hidden and by_id[2].label == "ball" and by_id[1].label is None
    records = {e["id"]: e for e in json.loads((rev.path / "entities.json").read_text())["entities"]}
    assert records[3]["hidden"] is True and records[2]["label"] == "ball"


def test_merge_keeps_the_attributes_of_into_and_sums_the_statistics(result_dir):
    r = ResultFolder.open(result_dir)
    session = EditSession(r)
    session.apply({"op": "label", "id": 3, "text": "car"})
    session.apply({"op": "merge", "ids": [2, 3], "into": 3})
    merged = {e.id: e for e in session.entities}[3]
    before = {e.id: e for e in r.entities}
    assert merged.score == before[3].score and merged.label == "car" and 2 not in {e.id for e in session.entities}
    assert merged.area == before[2].area + before[3].area
    assert (merged.first_frame, merged.last_frame, merged.num_frames) == (0, N - 1, N)


def test_split_then_merge_back_and_edits_on_split_ids(result_dir):
    session = EditSession(ResultFolder.open(result_dir))
    new = session.apply({"op": "split", "id": 2, "frame": 4})["new_id"]
    assert new == BIG_ID + 1
    table = {e.id: e for e in session.entities}
    assert (table[2].last_frame, table[new].first_frame, table[new].last_frame) == (3, 4, N - 1)
    session.apply({"op": "split", "id": new, "frame": 6})  # a split of a split
    session.apply({"op": "merge", "ids": [2, new, new + 1], "into": 2})
    for t in range(N):
        assert np.array_equal(session.id_map(t), id_maps()[t])


def test_undo_and_redo(result_dir):
    session = EditSession(ResultFolder.open(result_dir))
    truth = id_maps()
    session.apply({"op": "merge", "ids": [1, 2], "into": 1})
    session.apply({"op": "delete", "ids": [3]})
    assert session.undo() == {"op": "delete", "ids": [3]}
    assert np.array_equal(session.id_map(4), remap(truth, {2: 1})[4])
    assert session.undo()["op"] == "merge" and session.undo() is None
    assert all(np.array_equal(session.id_map(t), truth[t]) for t in range(N))
    assert session.redo()["op"] == "merge" and session.redo()["op"] == "delete" and session.redo() is None
    assert np.array_equal(session.id_map(4), remap(truth, {2: 1, 3: 0})[4])
    session.undo()
    session.apply({"op": "hide", "ids": [3]})  # a new edit clears what could be redone
    assert not session.can_redo and [op["op"] for op in session.ops] == ["merge", "hide"]
    new = session.apply({"op": "split", "id": 1, "frame": 2})["new_id"]
    split = [session.id_map(t) for t in range(N)]
    session.undo()
    assert session.redo()["new_id"] == new  # the same id again
    assert all(np.array_equal(session.id_map(t), split[t]) for t in range(N))


def test_id_lookup_maps_original_ids_to_current_ones_per_frame(result_dir):
    session = EditSession(ResultFolder.open(result_dir))
    session.apply({"op": "delete", "ids": [1]})
    session.apply({"op": "split", "id": 2, "frame": 5, "new_id": 9})
    assert session.result.ids.tolist() == [0, 1, 2, 3, BIG_ID]  # the lookup is indexed by position here
    assert session.id_lookup(0).tolist() == [0, 0, 2, 3, BIG_ID]
    assert session.id_lookup(6).tolist() == [0, 0, 9, 3, BIG_ID]
    segments = session.lookup_segments()
    assert [(s["start"], s["stop"]) for s in segments] == [(0, 5), (5, N)]
    assert segments[1]["lookup"][2] == 9


@pytest.mark.parametrize("op, message", [
    ({"op": "paint"}, "unknown edit op"),
    ({"op": "hide", "ids": []}, "non-empty list"),
    ({"op": "hide", "ids": [True]}, "entity id"),
    ({"op": "hide", "ids": [4]}, "no entity 4"),
    ({"op": "hide", "ids": [1], "colour": "red"}, "unknown field"),
    ({"op": "hide", "ids": [1], 7: "x", "colour": "red"}, "unknown field"),  # (mixed key types: a TypeError)
    ({"op": "merge", "ids": [1, 2], "into": 3}, "into"),
    ({"op": "merge", "ids": [1], "into": 1}, "at least two"),
    ({"op": "split", "id": 3, "frame": 2}, "frames on both sides"),
    ({"op": "split", "id": 2, "frame": 0}, ">= 1"),
    ({"op": "split", "id": 2, "frame": 3, "new_id": 3}, "already used"),
    ({"op": "label", "id": 1, "text": 5}, "string"),
])
def test_invalid_edits_are_refused_and_change_nothing(result_dir, op, message):
    session = EditSession(ResultFolder.open(result_dir))
    with pytest.raises(EditError, match=message) as err:
        session.apply(op)
    assert isinstance(err.value, EntitySAMError)
    assert session.ops == [] and all(np.array_equal(session.id_map(t), id_maps()[t]) for t in range(N))


def test_deleted_and_merged_ids_cannot_be_edited_or_reused(result_dir):
    session = EditSession(ResultFolder.open(result_dir))
    session.apply({"op": "delete", "ids": [3]})
    with pytest.raises(EditError, match="no entity 3"):
        session.apply({"op": "label", "id": 3, "text": "x"})
    with pytest.raises(EditError, match="already used"):
        session.apply({"op": "split", "id": 2, "frame": 2, "new_id": 3})


def test_entity_records_are_read_without_their_masks_in_either_layout(result_dir, tmp_path, monkeypatch):
    from entitysam.review import records as records_module
    from entitysam.review.records import read_entity_records

    session = EditSession(ResultFolder.open(result_dir), [{"op": "label", "id": 2, "text": 'a ,"frames":[ b\n"]}'}])
    rev = save_revision(session, dest=tmp_path / "rev")
    whole = json.loads((rev / "entities.json").read_text())
    expected = {"frames": whole["frames"],
                "entities": [{k: v for k, v in e.items() if k != "frames"} for e in whole["entities"]]}
    with monkeypatch.context() as m:
        m.setattr(records_module, "read_json", None)  # the whole-file parser is not used for the writer's layout
        assert read_entity_records(rev / "entities.json") == expected
    (tmp_path / "pretty.json").write_text(json.dumps(whole, indent=2))
    assert read_entity_records(tmp_path / "pretty.json") == expected  # parsed whole
    assert {e.id: e.label for e in ResultFolder.open(rev).entities}[2] == 'a ,"frames":[ b\n"]}'


def test_a_panoptic_only_result_opens_without_scores_and_saves(result_dir, tmp_path):
    (result_dir / "entities.json").unlink()
    r = ResultFolder.open(result_dir)
    assert [f["name"] for f in r.frames] == [f"f{t:03d}" for t in range(N)]
    assert r.frames[2]["time"] == pytest.approx(2 / FPS)
    assert [(e.id, e.score) for e in r.entities] == [(i, None) for i in sorted(SCORES)]
    got, rev = saved_maps(EditSession(r, [{"op": "delete", "ids": [1]}]), tmp_path)
    assert all(np.array_equal(got[t], np.where(id_maps()[t] == 1, 0, id_maps()[t])) for t in range(N))
    assert {e.score for e in rev.entities} == {None}
