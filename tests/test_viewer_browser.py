"""`entitysam view` in a real browser: headless system Chromium driven by Playwright (no browser
download), on a result made by the bundled demo model. Skipped only where Chromium is missing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from _viewer import browser_page, chromium_or_skip, open_viewer, view_server

pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")

SPLIT_FRAME = 3
DOCS_SHOT = os.environ.get("ENTITYSAM_VIEWER_DOCS_SHOT")  # set to docs/viewer.png to refresh the README picture


@pytest.fixture(scope="module")
def demo_result(tmp_path_factory):
    """A result of the bundled demo model (8 frames of the default demo video, ~1 min of CPU)."""
    chromium_or_skip()
    from entitysam.pipeline.demo import run_demo

    out = tmp_path_factory.mktemp("viewer-demo") / "run"
    run_demo(out, num_frames=8, formats=("panoptic", "entities"))
    return out / "demo"


def pixel_of(page, entity_id: int) -> tuple[float, float]:
    """Page coordinates of a pixel of `entity_id` in the frame shown (the one nearest its centroid)."""
    xy = page.evaluate("""(id) => {
        const {width} = viewer.info, n = viewer.info.width * viewer.info.height;
        let sx = 0, sy = 0, count = 0;
        for (let p = 0; p < n; p++) if (viewer.idAt(p % width, Math.floor(p / width)) === id) {
            sx += p % width; sy += Math.floor(p / width); count++; }
        if (!count) return null;
        const cx = sx / count, cy = sy / count;
        let best = null, bestD = Infinity;
        for (let p = 0; p < n; p++) {
            const x = p % width, y = Math.floor(p / width);
            if (viewer.idAt(x, y) !== id) continue;
            const d = (x - cx) ** 2 + (y - cy) ** 2;
            if (d < bestD) { bestD = d; best = [x, y]; }
        }
        const rect = document.getElementById("overlay-canvas").getBoundingClientRect();
        return [rect.left + (best[0] + 0.5) / viewer.info.width * rect.width,
                rect.top + (best[1] + 0.5) / viewer.info.height * rect.height, best[0], best[1]];
    }""", entity_id)
    assert xy is not None, f"entity {entity_id} is not in frame {page.evaluate('viewer.frame')}"
    return xy


def pixel_on_screen(page, x: int, y: int) -> tuple[float, float]:
    """Page coordinates of the centre of the id map's pixel (x, y)."""
    return tuple(page.evaluate(f"""(() => {{ const r = document.getElementById('overlay-canvas').getBoundingClientRect();
        return [r.left + ({x} + 0.5) / viewer.info.width * r.width, r.top + ({y} + 0.5) / viewer.info.height * r.height];
    }})()"""))


def wait_version(page, version: int) -> dict:
    page.wait_for_function(f"viewer.state.version >= {version}", timeout=30000)
    return page.evaluate("({version: viewer.state.version, ids: viewer.state.entities.map(e => e.id), "
                         "ops: viewer.state.ops, status: document.getElementById('status').textContent})")


def selected_rows(page) -> dict:
    return page.evaluate("""() => ({
        list: [...document.querySelectorAll('tr.entity.selected')].map(e => +e.dataset.id),
        timeline: [...document.querySelectorAll('.tl-row.selected')].map(e => +e.dataset.id),
        viewer: [...viewer.selected]})""")


def show_frame(page, t: int) -> None:
    page.evaluate(f"""() => {{ const s = document.getElementById('scrubber'); s.value = {t};
                              s.dispatchEvent(new Event('input')); }}""")
    page.wait_for_function(f"viewer.rendered === {t}")


def test_review_session_in_the_browser(demo_result, tmp_path):
    from entitysam.review import EditSession, ResultFolder

    original = ResultFolder.open(demo_result)
    n = original.num_frames
    with view_server(demo_result) as (url, _token), browser_page() as page:
        open_viewer(page, url)
        page.screenshot(path=str(tmp_path / "01-open.png"))
        assert page.evaluate("viewer.info.num_frames") == n

        # play: the player runs through the frames at the video's fps and stops at the end
        before = page.evaluate("viewer.renderCount")
        page.click("#play")
        page.wait_for_function(f"viewer.rendered === {n - 1} && !viewer.playing", timeout=60000)
        assert page.evaluate("viewer.renderCount") - before >= n - 1
        assert page.inner_text("#frame-label") == f"frame {n - 1} ({n} of {n})"
        # arrow keys step
        page.keyboard.press("ArrowLeft")
        page.wait_for_function(f"viewer.rendered === {n - 2}")
        page.keyboard.press("ArrowRight")
        page.wait_for_function(f"viewer.rendered === {n - 1}")
        show_frame(page, SPLIT_FRAME)

        # the entities to edit: all present at the split frame, the split one also before it
        ents = {e["id"]: e for e in page.evaluate("viewer.state.entities")}
        here = [i for i, e in ents.items() if SPLIT_FRAME in e["presence"]]
        here.sort(key=lambda i: ents[i]["area"])  # small entities first: easy to click, free of occlusion
        split_id = next(i for i in here if min(ents[i]["presence"]) < SPLIT_FRAME)
        keep, merged_away, deleted = [i for i in here if i != split_id][:3]

        # select by clicking on the image: the list and the timeline follow
        x, y, *_ = pixel_of(page, keep)
        page.mouse.move(x, y)
        page.wait_for_function(f"document.querySelector('tr.entity[data-id=\"{keep}\"]').classList.contains('hovered')")
        page.mouse.click(x, y)
        assert selected_rows(page) == {"list": [keep], "timeline": [keep], "viewer": [keep]}
        bx, by, px_b, py_b = pixel_of(page, merged_away)
        page.keyboard.down("Shift")
        page.mouse.click(bx, by)
        page.keyboard.up("Shift")
        assert sorted(selected_rows(page)["list"]) == sorted([keep, merged_away])
        page.screenshot(path=str(tmp_path / "02-selected.png"))

        # merge the two
        page.click("#merge")
        state = wait_version(page, 1)
        assert merged_away not in state["ids"] and keep in state["ids"]
        assert page.evaluate(f"viewer.idAt({px_b}, {py_b})") == keep  # its pixels are the kept entity's now

        # delete one, selected in the list this time (the image follows)
        *_, px_c, py_c = pixel_of(page, deleted)
        page.click(f"tr.entity[data-id=\"{deleted}\"]")
        assert selected_rows(page) == {"list": [deleted], "timeline": [deleted], "viewer": [deleted]}
        page.click("#delete")
        state = wait_version(page, 2)
        assert deleted not in state["ids"]
        assert page.evaluate(f"viewer.idAt({px_c}, {py_c})") == 0

        # split one at the current frame
        sx, sy, *_ = pixel_of(page, split_id)
        page.mouse.click(sx, sy)
        page.click("#split")
        state = wait_version(page, 3)
        new_id = state["ops"][-1]["new_id"]
        assert state["ops"][-1] == {"op": "split", "id": split_id, "frame": SPLIT_FRAME, "new_id": new_id}
        assert page.evaluate(f"viewer.state.byId.get({new_id}).presence")[0] == SPLIT_FRAME
        assert page.evaluate(f"viewer.idAt({pixel_of(page, new_id)[2]}, {pixel_of(page, new_id)[3]})") == new_id

        # label, undo, redo
        page.click(f"tr.entity[data-id=\"{keep}\"]")
        page.fill("#label-text", "merged car")
        page.click("#label")
        wait_version(page, 4)
        page.click("#undo")
        state = wait_version(page, 5)
        assert [op["op"] for op in state["ops"]] == ["merge", "delete", "split"]
        page.click("#redo")
        state = wait_version(page, 6)
        assert page.evaluate(f"viewer.state.byId.get({keep}).label") == "merged car"
        page.check("#ids")
        page.screenshot(path=str(tmp_path / "03-edited.png"))

        # save
        page.click("#save")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('saved')", timeout=60000)
        saved = page.evaluate("viewer.lastSave")
        page.screenshot(path=str(tmp_path / "04-saved.png"))

        # export from the menu: a download of the review exporters' file
        page.select_option("#export-format", "ytvis")
        with page.expect_download(timeout=60000) as download:
            page.click("#export")
        assert download.value.suggested_filename == "demo-ytvis.json"
        download.value.save_as(tmp_path / "export.json")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('exported')")
        if DOCS_SHOT:
            shutil.copy(tmp_path / "04-saved.png", DOCS_SHOT)
        assert page.errors == []

    # the files written: a complete revision beside the original, the original untouched
    revision = Path(saved["path"])
    assert revision == demo_result.parent / "demo.rev1"
    for name in ("manifest.json", "edits.json", "panoptic.json", "entities.json", "panoptic"):
        assert (revision / name).exists(), name
    log = json.loads((revision / "edits.json").read_text())
    ops = [{"op": "merge", "ids": [keep, merged_away], "into": keep}, {"op": "delete", "ids": [deleted]},
           {"op": "split", "id": split_id, "frame": SPLIT_FRAME, "new_id": new_id},
           {"op": "label", "id": keep, "text": "merged car"}]
    assert log["ops"] == ops
    reloaded = ResultFolder.open(revision)
    replayed = EditSession(ResultFolder.open(demo_result), ops)
    for t in range(n):
        ids, orig = reloaded.id_map(t), original.id_map(t)
        np.testing.assert_array_equal(ids, replayed.id_map(t))
        assert not np.isin(ids, [merged_away, deleted]).any()
        np.testing.assert_array_equal(ids == keep, np.isin(orig, [keep, merged_away]))
        np.testing.assert_array_equal(ids == 0, (orig == 0) | (orig == deleted))
        assert ((ids == new_id).any()) == (t >= SPLIT_FRAME and (orig == split_id).any())
        assert not (ids == split_id).any() or t < SPLIT_FRAME
    labels = {e["id"]: e.get("label") for e in json.loads((revision / "entities.json").read_text())["entities"]}
    assert labels[keep] == "merged car"
    assert ResultFolder.open(demo_result).manifest == original.manifest
    tracks = json.loads((tmp_path / "export.json").read_text())
    assert len(tracks) == len(original.entities) - 2 + 1  # merged away and deleted; the split adds one


def test_missing_source_shows_a_neutral_background(tmp_path):
    chromium_or_skip()
    from _review_result import make_result

    result = make_result(tmp_path, with_input=False)
    with view_server(result) as (url, _token), browser_page() as page:
        open_viewer(page, url)
        # a pixel with no entity (id 0) shows the background alone
        rgb = page.evaluate("""() => {
            const ctx = document.getElementById('frame-canvas').getContext('2d');
            return [...ctx.getImageData(0, 23, 1, 1).data.slice(0, 3)]; }""")
        assert rgb == [107, 107, 107]
        assert page.evaluate("viewer.idAt(0, 23)") == 0 and page.evaluate("viewer.idAt(0, 0)") == 1
        assert page.errors == []


def test_viewing_without_the_token_cannot_edit(tmp_path):
    chromium_or_skip()
    from _review_result import make_result

    result = make_result(tmp_path)
    with view_server(result) as (url, _token), browser_page() as page:
        open_viewer(page, url.split("?")[0])
        assert "no token" in page.inner_text("#status")
        page.click("tr.entity[data-id=\"2\"]")
        page.click("#delete")
        page.wait_for_function("document.getElementById('status').textContent.includes('token')")
        assert page.evaluate("viewer.state.version") == 0
    assert sorted(p.name for p in result.parent.iterdir()) == ["clip", "input-clip"]


def test_id_decoding_in_the_browser_keeps_every_id(tmp_path):
    """idmaps.js: RGBA pixels -> ids (16 bits when they fit, else 32) and the boundary pixels."""
    chromium_or_skip()
    from entitysam.io.idpng import write_id_png
    from entitysam.review.server import STATIC_DIR

    ids = np.zeros((3, 4), np.uint32)
    ids[0, :2] = 70000  # above 16 bits
    ids[2, 3] = 5
    write_id_png(tmp_path / "big.png", ids)
    write_id_png(tmp_path / "small.png", np.where(ids == 70000, 300, ids))
    with browser_page() as page:
        page.add_script_tag(path=str(STATIC_DIR / "idmaps.js"))
        for name, big in (("big.png", 70000), ("small.png", 300)):
            data = list((tmp_path / name).read_bytes())
            out = page.evaluate("""async (bytes) => {
                const r = await decodeIdPng(new Blob([new Uint8Array(bytes)], {type: 'image/png'}), 4, 3);
                return {ids: [...r.ids], kind: r.ids.constructor.name, maxId: r.maxId,
                        edges: [...new Set(r.edges)].sort((a, b) => a - b)}; }""", data)
            expected = np.where(ids == 70000, big, ids)
            assert out["ids"] == expected.ravel().tolist() and out["maxId"] == big
            assert out["kind"] == ("Uint32Array" if big >= 65536 else "Uint16Array")
            # pixels with a 4-neighbour of another id: (0,0),(0,1),(0,2) row 0, (1,0),(1,1) below, and 5's cross
            assert out["edges"] == [0, 1, 2, 4, 5, 7, 10, 11]
        assert page.errors == []


def test_id_runs_decode_in_the_browser_to_the_ids_and_boundary_of_the_png(tmp_path):
    """idmaps.js decodeIdRuns (what the player reads) gives exactly the ids, id type and boundary
    pixels that decodeIdPng gives for the PNG of the same map, and runs that cover the map."""
    chromium_or_skip()
    from entitysam.io.idpng import write_id_png
    from entitysam.review.idruns import encode_id_runs
    from entitysam.review.server import STATIC_DIR

    rng = np.random.default_rng(3)
    small = rng.integers(0, 3, (9, 11)).astype(np.uint32)  # many short runs, boundaries everywhere
    small[0:4, 0:6] = 300
    big = small.copy()
    big[5:, 7:] = 70000
    with browser_page() as page:
        page.add_script_tag(path=str(STATIC_DIR / "idmaps.js"))
        for ids in (small, big):
            write_id_png(tmp_path / "ids.png", ids)
            out = page.evaluate("""async ([runs, png, w, h]) => {
                const norm = (r) => ({ids: [...r.ids], kind: r.ids.constructor.name, maxId: r.maxId,
                                      edges: [...new Set(r.edges)].sort((a, b) => a - b)});
                const r = decodeIdRuns(new Uint8Array(runs).buffer);
                const kept = Object.keys(r).sort();  // what a decoded frame keeps: no per-pixel ids
                r.ids = idsFromRuns(r, w, h);
                const covered = [...r.runLengths].reduce((a, b) => a + b, 0);
                const p = await decodeIdPng(new Blob([new Uint8Array(png)], {type: 'image/png'}), w, h);
                return {runs: norm(r), png: norm(p), covered, count: r.runIds.length, kept}; }""",
                                [list(encode_id_runs(ids)), list((tmp_path / "ids.png").read_bytes()), 11, 9])
            assert out["runs"]["ids"] == ids.ravel().tolist()
            assert out["runs"] == out["png"]
            assert out["covered"] == ids.size and out["count"] >= 9
            assert out["kept"] == ["edges", "maxId", "runIds", "runLengths"]
        assert page.evaluate("() => { try { decodeIdRuns(new Uint8Array(24).buffer); return 'no error'; }"
                             " catch (e) { return e.message; } }") == "not an id run-length map"
        assert page.errors == []


def test_display_controls_and_play_speed(tmp_path):
    """Opacity, contours, ids on/off change the overlay as they say; Play keeps the video's fps."""
    chromium_or_skip()
    from _review_result import FPS, N, make_result

    result = make_result(tmp_path)
    with view_server(result) as (url, _token), browser_page() as page:
        open_viewer(page, url)
        alpha = "([x, y]) => document.getElementById('overlay-canvas').getContext('2d').getImageData(x, y, 1, 1).data[3]"
        inside, edge, empty = (4, 16), (2, 16), (0, 23)  # entity 2 at frame 0: rows 14-19, columns 2-7
        assert page.evaluate(alpha, inside) == 128 and page.evaluate(alpha, edge) == 255
        assert page.evaluate(alpha, empty) == 0
        page.evaluate("""() => { const s = document.getElementById('opacity'); s.value = 0;
                                 s.dispatchEvent(new Event('input')); }""")
        assert page.evaluate(alpha, inside) == 0 and page.evaluate(alpha, edge) == 255
        page.uncheck("#contours")
        assert page.evaluate(alpha, edge) == 0
        page.check("#ids")  # the ids are written on the overlay in white
        white = page.evaluate("""() => { const d = document.getElementById('overlay-canvas').getContext('2d')
                                         .getImageData(0, 0, 32, 24).data; let n = 0;
                                         for (let p = 0; p < d.length; p += 4) if (d[p] > 200 && d[p + 1] > 200
                                             && d[p + 2] > 200 && d[p + 3] > 200) n++; return n; }""")
        assert white > 0
        started = page.evaluate("performance.now()")
        page.click("#play")
        page.wait_for_function(f"viewer.rendered === {N - 1} && !viewer.playing", timeout=30000)
        elapsed = (page.evaluate("performance.now()") - started) / 1000
        assert elapsed >= 0.9 * (N - 1) / FPS  # not faster than the video
        assert page.errors == []


def test_thumbnails_load_one_at_a_time_in_frame_order_after_the_first_frames(tmp_path):
    """Each thumbnail makes the server decode its source frame: asked in frame order, one at a time,
    they take one forward pass through a video and leave the first frames' requests alone."""
    chromium_or_skip()
    from _review_result import make_result

    result = make_result(tmp_path)
    events: list[tuple[str, str]] = []
    with view_server(result) as (url, _token), browser_page() as page:
        page.on("request", lambda r: events.append(("start", r.url)))
        page.on("requestfinished", lambda r: events.append(("end", r.url)))
        open_viewer(page, url)
        page.wait_for_function("""[...document.querySelectorAll('tr.entity img')]
                                  .every((img) => img.complete && img.naturalWidth > 0)""", timeout=30000)
        thumbs = page.evaluate("Object.fromEntries(viewer.state.entities.map((e) => [e.id, e.thumb]))")
        assert page.errors == []
    asked = [u for kind, u in events if kind == "start" and "/api/thumbs/" in u]
    frames = [int(u.split("k=")[1].split("-")[0]) for u in asked]
    assert len(asked) == len(thumbs) and frames == sorted(frames) and len(set(frames)) > 1
    by_id = [int(thumbs[i].split("-")[0]) for i in sorted(thumbs, key=int)]
    assert by_id != sorted(by_id)  # the list's order (by id) is not the frames' order: the test can fail
    in_flight = 0
    for kind, u in events:
        if "/api/thumbs/" in u:
            in_flight += 1 if kind == "start" else -1
            assert in_flight <= 1
    first_thumb = next(k for k, (kind, u) in enumerate(events) if "/api/thumbs/" in u)
    first_frames = {f"/api/idmaps/{i}.runs" for i in range(8)}  # all 8 frames are within the first window
    ended = {u.split("?")[0].split(url.split("/?")[0])[-1] for kind, u in events[:first_thumb] if kind == "end"}
    assert first_frames <= ended


def test_two_tabs_never_act_on_an_edit_they_have_not_shown(tmp_path):
    """Two tabs of one viewer share its edit: a change sent from a tab that has not shown the
    latest edit (a delete, an undo) is refused and the tab shows the current edit instead; a tab
    coming back into view shows it too; quick Ctrl+Z presses in one tab are each an undo."""
    chromium_or_skip()
    from _review_result import make_result

    from _review_result import BIG_ID

    result = make_result(tmp_path)
    with view_server(result) as (url, _token), browser_page() as a:
        b = a.context.browser.new_page(viewport={"width": 1400, "height": 900})  # another window
        b.on("pageerror", lambda err: a.errors.append(str(err)))
        open_viewer(a, url)
        open_viewer(b, url)
        b.click('tr.entity[data-id="3"]')
        b.fill("#label-text", "car")
        b.click("#label")
        wait_version(b, 1)
        # a still shows version 0: its delete is refused, and it now shows b's label
        a.click('tr.entity[data-id="2"]')
        a.click("#delete")
        a.wait_for_function("document.getElementById('status').textContent.includes('another tab')")
        state = wait_version(a, 1)
        assert state["ops"] == [{"op": "label", "id": 3, "text": "car"}] and 2 in state["ids"]
        assert a.inner_text('tr.entity[data-id="3"] .label') == "car"
        a.click('tr.entity[data-id="2"]')
        a.click("#delete")
        wait_version(a, 2)
        # b's Undo would undo a's delete, which b has not shown: refused, b shows the delete
        b.click("#undo")
        b.wait_for_function("document.getElementById('status').textContent.includes('another tab')")
        state = wait_version(b, 2)
        assert [op["op"] for op in state["ops"]] == ["label", "delete"] and 2 not in state["ids"]
        # coming back into view, a tab shows what another did meanwhile
        b.click('tr.entity[data-id="1"]')
        b.click("#hide")
        wait_version(b, 3)
        a.evaluate("window.dispatchEvent(new Event('focus'))")
        a.wait_for_function("viewer.state.version === 3 && viewer.state.byId.get(1).hidden")
        # two quick Ctrl+Z: two undos, each at the version the one before left
        a.keyboard.press("Control+z")
        a.keyboard.press("Control+z")
        state = wait_version(a, 5)
        assert [op["op"] for op in state["ops"]] == ["label"] and state["status"] == "undo done"
        # labelling several entities from a tab that has not shown the latest edit: none labelled
        b.click('tr.entity[data-id="1"]')
        b.click(f'tr.entity[data-id="{BIG_ID}"]', modifiers=["Shift"])
        b.fill("#label-text", "sky")
        b.click("#label")
        b.wait_for_function("document.getElementById('status').textContent.includes('another tab')")
        b.evaluate("changes")  # the page's queue of changes, once the refusal is shown: nothing more sent
        state = wait_version(b, 5)
        assert [op["op"] for op in state["ops"]] == ["label"] and "another tab" in state["status"]
        assert a.errors == []


def test_the_image_stays_inside_its_stage_as_the_timeline_grows(tmp_path):
    """The image is fitted to the space the timeline leaves it, also once the timeline's rows are
    built and when a split adds one: it never covers the header's buttons or the player's."""
    chromium_or_skip()
    from _review_result import make_result

    result = make_result(tmp_path)
    inside = """() => { const s = document.getElementById('stage').getBoundingClientRect();
        const c = document.getElementById('overlay-canvas').getBoundingClientRect();
        const hit = (id) => { const r = document.getElementById(id).getBoundingClientRect();
                              return document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2).id; };
        return {inside: c.top >= s.top - 1 && c.bottom <= s.bottom + 1 && c.left >= s.left - 1 && c.right <= s.right + 1,
                height: c.height, play: hit('play'), undo: hit('undo')}; }"""
    with view_server(result) as (url, _token), browser_page(1280, 720) as page:
        open_viewer(page, url)
        shown = page.evaluate(inside)
        assert shown["inside"] and shown["play"] == "play" and shown["undo"] == "undo", shown
        page.click('tr.entity[data-id="2"]')
        page.evaluate("viewer.showFrame(4)")
        page.click("#split")
        wait_version(page, 1)
        page.wait_for_function(f"document.getElementById('overlay-canvas').getBoundingClientRect().height < {shown['height']}")
        assert page.evaluate(inside) == {**shown, "height": page.evaluate(inside)["height"]}
        assert page.errors == []


def test_keyboard_only_review(tmp_path):
    """Without a mouse: Tab reaches the entity list, Up/Down move in it, Enter selects (Shift adds),
    Space presses a button or checkbox reached with Tab (not Play), Enter in the label field labels;
    the opacity slider takes its arrows. After a mouse click on Play, Space still pauses."""
    chromium_or_skip()
    from _review_result import make_result

    result = make_result(tmp_path)
    focused = "document.activeElement.id || document.activeElement.dataset.id"
    with view_server(result) as (url, _token), browser_page() as page:
        open_viewer(page, url)
        page.keyboard.press("Control+z")  # nothing to undo yet: said, nothing sent
        page.wait_for_function("document.getElementById('status').textContent === 'nothing to undo'")
        for _ in range(40):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.matches('tr.entity')"):
                break
        assert page.evaluate(focused) == "1"
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Shift+Enter")
        assert selected_rows(page)["list"] == [2, 3] and page.evaluate(focused) == "3"
        for _ in range(10):
            page.keyboard.press("Shift+Tab")
            if page.evaluate(focused) == "merge":
                break
        page.keyboard.press(" ")
        state = wait_version(page, 1)
        assert state["ops"] == [{"op": "merge", "ids": [2, 3], "into": 2}] and not page.evaluate("viewer.playing")
        page.focus("#label-text")
        page.keyboard.type("road")
        page.keyboard.press("Enter")
        wait_version(page, 2)
        assert page.evaluate("viewer.state.byId.get(2).label") == "road"
        page.focus('tr.entity[data-id="2"]')
        page.keyboard.press("Control+z")  # the list is rebuilt: the row keeps the focus
        wait_version(page, 3)
        assert page.evaluate(focused) == "2" and page.evaluate("viewer.state.byId.get(2).label") is None
        page.focus("#contours")
        page.keyboard.press(" ")
        assert not page.is_checked("#contours") and not page.evaluate("viewer.playing")
        page.focus("#opacity")
        page.keyboard.press("ArrowRight")
        assert page.evaluate("[viewer.frame, document.getElementById('opacity').value]") == [0, "51"]
        page.click("#play")
        page.keyboard.press(" ")
        assert not page.evaluate("viewer.playing")
        page.click('tr.entity[data-id="1"]')  # a row clicked with the mouse: Space plays, as before
        page.keyboard.press(" ")
        assert page.evaluate("viewer.playing") and selected_rows(page)["list"] == [1]
        assert page.errors == []


def test_a_long_label_keeps_the_list_and_the_player_in_the_window(tmp_path):
    """A label of 1000 characters without a space is cut with an ellipsis in the list (the full
    text as its tooltip), on the image and under it: the score, frames and area columns stay in
    view and nothing scrolls sideways."""
    chromium_or_skip()
    from _review_result import make_result

    result = make_result(tmp_path)
    long = "unbroken_label_" * 66 + "end!"[:1000 - 15 * 66]
    with view_server(result) as (url, _token), browser_page() as page:
        open_viewer(page, url)
        page.click('tr.entity[data-id="1"]')
        page.fill("#label-text", long)
        page.press("#label-text", "Enter")
        wait_version(page, 1)
        assert page.evaluate("viewer.state.byId.get(1).label") == long
        page.check("#ids")
        page.hover('tr.entity[data-id="1"]')
        page.mouse.move(*pixel_of(page, 1)[:2])
        page.wait_for_function("document.getElementById('hover-label').textContent.startsWith('entity 1')")
        sizes = page.evaluate("""() => {
            const side = document.getElementById('side'), area = document.querySelector('tr.entity td:last-child');
            return {side: side.scrollWidth <= side.clientWidth, page: document.documentElement.scrollWidth <= innerWidth,
                    area: area.getBoundingClientRect().right <= side.getBoundingClientRect().right,
                    display: document.getElementById('display').scrollWidth <= document.getElementById('display').clientWidth,
                    title: document.querySelector('tr.entity[data-id="1"] .label').title}; }""")
        assert sizes == {"side": True, "page": True, "area": True, "display": True, "title": long}
        assert page.errors == []


def test_a_refused_edit_says_why_once(tmp_path):
    """The status line shows the server's reason for a refused edit as it is, not behind the op's
    name a second time ("split: split: ...")."""
    chromium_or_skip()
    from _review_result import make_result

    result = make_result(tmp_path)
    with view_server(result) as (url, _token), browser_page() as page:
        open_viewer(page, url)
        show_frame(page, 2)  # entity 3 enters at frame 2: nothing of it before the split frame
        page.click('tr.entity[data-id="3"]')
        page.click("#split")
        page.wait_for_function("document.getElementById('status').className === 'error'")
        assert page.inner_text("#status").startswith("split: entity 3 is present in frames 2-7; the split frame 2")
        page.click('tr.entity[data-id="3"]')
        page.fill("#label-text", "x" * 1001)
        page.click("#label")
        page.wait_for_function("document.getElementById('status').textContent.includes('1000')")
        assert page.inner_text("#status").startswith("label: text must be")
        assert page.evaluate("viewer.state.version") == 0 and page.errors == []


@pytest.mark.parametrize("shape", [(1000, 1), (1, 1000)])
def test_a_one_pixel_wide_or_high_video_is_shown_and_can_be_clicked(tmp_path, shape):
    """A 1x1000 (or 1000x1) video is shown as a line one screen pixel thick, not as nothing, and
    a click on it selects the entity there."""
    chromium_or_skip()
    from _review_result import write_result

    maps = [np.ones(shape, np.uint32) for _ in range(3)]
    result = write_result(tmp_path / "line", tmp_path / "gone", ["a", "b", "c"], maps,
                          [{"id": 1, "score": 0.5, "query_index": 0}], 5.0)
    with view_server(result) as (url, _token), browser_page() as page:
        open_viewer(page, url)
        box = page.evaluate("document.getElementById('overlay-canvas').getBoundingClientRect().toJSON()")
        assert min(box["width"], box["height"]) >= 1 and max(box["width"], box["height"]) > 500, box
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        assert selected_rows(page)["viewer"] == [1]
        assert page.errors == []


def test_opening_the_viewer_logs_no_error_in_the_console(tmp_path):
    """Opening the page and loading every frame and thumbnail asks nothing that fails (the browser's
    /favicon.ico was a 404 in the console)."""
    chromium_or_skip()
    from _review_result import make_result

    result = make_result(tmp_path)
    console, failed = [], []
    with view_server(result) as (url, _token), browser_page() as page:
        page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
        page.on("response", lambda r: failed.append((r.status, r.url)) if r.status >= 400 else None)
        open_viewer(page, url)
        page.wait_for_function("""viewer.fetchedAll && [...document.querySelectorAll('tr.entity img')]
                                  .every((img) => img.complete && img.naturalWidth > 0)""", timeout=30000)
        page.wait_for_timeout(300)
        assert console == [] and failed == [] and page.errors == []


def test_thumbnails_of_entities_gone_before_their_turn_are_not_asked(tmp_path):
    """Thumbnails load one at a time after the first frames: one whose entity was merged away
    (or whose picture a merge changed) before its turn is not asked (it was a 404 and a wasted
    decode), and the list still gets every current thumbnail."""
    chromium_or_skip()
    from _review_result import make_result

    result = make_result(tmp_path)
    held, asked = [], []
    with view_server(result) as (url, _token), browser_page() as page:
        page.route("**/api/idmaps/1.runs*", lambda route: held.append(route))  # the thumbnails wait for it
        page.on("response", lambda r: asked.append((r.status, r.url.split("/api/thumbs/")[1].split("&rv")[0]))
                if "/api/thumbs/" in r.url else None)
        open_viewer(page, url)
        page.wait_for_function("viewer.state.entities.every((e) => e.thumb)")
        page.click('tr.entity[data-id="2"]')
        page.click('tr.entity[data-id="3"]', modifiers=["Shift"])
        page.click("#merge")
        wait_version(page, 1)
        assert held and asked == []
        for route in held:
            route.continue_()
        page.unroute("**/api/idmaps/1.runs*")
        page.wait_for_function("""[...document.querySelectorAll('tr.entity img')]
                                  .every((img) => img.complete && img.naturalWidth > 0)""", timeout=30000)
        now = page.evaluate("viewer.state.entities.map((e) => `${e.id}.png?k=${e.thumb}`)")
        assert sorted(asked) == sorted((200, u) for u in now) and page.errors == []


def test_the_frame_counter_counts_as_the_entity_list_does(tmp_path):
    """The frame shown is numbered from 0 as the entity list's frames, the timeline, the edits'
    messages and the exports are: at the first frame the list gives an entity, the counter shows
    that number and the entity is there (the counter said 3 / 8 where the list said 2)."""
    chromium_or_skip()
    from _review_result import make_result

    result = make_result(tmp_path)
    with view_server(result) as (url, _token), browser_page() as page:
        open_viewer(page, url)
        first = int(page.inner_text('tr.entity[data-id="3"] td:nth-child(6)').split("\u2013")[0])
        show_frame(page, first)
        assert page.inner_text("#frame-label").startswith(f"frame {first} ")
        assert page.get_attribute("#frame-label", "title") == f"source frame f{first:03d}"
        assert pixel_of(page, 3) and page.evaluate("viewer.state.byId.get(3).presence[0]") == first
        show_frame(page, first - 1)
        assert page.inner_text("#frame-label").startswith(f"frame {first - 1} ")
        assert page.errors == []


def test_the_hover_line_names_what_is_under_the_pointer_now(tmp_path):
    """The line under the image names the entity under the pointer: it follows a frame step and an
    edit under a still pointer and empties when the pointer leaves the image (it kept naming the
    last entity hovered, also on frames where that entity is not)."""
    chromium_or_skip()
    from _review_result import make_result

    result = make_result(tmp_path)
    hover = "document.getElementById('hover-label').textContent"
    with view_server(result) as (url, _token), browser_page() as page:
        open_viewer(page, url)
        page.mouse.move(*pixel_on_screen(page, 2, 16))  # entity 2's left column at frame 0 (it moves right)
        page.wait_for_function(f"{hover} === 'entity 2'")
        page.keyboard.press("ArrowRight")  # frame 1: background there
        page.wait_for_function("viewer.rendered === 1")
        assert page.evaluate(hover) == "" and page.evaluate("viewer.hovered") == 0
        page.keyboard.press("ArrowLeft")
        page.wait_for_function(f"viewer.rendered === 0 && {hover} === 'entity 2'")
        page.evaluate("viewer.edit({op: 'label', id: 2, text: 'cat'})")
        page.wait_for_function(f"{hover} === 'entity 2 \\u00b7 cat'")
        page.evaluate("viewer.edit({op: 'merge', ids: [1, 2], into: 1})")
        page.wait_for_function(f"{hover} === 'entity 1' && viewer.hovered === 1")
        page.mouse.move(*page.evaluate("(() => { const r = document.getElementById('timeline').getBoundingClientRect();"
                                       " return [r.left + 5, r.bottom + 40]; })()"))
        assert page.evaluate(hover) == ""
        assert page.errors == []


def test_selecting_an_entity_puts_its_label_in_the_label_field(tmp_path):
    """The label field holds the selected entity's current label (editing it is no retyping); several
    entities of one label: that label, of different labels or none selected: empty. A state refresh
    never overwrites what is being typed."""
    chromium_or_skip()
    from _review_result import make_result

    result = make_result(tmp_path)
    with view_server(result) as (url, token), browser_page() as page:
        open_viewer(page, url)
        page.click('tr.entity[data-id="3"]')
        assert page.input_value("#label-text") == ""  # no label yet
        page.fill("#label-text", "car")
        page.click("#label")
        wait_version(page, 1)
        page.click('tr.entity[data-id="2"]')
        assert page.input_value("#label-text") == ""  # another entity: its own (no) label, not "car"
        page.click('tr.entity[data-id="3"]')
        assert page.input_value("#label-text") == "car"  # what was failing: the field stayed as it was
        page.click('tr.entity[data-id="2"]', modifiers=["Control"])  # 3 and 2: labels differ
        assert page.input_value("#label-text") == ""
        page.click('tr.entity[data-id="2"]')
        page.fill("#label-text", "car")
        page.click("#label")
        wait_version(page, 2)
        page.click('tr.entity[data-id="3"]', modifiers=["Control"])  # 2 and 3, both "car"
        assert page.input_value("#label-text") == "car"
        page.fill("#label-text", "red car")
        # another window hides entity 1; this page shows it on focus, its label field left as typed
        page.evaluate("""(token) => fetch('/api/edits', {method: 'POST', body: JSON.stringify({op: 'hide', ids: [1]}),
            headers: {'X-EntitySAM-Token': token, 'Content-Type': 'application/json'}})""", token)
        page.evaluate("window.dispatchEvent(new Event('focus'))")
        wait_version(page, 3)
        assert page.input_value("#label-text") == "red car"
        assert page.errors == []


def test_a_viewer_beyond_loopback_works_from_the_printed_url_and_not_without_it(tmp_path):
    """--host 0.0.0.0: reads need the token too; the page of the printed URL sends it with every
    request (no cookie: cookies go to every port of the host name), takes it out of the address
    bar, and still has it after a reload (this tab's sessionStorage); plays and edits as on 127.0.0.1."""
    chromium_or_skip()
    from _review_result import make_result

    result = make_result(tmp_path)
    with view_server(result, "--host", "0.0.0.0") as (url, token), browser_page() as page:
        url = url.replace("://0.0.0.0:", "://127.0.0.1:")  # (what a browser on this machine reaches)
        page.goto(url.split("?")[0])  # the page loads, nothing of the result does
        page.wait_for_function("document.getElementById('status').textContent.includes('cannot start')")
        assert "use the URL printed by" in page.inner_text("#status")  # the server's words, not "403" alone
        assert page.evaluate("fetch('/api/state').then((r) => r.status)") == 403
        page.goto("about:blank")
        open_viewer(page, url)
        assert token not in page.url and page.context.cookies() == []
        assert page.evaluate("fetch('/api/state').then((r) => r.status)") == 403  # no cookie stands for it
        assert page.evaluate("viewer.state.entities.length") > 0
        page.wait_for_function("document.querySelector('tr.entity img').src.startsWith('blob:')")  # a thumbnail
        page.click("tr.entity[data-id=\"2\"]")
        page.click("#delete")
        page.wait_for_function("viewer.state.version === 1")
        page.reload()
        page.wait_for_function("window.viewer && window.viewer.ready === true", timeout=60000)
        assert token not in page.url and page.evaluate("viewer.state.version") == 1
        page.click("tr.entity[data-id=\"1\"]")
        page.click("#delete")
        page.wait_for_function("viewer.state.version === 2")
        assert not page.errors, page.errors


def test_the_results_overlay_video_plays_from_files_and_its_html_runs_no_script(tmp_path):
    """/files/ answers are sandboxed against a hostile .html; a bare `sandbox` also killed the
    result's own overlay.mp4 (the browser's video page, of no origin, was refused the video)."""
    chromium_or_skip()
    import av

    from _review_result import make_result

    result = make_result(tmp_path)
    with av.open(str(result / "overlay.mp4"), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(8):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 30 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    (result / "evil.html").write_text("<script>document.title = 'ran'</script>")
    with view_server(result) as (url, token), browser_page() as page:
        base = url.split("?")[0].rstrip("/")
        page.goto(f"{base}/files/overlay.mp4?token={token}")
        page.wait_for_function("document.querySelector('video') && document.querySelector('video').readyState >= 1",
                               timeout=30000)
        assert page.evaluate("document.querySelector('video').duration") > 1.5
        page.goto(f"{base}/files/evil.html?token={token}")
        assert page.title() != "ran"
