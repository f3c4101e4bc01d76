"""The HTTP API of `entitysam view` (entitysam.review.server / routes), with Starlette's TestClient:
every endpoint, the token of mutating requests, path traversal through URLs."""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")

from starlette.testclient import TestClient  # noqa: E402

from _review_result import BIG_ID, FPS, H, N, W, id_maps, make_result  # noqa: E402
from entitysam.io.idpng import decode_ids  # noqa: E402
from entitysam.review import EditSession, ResultFolder  # noqa: E402
from entitysam.review.idruns import decode_id_runs  # noqa: E402
from entitysam.review.images import jpeg_bytes, scale_to_width  # noqa: E402
from entitysam.review.server import TOKEN_HEADER, VERSION_HEADER, Viewer, create_app  # noqa: E402

TOKEN = "test-token"
AUTH = {TOKEN_HEADER: TOKEN}


@pytest.fixture()
def result(tmp_path):
    return make_result(tmp_path)


@pytest.fixture()
def client(result):
    viewer = Viewer(result, token=TOKEN)
    with TestClient(create_app(viewer, loopback_only=True)) as c:
        c.viewer = viewer
        yield c


def png_ids(content: bytes) -> np.ndarray:
    return decode_ids(np.asarray(Image.open(io.BytesIO(content)).convert("RGB")))


# ---- reading -------------------------------------------------------------------------------
def test_index_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    scripts = re.findall(r'<script src="([^"]+)">', page.text)
    # the player's classic scripts share one scope: the page loads them in this order, app.js (which starts) last
    assert scripts == ["/static/idmaps.js", "/static/player.js", "/static/entities.js", "/static/app.js"]
    for url, kind in [(s, "text/javascript") for s in scripts] + [("/static/style.css", "text/css")]:
        res = client.get(url)
        assert res.status_code == 200 and res.headers["content-type"].startswith(kind)
        assert "cdn" not in res.text.lower() and not re.search(r"https?://", res.text)  # nothing from elsewhere
    assert "cdn" not in page.text.lower()


def test_video_info(client):
    info = client.get("/api/video").json()
    version = info.pop("result_version")
    assert info == {"name": "clip", "width": W, "height": H, "fps": FPS, "sample_aspect_ratio": [1, 1], "num_frames": N,
                    "frame_names": [f"f{t:03d}" for t in range(N)], "has_source": True}
    assert re.fullmatch("[0-9a-f]{16}", version)


def versioned(client, url: str) -> str:
    """`url` with the opened result's version, as the page builds it (only such URLs are cached long)."""
    return f"{url}{'&' if '?' in url else '?'}rv={client.get('/api/video').json()['result_version']}"


def test_state_lists_every_entity_with_colour_presence_and_lookup(client):
    state = client.get("/api/state").json()
    assert state["version"] == 0 and state["ops"] == [] and not state["can_undo"] and not state["can_redo"]
    by_id = {e["id"]: e for e in state["entities"]}
    assert sorted(by_id) == [1, 2, 3, BIG_ID]
    assert by_id[3]["presence"] == list(range(2, N)) and by_id[3]["first_frame"] == 2
    assert by_id[BIG_ID]["presence"] == list(range(0, 6)) and by_id[BIG_ID]["last_frame"] == 5
    assert by_id[1]["score"] == pytest.approx(0.9) and by_id[1]["area"] == sum(int((m == 1).sum()) for m in id_maps())
    from entitysam.io.overlay import entity_color
    assert by_id[2]["color"] == list(entity_color(2))
    [segment] = state["lookup"]
    assert state["ids"] == [0, 1, 2, 3, BIG_ID]  # the lookup is indexed by position in ids
    assert (segment["start"], segment["stop"]) == (0, N) and segment["lookup"] == [0, 1, 2, 3, BIG_ID]


def test_frames_are_jpeg_with_cache_headers(client, result):
    assert client.get("/api/frames/3.jpg").headers["cache-control"] == "no-cache"  # no version: revalidated
    res = client.get(versioned(client, "/api/frames/3.jpg"))
    assert res.status_code == 200 and res.headers["content-type"] == "image/jpeg"
    assert "immutable" in res.headers["cache-control"] and "max-age=31536000" in res.headers["cache-control"]
    image = np.asarray(Image.open(io.BytesIO(res.content)))
    source = ResultFolder.open(result).source_frame(3)
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(image, np.asarray(Image.open(io.BytesIO(jpeg_bytes(source)))))
    for bad in ("/api/frames/8.jpg", "/api/frames/-1.jpg", "/api/frames/x.jpg", "/api/frames/1e3.jpg"):
        assert client.get(bad).status_code == 404, bad


def test_frames_scaled_to_the_width_asked(client):
    res = client.get(versioned(client, "/api/frames/3.jpg?w=16"))
    assert res.status_code == 200 and "immutable" in res.headers["cache-control"]
    assert Image.open(io.BytesIO(res.content)).size == (16, 12)
    for wide in (W, 4 * W):  # never above the frame's own size
        assert Image.open(io.BytesIO(client.get(f"/api/frames/3.jpg?w={wide}").content)).size == (W, H)
    for bad in ("0", "-5", "x", "1.5", ""):
        assert client.get(f"/api/frames/3.jpg?w={bad}").status_code == 400, bad


def jpeg_input(result) -> list:
    """Replace the result's PNG input frames by JPEGs of the same names; returns their paths."""
    folder = ResultFolder.open(result).sources.input
    paths = []
    for png in sorted(Path(folder).glob("*.png")):
        Image.open(png).save(png.with_suffix(".jpg"), quality=90)
        png.unlink()
        paths.append(png.with_suffix(".jpg"))
    return paths


def test_source_jpegs_are_served_byte_identical_at_full_size(result, monkeypatch):
    from entitysam.io.sources import images as source_images

    jpegs = jpeg_input(result)
    yy, xx = np.mgrid[0:H, 0:W]  # frame 3: a smooth picture, to compare scaled versions of it
    Image.fromarray(np.stack([xx * 8, yy * 10, (xx + yy) * 4], axis=-1).astype(np.uint8)).save(jpegs[3], quality=95)
    reference = np.asarray(Image.open(io.BytesIO(jpeg_bytes(scale_to_width(
        ResultFolder.open(result).source_frame(3), 16)))), dtype=float)  # through the source reader
    listings = []
    real_list = source_images._list_frames
    monkeypatch.setattr(source_images, "_list_frames", lambda folder: listings.append(folder) or real_list(folder))
    viewer = Viewer(result, token=TOKEN)
    with TestClient(create_app(viewer, loopback_only=True)) as c:
        for t in (0, 3, N - 1):
            res = c.get(versioned(c, f"/api/frames/{t}.jpg"))
            assert res.status_code == 200 and "immutable" in res.headers["cache-control"]
            assert res.content == jpegs[t].read_bytes()
            assert c.get(f"/api/frames/{t}.jpg?w={W}").content == jpegs[t].read_bytes()  # full width: the same
        scaled = np.asarray(Image.open(io.BytesIO(c.get("/api/frames/3.jpg?w=16").content)), dtype=float)
        assert scaled.shape == (12, 16, 3)  # scaled: decoded by libjpeg at half size, then encoded
        assert np.abs(scaled - reference).mean() < 4  # the same picture
        assert viewer.result.sources.passes == 0  # no frame went through the full-size source reader
        assert len(listings) == 1  # the input folder is listed once, not per request
        jpegs[5].rename(jpegs[5].with_name("other.jpg"))  # no longer the frame's file: not served
        assert c.get("/api/frames/5.jpg").status_code == 404


@pytest.mark.parametrize("how", ["png", "rotated", "cmyk", "other size"])
def test_other_source_files_are_decoded_and_encoded(result, how):
    jpegs = jpeg_input(result)
    image = Image.open(jpegs[3])
    if how == "png":
        jpegs[3].unlink()
        image.save(jpegs[3].with_suffix(".png"))
    elif how == "rotated":  # EXIF orientation 1 keeps the size but still goes through the reader
        exif = Image.Exif()
        exif[0x0112] = 1
        image.save(jpegs[3], exif=exif)
        assert Viewer(result).frame_jpeg(3) == jpegs[3].read_bytes()  # orientation 1: as it is
        exif[0x0112] = 2  # mirrored: same size, the reader flips it
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(jpegs[3], exif=exif)
    elif how == "cmyk":
        image.convert("CMYK").save(jpegs[3])
    else:
        image.resize((W * 2, H * 2)).save(jpegs[3])
    served = Viewer(result).frame_jpeg(3)
    assert served != (jpegs[3] if jpegs[3].exists() else jpegs[3].with_suffix(".png")).read_bytes()
    if how == "other size":
        assert served is None  # not the frame the result was made from
    else:
        source = ResultFolder.open(result).source_frame(3)
        assert np.asarray(Image.open(io.BytesIO(served))).shape == (H, W, 3)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(served))),
                                      np.asarray(Image.open(io.BytesIO(jpeg_bytes(source)))))


def test_missing_source_gives_404_frames_and_has_source_false(tmp_path):
    result = make_result(tmp_path, with_input=False)
    with TestClient(create_app(Viewer(result, token=TOKEN), loopback_only=True)) as c:
        assert c.get("/api/video").json()["has_source"] is False
        res = c.get("/api/frames/0.jpg")
        assert res.status_code == 404 and "source" in res.json()["error"]
        assert c.get("/api/idmaps/0.png").status_code == 200  # the id maps are all the player needs
        assert c.get("/api/thumbs/2.png").status_code == 200  # a thumbnail in the entity's colour


def test_id_maps_are_the_original_pngs(client, result):
    for t, expected in enumerate(id_maps()):
        res = client.get(versioned(client, f"/api/idmaps/{t}.png"))
        assert res.status_code == 200 and res.headers["content-type"] == "image/png"
        assert "immutable" in res.headers["cache-control"]
        np.testing.assert_array_equal(png_ids(res.content), expected)
    assert client.get(f"/api/idmaps/{N}.png").status_code == 404
    # an edit does not change them: the client applies the lookup
    client.post("/api/edits", json={"op": "delete", "ids": [2]}, headers=AUTH)
    np.testing.assert_array_equal(png_ids(client.get("/api/idmaps/0.png").content), id_maps()[0])


def test_id_runs_are_the_ids_of_the_original_pngs(client, result):
    for t in range(N):
        res = client.get(versioned(client, f"/api/idmaps/{t}.runs"))
        assert res.status_code == 200 and res.headers["content-type"] == "application/octet-stream"
        assert "immutable" in res.headers["cache-control"]
        np.testing.assert_array_equal(decode_id_runs(res.content),
                                      png_ids(client.get(f"/api/idmaps/{t}.png").content))
    assert decode_id_runs(client.get("/api/idmaps/0.runs").content).max() == BIG_ID
    for bad in (f"/api/idmaps/{N}.runs", "/api/idmaps/-1.runs", "/api/idmaps/x.runs", "/api/idmaps/..%2f0.runs"):
        assert client.get(bad).status_code == 404, bad
    # an edit does not change them either (the client applies the lookup)
    client.post("/api/edits", json={"op": "delete", "ids": [2]}, headers=AUTH)
    np.testing.assert_array_equal(decode_id_runs(client.get("/api/idmaps/0.runs").content), id_maps()[0])


def test_thumbnails(client):
    res = client.get("/api/thumbs/2.png?v=0")
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    assert res.headers["cache-control"] == "no-cache"  # no version: the key alone is the same in another result
    key = next(e["thumb"] for e in client.get("/api/state").json()["entities"] if e["id"] == 2)
    assert "max-age" in client.get(versioned(client, f"/api/thumbs/2.png?k={key}")).headers["cache-control"]
    thumb = Image.open(io.BytesIO(res.content))
    assert max(thumb.size) <= 64
    for bad in ("/api/thumbs/99.png", "/api/thumbs/abc.png", "/api/thumbs/0.png"):
        assert client.get(bad).status_code == 404
    client.post("/api/edits", json={"op": "delete", "ids": [2]}, headers=AUTH)
    assert client.get("/api/thumbs/2.png?v=1").status_code == 404  # gone with the edit


@pytest.mark.parametrize("number", ["%C2%B2", "%D9%A3", "%E0%A5%A9", "99999999999999999999999"],
                         ids=["superscript-2", "arabic-indic-3", "devanagari-3", "huge"])
def test_numbers_in_urls_are_ascii_decimals_only(client, number):
    """str.isdigit() takes "²" (int() then raised: a 500) and int() takes other scripts' digits
    (frame "٣" was served as frame 3): a URL's number is ASCII digits or nothing."""
    for url in (f"/api/frames/{number}.jpg", f"/api/idmaps/{number}.png", f"/api/idmaps/{number}.runs",
                f"/api/thumbs/{number}.png"):
        assert client.get(url).status_code == 404, url
    assert client.get(f"/api/frames/3.jpg?w={number}").status_code in (200, 400)
    assert client.get("/api/frames/3.jpg?w=%C2%B2").status_code == 400


def test_thumbnail_keys_change_only_with_what_the_thumbnail_shows(client):
    def keys():
        return {e["id"]: e["thumb"] for e in client.get("/api/state").json()["entities"]}

    before = keys()
    assert all(before.values()) and len(set(before.values())) == len(before)
    client.post("/api/edits", json={"op": "delete", "ids": [BIG_ID]}, headers=AUTH)
    client.post("/api/edits", json={"op": "label", "id": 2, "text": "x"}, headers=AUTH)
    after = keys()
    assert after == {i: k for i, k in before.items() if i != BIG_ID}  # other entities: same picture
    client.post("/api/edits", json={"op": "merge", "ids": [2, 3], "into": 2}, headers=AUTH)
    assert keys()[2] != before[2]  # entity 2 is made of more now
    assert client.get(f"/api/thumbs/2.png?k={keys()[2]}").status_code == 200


def test_a_thumbnail_asked_with_a_stale_key_is_not_cached(client):
    """The page asks /api/thumbs/<id>.png?k=<key of its state>; an edit made while the request was
    on its way (a merge in another tab, or in this one while the thumbnails load one by one) gave
    the new picture under the old key, cached for an hour: an undo, which brings the old key back,
    then showed the merged entity's thumbnail."""
    def key(i):
        return next(e["thumb"] for e in client.get("/api/state").json()["entities"] if e["id"] == i)

    before = key(2)
    url = versioned(client, f"/api/thumbs/2.png?k={before}")
    alone = client.get(url)
    assert "max-age" in alone.headers["cache-control"]
    client.post("/api/edits", json={"op": "merge", "ids": [2, 3], "into": 2}, headers=AUTH)
    merged = client.get(url)  # the old key: another picture now
    assert merged.status_code == 200 and merged.content != alone.content
    assert merged.headers["cache-control"] == "no-store"
    assert "max-age" in client.get(versioned(client, f"/api/thumbs/2.png?k={key(2)}")).headers["cache-control"]
    client.post("/api/undo", headers=AUTH)
    assert key(2) == before and client.get(url).content == alone.content


def test_result_files_are_served(client, result):
    res = client.get("/files/manifest.json")
    assert res.status_code == 200 and res.json()["video"] == "clip"
    assert client.get("/files/panoptic/f000.png").content == (result / "panoptic" / "f000.png").read_bytes()


# ---- path traversal ------------------------------------------------------------------------
TRAVERSALS = [
    "/files/../secret.txt", "/files/%2e%2e/secret.txt", "/files/%2E%2E%2Fsecret.txt", "/files/..%2fsecret.txt",
    "/files/panoptic/..%2f..%2fsecret.txt", "/files//etc/passwd", "/files/%2fetc%2fpasswd", "/files/link-out.txt",
    "/files/dir-out/secret.txt", "/files/..%5csecret.txt", "/files/manifest.json%00.png",
    "/static/../server.py", "/static/%2e%2e/server.py", "/static/%2e%2e%2fserver.py", "/static/%2fetc%2fpasswd",
    "/static/..%2f..%2f..%2fsecret.txt",
]


@pytest.mark.parametrize("url", TRAVERSALS)
def test_path_traversal_is_refused(client, result, url):
    (result.parent / "secret.txt").write_text("outside")
    os.symlink(result.parent / "secret.txt", result / "link-out.txt")
    os.symlink(result.parent, result / "dir-out")
    res = client.get(url)
    assert res.status_code in (404, 400), url
    assert "outside" not in res.text and "import" not in res.text and "root:" not in res.text


# ---- the token -----------------------------------------------------------------------------
MUTATING = [("/api/edits", {"op": "hide", "ids": [1]}), ("/api/undo", None), ("/api/redo", None),
            ("/api/save", None), ("/api/export?format=ytvis", None)]


@pytest.mark.parametrize("url,body", MUTATING)
def test_mutating_requests_need_the_token(client, result, url, body):
    for headers in ({}, {TOKEN_HEADER: "wrong"}, {TOKEN_HEADER: ""}):
        res = client.post(url, json=body, headers=headers)
        assert res.status_code == 403, (url, headers)
        assert "token" in res.json()["error"]
    assert client.post(url + ("&" if "?" in url else "?") + "token=nope", json=body).status_code == 403
    assert client.viewer.session.ops == [] and sorted(p.name for p in result.parent.iterdir()) == \
        ["clip", "input-clip"]  # nothing changed, nothing written


def test_token_in_the_query_is_accepted(client):
    res = client.post(f"/api/edits?token={TOKEN}", json={"op": "hide", "ids": [1]})
    assert res.status_code == 200 and res.json()["ops"] == [{"op": "hide", "ids": [1]}]


def test_get_cannot_mutate(client):
    assert client.get("/api/edits").status_code == 405
    assert client.get(f"/api/save?token={TOKEN}").status_code == 405


def test_a_loopback_server_answers_only_loopback_host_names(result):
    """DNS rebinding: a page whose own domain resolves to 127.0.0.1 gets no answer."""
    from entitysam.review.server import allowed_hosts

    app = create_app(Viewer(result, token=TOKEN), hosts=allowed_hosts("127.0.0.1"), loopback_only=True)
    for base in ("http://127.0.0.1:8765", "http://localhost:8765"):
        with TestClient(app, base_url=base) as c:
            assert c.get("/api/video").status_code == 200, base
    with TestClient(app, base_url="http://attacker.example:8765") as c:
        assert c.get("/api/video").status_code == 400
        assert c.post("/api/edits", json={"op": "hide", "ids": [1]}, headers=AUTH).status_code == 400
    assert allowed_hosts("0.0.0.0") is None and allowed_hosts("192.168.1.5") is None  # chosen by the user
    assert "localhost" in allowed_hosts("localhost") and "[::1]" in allowed_hosts("::1")


def test_a_server_on_another_loopback_address_answers_its_url(result):
    """`entitysam view --host 127.0.0.2` printed http://127.0.0.2:PORT/?token=..., whose Host was
    refused ("Invalid host header", 400) for the page and every request: it is one of the names."""
    from entitysam.review.server import allowed_hosts

    hosts = allowed_hosts("127.0.0.2")
    app = create_app(Viewer(result, token=TOKEN), hosts=hosts, loopback_only=hosts is not None)
    for base in ("http://127.0.0.2:8765", "http://localhost:8765"):
        with TestClient(app, base_url=base) as c:
            assert c.get("/").status_code == 200 and c.get("/api/video").status_code == 200, base
    with TestClient(app, base_url="http://attacker.example:8765") as c:
        assert c.get("/api/video").status_code == 400


def test_a_token_is_made_per_run(result):
    a, b = Viewer(result), Viewer(result)
    assert a.token != b.token and len(a.token) >= 24


# ---- edits ---------------------------------------------------------------------------------
def test_every_edit_and_undo_redo(client):
    def edit(op):
        res = client.post("/api/edits", json=op, headers=AUTH)
        assert res.status_code == 200, res.text
        return res.json()

    state = edit({"op": "hide", "ids": [1]})
    assert state["version"] == 1 and state["can_undo"] and [e["hidden"] for e in state["entities"] if e["id"] == 1] == [True]
    state = edit({"op": "label", "id": 3, "text": "car"})
    assert {e["id"]: e["label"] for e in state["entities"]}[3] == "car"
    state = edit({"op": "merge", "ids": [2, 3], "into": 2})
    assert 3 not in {e["id"] for e in state["entities"]}
    assert state["lookup"][0]["lookup"][state["ids"].index(3)] == 2
    state = edit({"op": "split", "id": 2, "frame": 4})
    new_id = state["ops"][-1]["new_id"]
    assert new_id > BIG_ID and {e["id"]: e["presence"] for e in state["entities"]}[new_id] == list(range(4, N))
    assert [(s["start"], s["stop"]) for s in state["lookup"]] == [(0, 4), (4, N)]
    state = edit({"op": "delete", "ids": [BIG_ID]})
    assert BIG_ID not in {e["id"] for e in state["entities"]} and state["lookup"][0]["lookup"][state["ids"].index(BIG_ID)] == 0
    state = client.post("/api/undo", headers=AUTH).json()
    assert BIG_ID in {e["id"] for e in state["entities"]} and state["can_redo"]
    state = client.post("/api/redo", headers=AUTH).json()
    assert BIG_ID not in {e["id"] for e in state["entities"]} and not state["can_redo"]
    assert client.get("/api/state").json() == state
    assert [op["op"] for op in state["ops"]] == ["hide", "label", "merge", "split", "delete"]


def test_undo_with_nothing_to_undo_changes_nothing(client):
    state = client.post("/api/undo", headers=AUTH).json()
    assert state["version"] == 0 and state["ops"] == []


def test_a_change_at_a_version_the_page_has_not_shown_is_409_with_the_state(client, result):
    """A POST naming the edit version its page shows (X-EntitySAM-Version) is refused when another
    page changed the edit since: nothing done, the current state in the answer; without the
    header (a script) any version goes."""
    stale = {**AUTH, VERSION_HEADER: "0"}
    assert client.post("/api/edits", json={"op": "label", "id": 3, "text": "car"}, headers=stale).status_code == 200
    for url, body in (("/api/edits", {"op": "delete", "ids": [2]}), ("/api/undo", None), ("/api/redo", None),
                      ("/api/save", None), ("/api/export?format=ytvis", None)):
        res = client.post(url, json=body, headers=stale)
        assert res.status_code == 409, (url, res.text)
        assert "another tab" in res.json()["error"] and res.json()["state"] == client.get("/api/state").json()
    state = client.get("/api/state").json()
    assert state["version"] == 1 and [op["op"] for op in state["ops"]] == ["label"]
    # no revision saved (the draft of the unsaved label beside it: entitysam.review.draft)
    assert sorted(p.name for p in result.parent.iterdir()) == [".clip.draft.json", "clip", "input-clip"]
    assert client.post("/api/undo", headers={**AUTH, VERSION_HEADER: "1"}).json()["version"] == 2
    assert client.post("/api/redo", headers=AUTH).json()["version"] == 3
    res = client.post("/api/undo", headers={**AUTH, VERSION_HEADER: "three"})
    assert res.status_code == 400 and VERSION_HEADER in res.json()["error"]


@pytest.mark.parametrize("body,message", [
    ({"op": "explode", "ids": [1]}, "unknown edit op"), ({"op": "hide", "ids": [42]}, "no entity 42"),
    ({"op": "merge", "ids": [1], "into": 1}, "at least two"), ({"op": "split", "id": 3, "frame": 2}, "split"),
    ([1, 2], "JSON object"), ("hide", "JSON object"),
])
def test_bad_edits_are_400_with_the_message(client, body, message):
    res = client.post("/api/edits", json=body, headers=AUTH)
    assert res.status_code == 400 and message in res.json()["error"]
    assert client.get("/api/state").json()["version"] == 0


def test_not_json_is_400(client):
    res = client.post("/api/edits", content=b"{not json", headers={**AUTH, "content-type": "application/json"})
    assert res.status_code == 400 and "JSON" in res.json()["error"]


# ---- save and export -----------------------------------------------------------------------
def test_save_writes_a_revision_that_reloads_as_the_edit(client, result):
    ops = [{"op": "merge", "ids": [2, 3], "into": 2}, {"op": "delete", "ids": [1]}, {"op": "split", "id": 2, "frame": 3}]
    for op in ops:
        client.post("/api/edits", json=op, headers=AUTH)
    before = {p.name: p.read_bytes() for p in result.rglob("*") if p.is_file()}
    res = client.post("/api/save", headers=AUTH)
    assert res.status_code == 200
    saved = res.json()
    assert saved["name"] == "clip.rev1" and saved["path"] == str(result.parent / "clip.rev1")
    revision = ResultFolder.open(saved["path"])
    expected = EditSession(ResultFolder.open(result), ops)
    for t in range(N):
        np.testing.assert_array_equal(revision.id_map(t), expected.id_map(t))
    log = json.loads((result.parent / "clip.rev1" / "edits.json").read_text())
    assert [op["op"] for op in log["ops"]] == ["merge", "delete", "split"]
    assert before == {p.name: p.read_bytes() for p in result.rglob("*") if p.is_file()}  # original untouched
    # Save again with no change since (a double click): no second revision of the same edit
    assert client.post("/api/save", headers=AUTH).json() == {**saved, "new": False}
    assert not (result.parent / "clip.rev2").exists()
    client.post("/api/edits", json={"op": "label", "id": 2, "text": "car"}, headers=AUTH)
    assert client.post("/api/save", headers=AUTH).json()["name"] == "clip.rev2"


def test_export_formats_are_the_exporters(client):
    from entitysam.review.export import FORMATS

    assert client.get("/api/exports").json() == {"formats": list(FORMATS)}


def test_export_downloads_each_format(client):
    from pycocotools import mask as mask_utils

    client.post("/api/edits", json={"op": "delete", "ids": [1]}, headers=AUTH)
    client.post("/api/edits", json={"op": "merge", "ids": [2, 3], "into": 2}, headers=AUTH)
    expected = {t: EditSession(client.viewer.result, client.viewer.session.ops).id_map(t) for t in range(N)}
    res = client.post("/api/export?format=ytvis", headers=AUTH)
    assert res.status_code == 200 and res.headers["content-disposition"] == 'attachment; filename="clip-ytvis.json"'

    def mask(seg) -> np.ndarray:
        if seg is None:
            return np.zeros((H, W), bool)
        counts = seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]
        return mask_utils.decode({"size": seg["size"], "counts": counts}).astype(bool)

    tracks = json.loads(res.content)
    assert len(tracks) == 2  # 1 deleted, 3 merged into 2: entities 2 and BIG_ID
    merged = next(tr for tr in tracks if mask(tr["segmentations"][0])[16, 3])  # a pixel of entity 2 in frame 0
    for t in range(N):
        np.testing.assert_array_equal(mask(merged["segmentations"][t]), expected[t] == 2)
    res = client.post("/api/export?format=mots", headers=AUTH)
    assert res.status_code == 200 and res.headers["content-disposition"] == 'attachment; filename="clip-mots.zip"'
    with zipfile.ZipFile(io.BytesIO(res.content)) as zf:
        assert "clip/instances/labels.txt" in zf.namelist()
    for fmt in ("cvat-video", "coco-video"):
        res = client.post(f"/api/export?format={fmt}", headers=AUTH)
        assert res.status_code == 200 and len(res.content) > 100, fmt
    # nothing left by the exports (the draft of the unsaved edits is the viewer's)
    assert sorted(p.name for p in client.viewer.root.parent.iterdir()) == [".clip.draft.json", "clip", "input-clip"]


@pytest.mark.parametrize("video, plain", [("日本", "__"), ('say "hi"', "say _hi_"), ("café", "caf_")])
def test_an_export_of_a_video_named_beyond_ascii_downloads_under_its_name(result, video, plain):
    from urllib.parse import unquote

    manifest = json.loads((result / "manifest.json").read_text())
    (result / "manifest.json").write_text(json.dumps({**manifest, "video": video}))
    with TestClient(create_app(Viewer(result, token=TOKEN), loopback_only=True), raise_server_exceptions=False) as c:
        for fmt, name in [("ytvis", f"{video}-ytvis.json"), ("mots", f"{video}-mots.zip")]:
            res = c.post(f"/api/export?format={fmt}", headers=AUTH)
            assert res.status_code == 200, res.text[:200]  # the old server: 500 (or a name cut at the `"`)
            first, star = res.headers["content-disposition"].split("; filename*=UTF-8''")
            assert first == f'attachment; filename="{plain}{name[len(video):]}"'
            assert unquote(star) == name


def test_a_mots_zip_of_frames_named_beyond_utf8_is_refused_in_one_line(tmp_path):
    """Frames named after input files whose names are not UTF-8 (legal on Linux): the zip cannot hold
    those names (the old server: a 500, UnicodeEncodeError in zipfile); the other formats export."""
    from _review_result import SCORES, images, write_result

    names = [os.fsdecode(b"f\xff%03d" % t) for t in range(N)]
    source = tmp_path / "input"
    source.mkdir()
    for name, image in zip(names, images()):
        Image.fromarray(image).save(source / f"{name}.png")
    entities = [{"id": i, "score": s, "query_index": k} for k, (i, s) in enumerate(SCORES.items())]
    result = write_result(tmp_path / "clip", source, names, id_maps(), entities, FPS)
    with TestClient(create_app(Viewer(result, token=TOKEN), loopback_only=True), raise_server_exceptions=False) as c:
        res = c.post("/api/export?format=mots", headers=AUTH)
        assert res.status_code == 400 and res.json()["error"].startswith(
            "cannot download the export of clip as a zip: the file name 'f\\udcff000.png' is not valid UTF-8")
        assert all(c.post(f"/api/export?format={fmt}", headers=AUTH).status_code == 200
                   for fmt in ("cvat-video", "ytvis", "coco-video"))
    assert sorted(os.listdir(tmp_path)) == ["clip", "input"]  # nothing left behind


@pytest.mark.parametrize("fmt", ["", "xml", "../../etc", "mots/../x"])
def test_unknown_export_format_is_400(client, fmt):
    res = client.post(f"/api/export?format={fmt}", headers=AUTH)
    assert res.status_code == 400 and "unknown export format" in res.json()["error"]


def test_a_folder_that_is_no_result_is_refused(tmp_path):
    from entitysam.errors import EntitySAMError

    with pytest.raises(EntitySAMError, match="manifest"):
        Viewer(tmp_path)


# ---- the command ---------------------------------------------------------------------------
def test_view_command_refuses_a_folder_that_is_no_result(tmp_path, capsys):
    from entitysam.cli import main

    assert main(["view", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path) in err and "Traceback" not in err


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_view_command_checks_the_port(result, capsys, port):
    from entitysam.cli import main

    assert main(["view", str(result), "--port", port]) == 2
    assert "port" in capsys.readouterr().err


def test_view_command_help_and_listing(capsys):
    from entitysam.cli import main

    assert main(["view", "-h"]) == 0
    text = capsys.readouterr().out
    assert "--host" in text and "127.0.0.1" in text and "--open" in text and "token" in text
    main(["-h"])
    assert "view" in capsys.readouterr().out


def test_the_server_binds_localhost_by_default(result, monkeypatch):
    import entitysam.review.server as server

    seen = {}

    def fake_run_server(config, sockets):  # how serve() runs uvicorn (entitysam.review.connections)
        seen["address"] = sockets[0].getsockname()
        sockets[0].close()

    monkeypatch.setattr("entitysam.review.connections.run_server", fake_run_server)
    lines = []
    server.serve(result, port=0, say=lines.append)
    assert seen["address"][0] == "127.0.0.1" and seen["address"][1] > 0
    assert f"http://127.0.0.1:{seen['address'][1]}/?token=" in lines[0]


def test_open_opens_the_url_with_its_token(result, monkeypatch):
    import threading

    import entitysam.review.server as server

    opened = threading.Event()
    urls = []

    def fake_run_server(config, sockets):  # how serve() runs uvicorn (entitysam.review.connections)
        sockets[0].close()
        opened.wait(10)  # serving: the browser opens meanwhile

    def fake_open(url):
        urls.append(url)
        opened.set()

    monkeypatch.setattr("entitysam.review.connections.run_server", fake_run_server)
    monkeypatch.setattr("webbrowser.open", fake_open)
    lines = []
    server.serve(result, port=0, open_browser=True, say=lines.append, token="tok")
    assert len(urls) == 1 and urls[0].endswith("/?token=tok") and urls[0] in lines[0]
