"""`entitysam view --host 0.0.0.0` (any address beyond loopback), and an app made by `create_app`
without loopback_only: reading needs the run's token too (it served /api/state, id maps, frames and
/files/ to anyone who could reach it), in the header (what the page sends) or ?token=. No cookie
stands for it: a cookie goes to every port of the host name, so another server there received it.
Loopback unchanged."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")

from starlette.testclient import TestClient  # noqa: E402

from _review_result import make_result  # noqa: E402
from entitysam.review.server import TOKEN_HEADER, Viewer, allowed_hosts, create_app  # noqa: E402

TOKEN = "test-token"
READS = ["/api/video", "/api/state", "/api/exports", "/api/frames/0.jpg", "/api/frames/0.jpg?w=8",
         "/api/idmaps/0.png", "/api/idmaps/0.runs", "/api/thumbs/1.png", "/files/manifest.json",
         "/files/panoptic/f000.png"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return make_result(tmp_path_factory.mktemp("read-token"))


def beyond_loopback(result, token=TOKEN):
    return create_app(Viewer(result, token=token, drafts=False), hosts=allowed_hosts("0.0.0.0"))


@pytest.mark.parametrize("url", READS)
def test_reads_without_the_right_token_are_refused(result, url):
    joined = "&" if "?" in url else "?"
    with TestClient(beyond_loopback(result)) as client:
        reply = client.get(url)
        assert reply.status_code == 403 and "token" in reply.json()["error"], url
        assert client.head(url).status_code == 403
        assert client.get(url, headers={TOKEN_HEADER: "wrong"}).status_code == 403
        assert client.get(f"{url}{joined}token=wrong").status_code == 403
        assert client.get(f"{url}{joined}token=").status_code == 403
    # no cookie, whatever its name, stands for the token
    with TestClient(beyond_loopback(result), cookies={"token": TOKEN, "entitysam-token": TOKEN}) as client:
        assert client.get(url).status_code == 403


@pytest.mark.parametrize("url", READS)
def test_reads_with_the_token_in_the_header_or_query_are_answered_without_a_cookie(result, url):
    with TestClient(beyond_loopback(result)) as client:
        reply = client.get(url, headers={TOKEN_HEADER: TOKEN})
        assert reply.status_code == 200 and "set-cookie" not in reply.headers, url
        joined = "&" if "?" in url else "?"
        reply = client.get(f"{url}{joined}token={TOKEN}")
        assert reply.status_code == 200 and "set-cookie" not in reply.headers, url
        assert client.get(url).status_code == 403  # nothing kept from the answers above
        assert not client.cookies


def test_the_printed_url_sets_no_cookie_and_the_page_sends_the_token_itself(result):
    """The answer to /?token=... set a cookie that any server on another port of the host name
    received too (cookies are not kept per port); the page now sends the token with each request."""
    with TestClient(beyond_loopback(result)) as client:
        page = client.get(f"/?token={TOKEN}")
        assert page.status_code == 200 and "<script" in page.text
        assert "set-cookie" not in page.headers  # the old answer set one
        assert client.get("/api/state").status_code == 403
        assert client.get("/api/state", headers={TOKEN_HEADER: TOKEN}).status_code == 200
        player = client.get("/static/player.js").text
        assert "X-EntitySAM-Token" in player and "sessionStorage" in player and "replaceState" in player
        assert client.post("/api/edits", json={"op": "hide", "ids": [1]}).status_code == 403
        assert client.post("/api/edits", json={"op": "hide", "ids": [1]}, headers={TOKEN_HEADER: TOKEN}).status_code == 200


def test_the_page_needs_no_token(result):
    """The page (static/index.html, no data of the result) is served without the token, as the
    static files are: it takes the token out of the address bar, so a reload asks for / alone."""
    with TestClient(beyond_loopback(result)) as client:
        page = client.get("/")
        assert page.status_code == 200 and "<script" in page.text


def test_an_app_made_without_loopback_only_needs_the_token_for_reads(result):
    """create_app's defaults served reads to anyone: an app embedded beyond loopback was open."""
    with TestClient(create_app(Viewer(result, token=TOKEN, drafts=False))) as client:
        assert client.get("/api/state").status_code == 403  # it was 200
        assert client.get("/files/manifest.json").status_code == 403
        assert client.get("/api/state", headers={TOKEN_HEADER: TOKEN}).status_code == 200
    with TestClient(create_app(Viewer(result, token=TOKEN, drafts=False), loopback_only=True)) as client:
        assert client.get("/api/state").status_code == 200


def test_static_files_need_no_token(result):
    with TestClient(beyond_loopback(result)) as client:
        for name in ("app.js", "player.js", "style.css"):
            assert client.get(f"/static/{name}").status_code == 200, name


def test_loopback_reads_still_need_no_token(result):
    app = create_app(Viewer(result, token=TOKEN, drafts=False), hosts=allowed_hosts("127.0.0.1"), loopback_only=True)
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        for url in ["/", *READS]:
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
        assert client.get("/api/state", headers={TOKEN_HEADER: token}).status_code == 200
