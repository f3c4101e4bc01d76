"""`entitysam view --host 0.0.0.0` (any address beyond loopback): reading needs the run's token too
(it served /api/state, id maps, frames and /files/ to anyone who could reach it); the page opened
from the printed URL still reads, through the cookie that URL's answer sets. Loopback unchanged."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")

from starlette.testclient import TestClient  # noqa: E402

from _review_result import make_result  # noqa: E402
from entitysam.review.server import TOKEN_HEADER, Viewer, allowed_hosts, create_app  # noqa: E402

TOKEN = "test-token"
READS = ["/", "/api/video", "/api/state", "/api/exports", "/api/frames/0.jpg", "/api/frames/0.jpg?w=8",
         "/api/idmaps/0.png", "/api/idmaps/0.runs", "/api/thumbs/1.png", "/files/manifest.json",
         "/files/panoptic/f000.png"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return make_result(tmp_path_factory.mktemp("read-token"))


def beyond_loopback(result, token=TOKEN):
    return create_app(Viewer(result, token=token, drafts=False), hosts=allowed_hosts("0.0.0.0"),
                      reads_need_token=True)


@pytest.mark.parametrize("url", READS)
def test_reads_without_the_token_are_refused(result, url):
    with TestClient(beyond_loopback(result)) as client:
        reply = client.get(url)
        assert reply.status_code == 403 and "token" in reply.json()["error"], url
        assert client.head(url).status_code == 403
        assert client.get(url, headers={TOKEN_HEADER: "wrong"}).status_code == 403
    with TestClient(beyond_loopback(result), cookies={"entitysam-0123456789ab": TOKEN}) as client:
        assert client.get(url).status_code == 403


@pytest.mark.parametrize("url", READS)
def test_reads_with_the_token_in_the_header_or_query_are_answered(result, url):
    with TestClient(beyond_loopback(result)) as client:
        assert client.get(url, headers={TOKEN_HEADER: TOKEN}).status_code == 200, url
    with TestClient(beyond_loopback(result)) as client:
        joined = "&" if "?" in url else "?"
        assert client.get(f"{url}{joined}token={TOKEN}").status_code == 200, url


def test_the_page_of_the_printed_url_reads_through_its_cookie(result):
    """The browser loads /?token=... and then fetches without the token (fetch, <img>): the
    answer to the page sets a cookie that authorises those reads, and only reads."""
    with TestClient(beyond_loopback(result)) as client:
        page = client.get(f"/?token={TOKEN}")
        assert page.status_code == 200 and "<script" in page.text
        cookie = page.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        for url in READS:
            assert client.get(url).status_code == 200, url  # the cookie, kept by the client
        assert client.get("/static/app.js").status_code == 200
        edit = client.post("/api/edits", json={"op": "hide", "ids": [1]})
        assert edit.status_code == 403  # a cookie is sent by any page's request: changes need the token itself
        assert client.post("/api/edits", json={"op": "hide", "ids": [1]}, headers={TOKEN_HEADER: TOKEN}).status_code == 200
    with TestClient(beyond_loopback(result, token="another-run")) as other:  # another viewer's cookie
        other.cookies.update(client.cookies)
        assert other.get("/api/state").status_code == 403


def test_static_files_need_no_token(result):
    with TestClient(beyond_loopback(result)) as client:
        for name in ("app.js", "player.js", "style.css"):
            assert client.get(f"/static/{name}").status_code == 200, name


def test_loopback_reads_still_need_no_token(result):
    app = create_app(Viewer(result, token=TOKEN, drafts=False), hosts=allowed_hosts("127.0.0.1"))
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        for url in READS:
            assert client.get(url).status_code == 200, url
        assert "set-cookie" not in client.get(f"/?token={TOKEN}").headers


@pytest.mark.parametrize("host, refused", [("0.0.0.0", True), ("127.0.0.1", False)])
def test_serve_beyond_loopback_makes_reads_need_the_token(result, monkeypatch, host, refused):
    import entitysam.review.server as server

    apps = []

    def run(config, sockets):
        apps.append(config.app)
        sockets[0].close()
    monkeypatch.setattr("entitysam.review.connections.run_server", run)
    lines = []
    server.serve(result, host=host, port=0, say=lines.append)
    url = next(line for line in lines if "?token=" in line)
    token = url.rsplit("?token=", 1)[1]
    with TestClient(apps[0], base_url="http://127.0.0.1:8765") as client:
        assert client.get("/api/state").status_code == (403 if refused else 200)  # it was 200 on 0.0.0.0
        assert client.get(f"/?token={token}").status_code == 200
        assert client.get("/api/state").status_code == 200
