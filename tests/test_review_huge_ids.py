"""A result whose entities include the largest id an id PNG holds (2**24 - 1, valid: from another
tool or after edits): the viewer's tables are indexed by the position of an id in the result's
sorted ids, never by its value, so /api/state stays small and nothing builds 16.7M-entry tables."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")

from starlette.testclient import TestClient  # noqa: E402

from _review_result import N, id_maps, make_result  # noqa: E402
from entitysam.io.idpng import MAX_ID  # noqa: E402
from entitysam.review import EditSession, ResultFolder  # noqa: E402
from entitysam.review.idruns import decode_id_runs  # noqa: E402
from entitysam.review.revision import replay_edits  # noqa: E402
from entitysam.review.server import TOKEN_HEADER, Viewer, create_app  # noqa: E402

HUGE = 2**24 - 1
TOKEN = "test-token"
AUTH = {TOKEN_HEADER: TOKEN}


@pytest.fixture()
def huge_result(tmp_path):
    assert HUGE == MAX_ID
    return make_result(tmp_path, big_id=HUGE)


def remap(maps, table):
    return [np.vectorize(lambda v: table(t, int(v)), otypes=[np.uint32])(m) for t, m in enumerate(maps)]


# Times are the process's CPU time (the test client's server thread included): under a loaded
# machine's waits the wall-clock time grew past the bounds; the tables of 2**24 entries these
# tests guard against took about a minute of CPU.
def test_state_of_a_result_with_id_2_24_minus_1_is_small_and_quick(huge_result):
    start = time.process_time()
    viewer = Viewer(huge_result, token=TOKEN)
    with TestClient(create_app(viewer, loopback_only=True)) as client:
        res = client.get("/api/state")
        elapsed = time.process_time() - start
        assert res.status_code == 200
        assert len(res.content) < 100_000, f"/api/state is {len(res.content)} bytes for 4 entities"
        assert elapsed < 3.0, f"opening the viewer and its state took {elapsed:.2f} s of CPU"
        state = res.json()
        assert state["ids"] == [0, 1, 2, 3, HUGE]
        [segment] = state["lookup"]
        assert segment == {"start": 0, "stop": N, "lookup": [0, 1, 2, 3, HUGE]}
        assert {e["id"]: e["presence"] for e in state["entities"]}[HUGE] == list(range(6))
        # the id maps still carry the id itself (the client maps it to its position)
        assert decode_id_runs(client.get("/api/idmaps/0.runs").content).max() == HUGE
        assert client.get(f"/api/thumbs/{HUGE}.png").status_code == 200
    assert all(len(lut) == 5 for lut in viewer.session._lut_cache.values())


def test_edits_and_save_of_a_result_with_id_2_24_minus_1(huge_result):
    viewer = Viewer(huge_result, token=TOKEN)
    with TestClient(create_app(viewer, loopback_only=True)) as client:
        def edit(op, status=200):
            res = client.post("/api/edits", json=op, headers=AUTH)
            assert res.status_code == status, res.text
            return res.json()

        start = time.process_time()
        edit({"op": "merge", "ids": [3, HUGE], "into": HUGE})
        # max(used ids) + 1 would be 2**24, past what a PNG holds: the split (as the viewer's
        # Split button sends it, without new_id) gets the smallest id never used, recorded
        split = edit({"op": "split", "id": HUGE, "frame": 3})
        assert split["ops"][-1] == {"op": "split", "id": HUGE, "frame": 3, "new_id": 4}
        state = edit({"op": "delete", "ids": [1]})
        assert [op["op"] for op in state["ops"]] == ["merge", "split", "delete"]
        assert sorted(e["id"] for e in state["entities"]) == [2, 4, HUGE]
        assert state["ids"] == [0, 1, 2, 3, HUGE]
        assert [(s["start"], s["stop"], s["lookup"]) for s in state["lookup"]] == [
            (0, 3, [0, 0, 2, HUGE, HUGE]), (3, N, [0, 0, 2, 4, 4])]
        res = client.post("/api/save", headers=AUTH)
        assert res.status_code == 200, res.text
        elapsed = time.process_time() - start
        assert len(client.get("/api/state").content) < 100_000
    assert elapsed < 5.0, f"three edits and a save of 8 frames of 32x24 took {elapsed:.2f} s of CPU"

    def expected(t, v):
        if v == 1:
            return 0
        if v in (3, HUGE):
            return HUGE if t < 3 else 4
        return v
    want = remap(id_maps(HUGE), expected)
    revision = ResultFolder.open(huge_result.parent / f"{huge_result.name}.rev1")
    assert [e.id for e in revision.entities] == [2, 4, HUGE]
    assert revision.ids.tolist() == [0, 2, 4, HUGE]
    for t in range(N):
        assert np.array_equal(revision.id_map(t), want[t]), t
    replayed = replay_edits(huge_result, revision.path / "edits.json")
    assert replayed.ops == viewer.session.ops
    for t in range(N):
        assert np.array_equal(replayed.id_map(t), want[t]), t
    # a revision of the revision: ids up to 2**24 - 1 and a free one given to a split
    session = EditSession(revision, [{"op": "split", "id": HUGE, "frame": 1, "new_id": 5}])
    assert np.array_equal(session.id_map(2), np.where(want[2] == HUGE, 5, want[2]))


def test_an_id_a_map_holds_but_panoptic_json_does_not_list_is_still_refused(huge_result):
    import json as _json

    data = _json.loads((huge_result / "panoptic.json").read_text())
    for ann in data["annotations"][0]["annotations"]:  # HUGE's pixels stay in the PNGs, its records go
        ann["segments_info"] = [s for s in ann["segments_info"] if s["id"] != HUGE]
    (huge_result / "panoptic.json").write_text(_json.dumps(data))
    entities = _json.loads((huge_result / "entities.json").read_text())
    entities["entities"] = [e for e in entities["entities"] if e["id"] != HUGE]
    (huge_result / "entities.json").write_text(_json.dumps(entities))
    from entitysam.errors import ResultFolderError

    result = ResultFolder.open(huge_result)
    assert result.ids.tolist() == [0, 1, 2, 3]
    with pytest.raises(ResultFolderError, match="holds id.s. 16777215 that panoptic.json does not list"):
        result.id_map(0)
    with pytest.raises(ResultFolderError, match="16777215"):
        EditSession(result).id_map(0)
    assert np.array_equal(result.id_map(7), id_maps(HUGE)[7])  # frame 7 has no HUGE


@pytest.mark.parametrize("odd", [4, 70_000, HUGE - 1])
def test_an_unlisted_id_beside_id_2_24_minus_1_is_refused_as_before(huge_result, odd):
    from PIL import Image

    from entitysam.errors import ResultFolderError
    from entitysam.io.idpng import encode_ids

    m = id_maps(HUGE)[0].copy()
    m[22:, :3] = odd  # an id of no panoptic.json record (small: the dense table; large: the binary search)
    Image.fromarray(encode_ids(m)).save(huge_result / "panoptic" / "f000.png")
    result = ResultFolder.open(huge_result)
    with pytest.raises(ResultFolderError, match=f"holds id.s. {odd} that panoptic.json does not list"):
        result.id_map(0)
    with pytest.raises(ResultFolderError, match=str(odd)):
        EditSession(result).id_map(0)
    assert np.array_equal(result.id_map(1), id_maps(HUGE)[1])


def test_a_split_past_the_largest_id_takes_the_smallest_id_never_used(huge_result):
    # ids 1, 2, 3, HUGE: 4 is free; once 4 and 5 are given (and 5 deleted: never reused), 6
    session = EditSession(ResultFolder.open(huge_result), [])
    session.apply({"op": "split", "id": 2, "frame": 3})
    session.apply({"op": "split", "id": 1, "frame": 3})
    session.apply({"op": "delete", "ids": [5]})
    session.apply({"op": "split", "id": 3, "frame": 3})
    assert [op["new_id"] for op in session.ops if op["op"] == "split"] == [4, 5, 6]
