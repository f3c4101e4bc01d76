"""entitysam.review.revision: revisions saved atomically beside the original, edits.json replayed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from _review_result import N, folder_bytes, id_maps, make_result
from entitysam.errors import EditError, OutputError
from entitysam.review import EditSession, ResultFolder, replay_edits, save_revision
from entitysam.review import edits as edits_module
from entitysam.review.revision import next_revision_path

OPS = [{"op": "merge", "ids": [2, 3], "into": 2}, {"op": "split", "id": 2, "frame": 4},
       {"op": "hide", "ids": [1]}, {"op": "label", "id": 2, "text": "rolling ball"}, {"op": "delete", "ids": [1005]}]


@pytest.fixture
def result_dir(tmp_path):
    return make_result(tmp_path / "out")


def edited(result_dir) -> EditSession:
    return EditSession(ResultFolder.open(result_dir), OPS)


def test_revision_is_a_new_folder_beside_the_original_which_stays_untouched(result_dir):
    before = folder_bytes(result_dir)
    first = save_revision(edited(result_dir))
    second = save_revision(edited(result_dir))
    assert (first.name, second.name) == ("clip.rev1", "clip.rev2") and first.parent == result_dir.parent
    assert folder_bytes(result_dir) == before
    assert next_revision_path(first) == result_dir.parent / "clip.rev3"  # a revision of a revision counts on
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["format"] == "entitysam-segment"
    assert manifest["revision"]["number"] == 1 and manifest["revision"]["edits"] == len(OPS)
    assert manifest["revision"]["parent"] == str(result_dir)
    assert sorted(manifest["files"]) == sorted(["panoptic/", "panoptic.json", "entities.json", "edits.json"])
    log = json.loads((first / "edits.json").read_text())
    assert log["format"] == "entitysam-edits" and log["format_version"] == 1
    assert log["original"]["manifest_sha256"] == ResultFolder.open(result_dir).manifest_digest()
    assert [op["op"] for op in log["ops"]] == [op["op"] for op in OPS] and log["ops"][1]["new_id"] == 1006
    assert sorted(p.name for p in result_dir.parent.iterdir()) == ["clip", "clip.rev1", "clip.rev2", "input-clip"]


def test_replaying_edits_json_gives_the_same_revision_byte_for_byte(result_dir, tmp_path):
    rev = save_revision(edited(result_dir), dest=tmp_path / "a")
    replayed = replay_edits(result_dir, rev / "edits.json")
    again = save_revision(replayed, dest=tmp_path / "b")
    a, b = folder_bytes(rev), folder_bytes(again)
    ma, mb = (json.loads(x.pop("manifest.json")) for x in (a, b))
    assert a == b
    for m in (ma, mb):
        m.pop("created")
    assert ma == mb


def test_a_revision_reopens_and_its_edits_continue(result_dir, tmp_path):
    rev = ResultFolder.open(save_revision(edited(result_dir)))
    labels = {e.id: (e.label, e.hidden) for e in rev.entities}
    assert labels == {1: (None, True), 2: ("rolling ball", False), 1006: (None, False)}  # labelled after the split
    more = EditSession(rev, [{"op": "merge", "ids": [2, 1006], "into": 2}])
    rev2 = ResultFolder.open(save_revision(more))
    assert rev2.path.name == "clip.rev2" and rev2.manifest["revision"]["parent"] == str(rev.path)
    truth = id_maps()
    for t in range(N):
        want = np.where(np.isin(truth[t], [2, 3]), 2, np.where(truth[t] == 1005, 0, truth[t]))
        assert np.array_equal(rev2.id_map(t), want)


def test_a_failure_mid_save_leaves_no_revision_folder(result_dir, monkeypatch):
    before = folder_bytes(result_dir)
    real = edits_module.EditSession.id_map
    calls = []

    def failing(self, i):
        calls.append(i)
        if i == 5:
            raise OSError(28, "No space left on device")
        return real(self, i)

    monkeypatch.setattr(edits_module.EditSession, "id_map", failing)
    with pytest.raises(Exception, match="No space left|space"):
        save_revision(edited(result_dir))
    assert 5 in calls
    assert sorted(os.listdir(result_dir.parent)) == ["clip", "input-clip"]  # no revision, no hidden leftovers
    assert folder_bytes(result_dir) == before


def test_replace_original_swaps_the_folder_atomically(result_dir):
    path = save_revision(edited(result_dir), replace_original=True)
    assert path == result_dir and (result_dir / "edits.json").is_file()
    assert sorted(os.listdir(result_dir.parent)) == ["clip", "input-clip"]
    assert ResultFolder.open(result_dir).manifest["revision"]["number"] == 1


def test_save_refuses_an_existing_destination(result_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputError, match="already exists"):
        save_revision(edited(result_dir), dest=tmp_path / "taken")


def test_replay_refuses_a_log_of_another_result_and_bad_logs(result_dir, tmp_path):
    rev = save_revision(edited(result_dir))
    other = make_result(tmp_path / "other")
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "video": "another"}))
    with pytest.raises(EditError, match="another result"):
        replay_edits(other, rev / "edits.json")
    assert replay_edits(other, rev / "edits.json", check_digest=False).ops[0]["op"] == "merge"
    with pytest.raises(EditError, match="not an entitysam edit log"):
        replay_edits(result_dir, {"ops": []})
    bad = json.loads((rev / "edits.json").read_text())
    bad["ops"].append({"op": "delete", "ids": [3]})  # 3 was merged away
    with pytest.raises(EditError, match="replaying .*no entity 3"):
        replay_edits(result_dir, bad)


def test_replay_of_a_log_that_is_no_readable_json_file_is_one_error_never_a_wait(result_dir, tmp_path):
    """A named pipe in the edit log's place waited for a writer for good (a plain read)."""
    import os

    from _blocking import within

    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "folder.json").mkdir()
    for name, words in (("pipe.json", "is not a regular file"), ("broken.json", "is not valid JSON"),
                        ("folder.json", "is not a regular file"), ("gone.json", "not found")):
        with pytest.raises(EditError, match=f"the edit log.*{words}|{words}.*the edit log"):
            within(30, replay_edits, result_dir, tmp_path / name)


def test_dest_and_replace_original_together_are_refused(result_dir, tmp_path):
    from entitysam.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="not both"):
        save_revision(edited(result_dir), dest=tmp_path / "x", replace_original=True)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("owner", ["", "999999999\n"], ids=["empty", "dead-pid"])
def test_a_lock_file_a_killed_save_left_beside_its_revision_is_removed_by_the_next_save(result_dir, owner):
    """A save SIGKILLed between its revision's rename into place and the release of its lock left
    `.clip.rev1.lock` (no process holds its flock any more); the next save takes it and removes it
    (tests/test_kill_anywhere.py kills a real save there)."""
    first = save_revision(edited(result_dir))
    (result_dir.parent / ".clip.rev1.lock").write_text(owner)
    (result_dir.parent / ".clip.rev1.rev2.lock").write_text(owner)  # not a revision of clip: another result's
    second = save_revision(edited(result_dir))
    assert (first.name, second.name) == ("clip.rev1", "clip.rev2")
    # the old code kept .clip.rev1.lock for good
    assert sorted(os.listdir(result_dir.parent)) == [".clip.rev1.rev2.lock", "clip", "clip.rev1", "clip.rev2",
                                                     "input-clip"]
