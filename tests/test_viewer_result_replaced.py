"""`entitysam view` while its result folder is replaced by another complete result (`segment
--overwrite` renames a new folder into place; a revision saved over the original does the same):
the routes that read the result's files answer 409 "reload the viewer" instead of the new result's
files under the entities, ids and edits read from the old one, and the page's URLs carry the
opened result's version so that a cached copy of another result's file never answers for it.
The old viewer sent the new folder's id maps, thumbnails and files (200, cached for a year)."""

from __future__ import annotations

import os
import shutil
import time

import httpx
import pytest

pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")

from starlette.testclient import TestClient  # noqa: E402

from _review_result import make_result  # noqa: E402
from _viewer import live_server  # noqa: E402
from entitysam.review.server import TOKEN_HEADER, Viewer, create_app  # noqa: E402

TOKEN = "test-token"
AUTH = {TOKEN_HEADER: TOKEN}
CHANGED = "the result changed on disk since the viewer opened it"
ALL_FETCHED = """viewer.fetchedAll && [...document.querySelectorAll('tr.entity img')]
                 .every((img) => img.complete && img.naturalWidth > 0)"""
READS = ("/api/idmaps/0.png", "/api/idmaps/5.runs", "/api/thumbs/2.png", "/api/frames/0.jpg",
         "/files/manifest.json", "/files/panoptic/f000.png")


@pytest.fixture()
def result(tmp_path):
    return make_result(tmp_path)


@pytest.fixture()
def client(result):
    with TestClient(create_app(Viewer(result, token=TOKEN), loopback_only=True)) as c:
        yield c


def replace_with_another_result(result):
    """What `segment -o ... --overwrite` does: another complete result (other ids: 2000 where the
    old one has 1005), written beside, renamed into place once complete, the old one removed."""
    other = make_result(result.parent / "next", big_id=2000)
    aside = result.with_name("old-result")
    os.rename(result, aside)
    os.rename(other, result)
    shutil.rmtree(aside)


def assert_changed(reply, url=""):
    assert reply.status_code == 409, (url, reply.status_code, reply.content[:200])
    error = reply.json()["error"]
    assert CHANGED in error and "reload the viewer" in error and "\n" not in error, (url, error)
    assert reply.headers["cache-control"] == "no-store"


def test_reads_of_a_replaced_result_are_409_not_the_other_results_files(client, result):
    for url in READS:
        assert client.get(url).status_code == 200, url
    assert client.post("/api/edits", json={"op": "hide", "ids": [2]}, headers=AUTH).status_code == 200
    replace_with_another_result(result)
    new_png = (result / "panoptic" / "f000.png").read_bytes()
    for url in READS:
        reply = client.get(url)
        assert reply.content != new_png, url  # the old viewer: the new result's id map, under the old ids
        assert_changed(reply, url)
    assert "another folder is in its place" in client.get("/api/idmaps/0.png").json()["error"]
    # what lives in memory still works: the state, undo, redo (nothing read from the folder)
    assert client.get("/api/state").json()["ops"] == [{"op": "hide", "ids": [2]}]
    assert client.post("/api/undo", headers=AUTH).json()["ops"] == []
    assert client.post("/api/redo", headers=AUTH).status_code == 200
    assert client.post("/api/save", headers=AUTH).status_code == 409  # as before: nothing written


def test_a_manifest_rewritten_in_place_is_409_and_a_deleted_folder_still_404(client, result):
    manifest = result / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"fps"', '"fps" ', 1))  # another size: a rewrite
    reply = client.get("/api/idmaps/0.runs")
    assert_changed(reply)
    assert "manifest.json was rewritten" in reply.json()["error"]
    shutil.rmtree(result)
    for url in ("/api/idmaps/0.png", "/api/thumbs/2.png", "/files/manifest.json"):
        reply = client.get(url)
        assert reply.status_code == 404 and "gone" in reply.json()["error"], (url, reply.text)


def test_a_replacement_during_a_read_is_409(result):
    viewer = Viewer(result, token=TOKEN)
    read = viewer.id_png

    def read_then_replace(index):
        data = read(index)  # the old file read, the folder replaced before it is sent
        replace_with_another_result(result)
        return data
    viewer.id_png = read_then_replace
    with TestClient(create_app(viewer, loopback_only=True)) as c:
        assert_changed(c.get("/api/idmaps/0.png"))


def test_urls_carry_the_result_version_and_only_those_are_cached_long(result):
    old = Viewer(result, token=TOKEN)
    version = old.video_info()["result_version"]
    with TestClient(create_app(old, loopback_only=True)) as c:
        reply = c.get(f"/api/idmaps/0.runs?rv={version}")
        assert reply.status_code == 200 and "immutable" in reply.headers["cache-control"]
        assert c.get("/api/idmaps/0.runs").headers["cache-control"] == "no-cache"
    replace_with_another_result(result)
    # the viewer restarted on the new result
    with TestClient(create_app(Viewer(result, token=TOKEN), loopback_only=True)) as c:
        fresh = c.get("/api/video").json()["result_version"]
        assert fresh != version  # another URL: the browser's cached copy of the old one is not used
        assert c.get(f"/api/idmaps/0.runs?rv={fresh}").status_code == 200
        reply = c.get(f"/api/idmaps/0.runs?rv={version}")  # a page still open on the old result
        assert reply.status_code == 409 and "reload the page" in reply.json()["error"]


def test_a_live_server_answers_409_without_a_traceback(result):
    with live_server(Viewer(result, token=TOKEN)) as (url, errors):
        assert httpx.get(f"{url}/api/idmaps/3.png", timeout=10).status_code == 200
        replace_with_another_result(result)
        assert_changed(httpx.get(f"{url}/api/idmaps/3.png", timeout=10))
        assert httpx.get(f"{url}/api/state", timeout=10).status_code == 200
    assert not errors.tracebacks()


def test_the_page_asks_versioned_urls_and_says_when_the_result_changed(result):
    """In headless Chromium: every frame, id map and thumbnail URL carries ?rv=; once the result is
    replaced, a fetch of its files puts the server's message in the status line."""
    from _viewer import browser_page, chromium_or_skip, open_viewer, view_server

    chromium_or_skip()
    asked: list[str] = []
    with view_server(result) as (url, _token), browser_page() as page:
        page.on("request", lambda r: asked.append(r.url))
        open_viewer(page, url)
        version = page.evaluate("viewer.info.result_version")
        # every frame and thumbnail fetched first: no fetch of the page's own crosses the replacement.
        # The browser's cache then answers each URL the page asked (cached for good): a frame at a
        # width not asked yet (what a resized window asks) reaches the server.
        page.wait_for_function(ALL_FETCHED)
        assert page.evaluate("fetchRead(versioned('/api/idmaps/1.runs')).then((r) => r.status)") == 200
        replace_with_another_result(result)
        assert page.evaluate("fetchRead(versioned('/api/idmaps/1.runs')).then((r) => r.status)") == 200  # cached
        assert "changed on disk" not in page.inner_text("#status")
        page.evaluate("fetchBlob(versioned(`/api/frames/1.jpg?w=${viewer.frameWidth - 1}`), 1)")
        page.wait_for_function("document.getElementById('status').textContent.includes('changed on disk')",
                               timeout=20000)
        assert "reload the viewer" in page.inner_text("#status")
        assert page.errors == []
    files = [u for u in asked if any(f"/api/{kind}/" in u for kind in ("frames", "idmaps", "thumbs"))]
    assert files and all(f"rv={version}" in u for u in files), files[:3]


def test_the_page_says_at_once_that_a_replaced_result_can_no_longer_be_saved(result):
    """Every frame and thumbnail fetched, the result replaced (`segment --overwrite`): the page asks no file
    that would answer 409, yet its next edit, a return to the page and a reload say that the result
    changed on disk (Save and Export will refuse it), not only a Save after all the edits."""
    from _viewer import browser_page, chromium_or_skip, open_viewer, view_server

    chromium_or_skip()
    said = f"document.querySelector('header').innerText.includes({CHANGED!r})"
    with view_server(result) as (url, _token), browser_page() as page:
        open_viewer(page, url)
        page.wait_for_function(ALL_FETCHED)
        assert not page.evaluate(said)
        replace_with_another_result(result)
        page.evaluate("window.dispatchEvent(new Event('focus'))")
        page.wait_for_function(said, timeout=10000)
        page.click('tr.entity[data-id="2"]')
        page.click("#delete")
        page.wait_for_function("viewer.state.version === 1")
        assert page.evaluate(said) and page.inner_text("#status") == "delete done"
        page.reload()
        open_viewer(page, url)
        assert page.evaluate(said) and "reload the viewer" in page.inner_text("header")
        assert page.errors == []


def swap_in_and_back(result, other):
    """The opened folder moved aside, `other` moved into its place, then both moved back: the path
    names the opened folder again, on its own (device, inode), but in between it named another."""
    aside = result.with_name("aside")
    os.rename(result, aside)
    os.rename(other, result)
    os.rename(result, other)
    os.rename(aside, result)


@pytest.fixture()
def other(result):
    return make_result(result.parent / "next", big_id=2000)


def test_a_folder_swapped_out_and_back_during_a_read_is_409(result, other):
    viewer = Viewer(result, token=TOKEN)
    foreign = (other / "panoptic" / "f000.png").read_bytes()

    def read_the_other_one(index):  # the read happens while the other result is in the folder's place
        aside = result.with_name("aside")
        os.rename(result, aside)
        os.rename(other, result)
        data = (result / "panoptic" / f"f{index:03d}.png").read_bytes()
        os.rename(result, other)
        os.rename(aside, result)
        return data
    viewer.id_png = read_the_other_one
    with TestClient(create_app(viewer, loopback_only=True)) as c:
        reply = c.get("/api/idmaps/0.png")
        assert reply.content != foreign  # the old viewer: 200, the other result's id map (its inode was back)
        assert_changed(reply)
        assert "moved away and back" in reply.json()["error"]


def test_a_folder_swapped_out_and_back_between_requests_is_409(client, result, other):
    assert client.get("/api/idmaps/0.png").status_code == 200
    time.sleep(0.02)  # a clock tick: on a coarse clock the rename could share the open's ctime
    swap_in_and_back(result, other)
    for url in READS:
        assert_changed(client.get(url), url)  # the old viewer: 200 (the same device and inode again)


@pytest.mark.parametrize("name", ["manifest.json", "panoptic.json"])
def test_a_record_rewritten_at_the_same_size_and_mtime_is_409(client, result, name):
    """A rewrite within one tick of the file system's clock leaves size and mtime as they were;
    os.utime puts the old mtime back the same way (as `touch -r`, `cp -p`, `rsync -a` do)."""
    path = result / name
    before = os.stat(path)
    text = path.read_text()
    changed = text.replace("5.0", "6.0", 1) if name == "manifest.json" else text.replace('"area":368', '"area":367', 1)
    assert changed != text and len(changed) == len(text)
    time.sleep(0.02)
    path.write_text(changed)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    reply = client.get("/api/idmaps/0.runs")
    assert_changed(reply)  # the old viewer: 200, the same (device, inode, size, mtime)
    assert f"{name} was rewritten" in reply.json()["error"]


def test_a_file_added_to_the_folder_is_no_change_and_a_later_swap_still_is(client, result, other):
    time.sleep(0.02)
    (result / "notes.txt").write_text("reviewed by me")  # the folder's mtime and ctime change
    for url in READS:
        assert client.get(url).status_code == 200, url
    (result / "notes.txt").unlink()
    assert client.get("/api/idmaps/1.png").status_code == 200
    time.sleep(0.02)
    swap_in_and_back(result, other)  # compared with the folder's times after the file came and went
    assert_changed(client.get("/api/idmaps/1.png"))
