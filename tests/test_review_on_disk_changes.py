"""`entitysam view` over a result folder that changes on disk while it is open (rewritten by
`segment --overwrite`, its manifest corrupted, deleted, a PNG tampered with), and hostile edit
bodies: save and export refuse with a 409 and write nothing, read-only endpoints answer 404 or
422 with a one-line JSON error (never a 500), oversized numbers and id lists get a short 400."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")

from starlette.testclient import TestClient  # noqa: E402

from _review_result import FPS, N, SCORES, id_maps, make_result, write_result  # noqa: E402
from entitysam.errors import ResultChangedError  # noqa: E402
from entitysam.review import EditSession, ResultFolder  # noqa: E402
from entitysam.review.export import export_bytes  # noqa: E402
from entitysam.review.revision import replay_edits, save_revision  # noqa: E402
from entitysam.review.server import TOKEN_HEADER, Viewer, create_app  # noqa: E402

TOKEN = "test-token"
AUTH = {TOKEN_HEADER: TOKEN}
CHANGED = "changed on disk since it was opened"


@pytest.fixture()
def result(tmp_path):
    return make_result(tmp_path)


@pytest.fixture()
def client(result):
    # raise_server_exceptions (the default): an exception the routes do not handle (a 500) fails the test
    with TestClient(create_app(Viewer(result, token=TOKEN), loopback_only=True)) as c:
        yield c


def rewrite(result):
    """What `segment -o ... --overwrite` with another input does: a new folder of other id maps."""
    shutil.rmtree(result)
    entities = [{"id": 2000 if i > 3 else i, "score": 0.1, "query_index": k} for k, i in enumerate(SCORES)]
    write_result(result, result.parent / "elsewhere", [f"f{t:03d}" for t in range(N)], id_maps(2000), entities, FPS)


def beside(result):
    return sorted(p.name for p in result.parent.iterdir())


def assert_refused(reply):
    assert reply.status_code == 409, reply.text
    assert CHANGED in reply.json()["error"] and "reopen" in reply.json()["error"]


@pytest.mark.parametrize("change", ["rewritten", "corrupt manifest", "deleted", "panoptic.json edited"])
def test_save_and_export_refuse_a_result_changed_on_disk(client, result, change):
    assert client.post("/api/edits", json={"op": "merge", "ids": [1, 2], "into": 1}, headers=AUTH).status_code == 200
    before = beside(result)
    if change == "rewritten":
        rewrite(result)
        before = beside(result)
    elif change == "corrupt manifest":
        (result / "manifest.json").write_text("{not json")
    elif change == "deleted":
        shutil.rmtree(result)
        before = beside(result)
    else:
        path = result / "panoptic.json"
        path.write_text(path.read_text() + " ")
    assert_refused(client.post("/api/save", headers=AUTH))
    assert_refused(client.post("/api/export?format=ytvis", headers=AUTH))
    assert beside(result) == before  # no revision folder, no staging folder left


def test_the_library_refuses_too_and_edits_json_records_the_opened_digest(result, tmp_path):
    session = EditSession(ResultFolder.open(result), [{"op": "hide", "ids": [2]}])
    opened = session.result.manifest_digest()
    rewrite(result)
    assert session.result.manifest_digest() == opened  # what the session was built on, not the new bytes
    with pytest.raises(ResultChangedError, match=CHANGED):
        save_revision(session)
    with pytest.raises(ResultChangedError, match=CHANGED):
        export_bytes(session, "coco-video")
    assert not (tmp_path / "clip.rev1").exists()
    fresh = EditSession(ResultFolder.open(result), [{"op": "hide", "ids": [2]}])
    rev = save_revision(fresh)  # reopened: saved, and its log replays on the result it was recorded on
    log = json.loads((rev / "edits.json").read_text())
    assert log["original"]["manifest_sha256"] == fresh.result.manifest_digest() != opened
    replay_edits(result, rev / "edits.json")


def test_a_change_while_the_revision_is_written_leaves_no_revision(result, tmp_path, monkeypatch):
    session = EditSession(ResultFolder.open(result), [{"op": "hide", "ids": [2]}])
    import entitysam.review.revision as revision

    write = revision._write_files

    def write_then_change(session, directory):
        files = write(session, directory)
        (result / "manifest.json").write_text("{not json")
        return files
    monkeypatch.setattr(revision, "_write_files", write_then_change)
    before = beside(result)
    with pytest.raises(ResultChangedError):
        save_revision(session)
    assert beside(result) == before


def test_read_only_endpoints_over_a_tampered_or_deleted_result_are_404_or_422(client, result):
    (result / "panoptic" / "f003.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    reply = client.get("/api/idmaps/3.runs")
    assert reply.status_code == 422 and "f003.png" in reply.json()["error"], reply.text
    shutil.rmtree(result)
    for url in ("/api/idmaps/3.png", "/api/idmaps/4.runs", "/api/thumbs/2.png"):
        reply = client.get(url)
        assert reply.status_code == 404 and "gone" in reply.json()["error"], (url, reply.text)
        assert "\n" not in reply.json()["error"]
    assert client.get("/api/state").status_code == 200  # what was read when it was opened is still shown


def test_an_integer_over_the_digit_limit_is_a_400(client):
    body = '{"op": "hide", "ids": [' + "9" * 5000 + "]}"
    reply = client.post("/api/edits", content=body.encode(), headers={**AUTH, "content-type": "application/json"})
    assert reply.status_code == 400 and "the edit must be a JSON object" in reply.json()["error"], reply.text
    assert len(reply.text) < 400
    assert client.get("/api/state").json()["version"] == 0


def test_a_message_naming_missing_ids_is_capped(client):
    ids = list(range(2000, 102_000))  # none of them an entity (~700 kB: under the viewer's 1 MiB for an edit)
    reply = client.post("/api/edits", json={"op": "hide", "ids": ids}, headers=AUTH)
    error = reply.json()["error"]
    assert reply.status_code == 400 and len(error) < 300, error[:300]
    assert error.startswith("hide: no entity 2000, 2001,") and "and 99990 more" in error
