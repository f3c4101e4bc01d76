"""Headers of the viewer's answers: no Referer ever carries the token (URLs may hold it), a file of
the result (/files/, which may be a hostile .html or .svg) runs sandboxed, never as a page of the
viewer, and what needs the token is never kept by a shared cache."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")

from starlette.testclient import TestClient  # noqa: E402

from _review_result import make_result  # noqa: E402
from entitysam.review.server import TOKEN_HEADER, Viewer, allowed_hosts, create_app  # noqa: E402

TOKEN = "test-token"


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    result = make_result(tmp_path_factory.mktemp("answer-headers"))
    (result / "notes.html").write_text("<script>fetch('/api/state').then(r => r.text()).then(alert)</script>")
    (result / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    return result


@pytest.fixture(params=["loopback", "beyond"])
def client(request, result):
    loopback = request.param == "loopback"
    app = create_app(Viewer(result, token=TOKEN, drafts=False), hosts=allowed_hosts("127.0.0.1" if loopback else "0.0.0.0"),
                     loopback_only=loopback)
    with TestClient(app, base_url="http://127.0.0.1:8765", headers={TOKEN_HEADER: TOKEN}) as client:
        yield client


def test_every_answer_sends_no_referer(client):
    answers = [client.get(f"/?token={TOKEN}"), client.get("/static/app.js"), client.get("/api/state"),
               client.get("/api/frames/0.jpg"), client.get("/files/manifest.json"), client.get("/files/nothing"),
               client.get("/api/state", headers={TOKEN_HEADER: "wrong"}),  # 403 beyond loopback
               client.get("/", headers={"Host": "evil.example"}),  # 400 on loopback
               client.post("/api/edits", json={"op": "hide", "ids": [99999]})]
    for reply in answers:
        assert reply.headers.get("referrer-policy") == "no-referrer", (reply.url, reply.status_code)
        assert reply.headers.get("x-content-type-options") == "nosniff", reply.url
    assert {reply.status_code for reply in answers} >= {200, 404, 400}


@pytest.mark.parametrize("name, media", [("notes.html", "text/html"), ("drawing.svg", "image/svg+xml"),
                                         ("manifest.json", "application/json")])
def test_a_result_file_is_sandboxed(client, name, media):
    """An .html of the result was a page of the viewer's own origin: its scripts read the viewer's
    answers with the viewer's credentials."""
    reply = client.get(f"/files/{name}")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith(media)
    # absent before; no allow-scripts: nothing in the file runs
    assert reply.headers.get("content-security-policy") == "sandbox allow-same-origin"
    assert reply.headers.get("x-content-type-options") == "nosniff"


def test_the_page_is_not_sandboxed(client):
    assert "content-security-policy" not in client.get("/").headers  # its scripts must run


def test_answers_cached_long_are_private(client):
    """Frames and id maps under a versioned URL were `public`: a shared cache could give them to a
    request without the token."""
    version = client.get("/api/video").json()["result_version"]
    key = next(e["thumb"] for e in client.get("/api/state").json()["entities"] if e["id"] == 1)
    for url in (f"/api/frames/0.jpg?rv={version}", f"/api/idmaps/0.png?rv={version}",
                f"/api/idmaps/0.runs?rv={version}", f"/api/thumbs/1.png?k={key}&rv={version}"):
        reply = client.get(url)
        assert reply.status_code == 200, url
        cache = reply.headers["cache-control"]
        assert "private" in cache and "public" not in cache, (url, cache)
