"""`entitysam view` against abusive requests, on a real uvicorn server on 127.0.0.1: edit bodies
declared or streamed far over the limit (413, read no further), a client gone mid-body (no
traceback), messages about huge id lists kept short, a slow request never freezing the others, tabs saving and editing at once, a
second server saving a revision of the same result at the same moment, an id PNG replaced by a
named pipe while the result is open."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
httpx = pytest.importorskip("httpx", reason="the tests speak HTTP through httpx")

from _review_result import make_result  # noqa: E402
from _viewer import live_server  # noqa: E402
from entitysam.review.revision import replay_edits  # noqa: E402
from entitysam.review.routes import MAX_EDIT_BYTES  # noqa: E402
from entitysam.review.server import TOKEN_HEADER, Viewer  # noqa: E402

TOKEN = "test-token"
AUTH = {TOKEN_HEADER: TOKEN}


@pytest.fixture()
def result(tmp_path):
    return make_result(tmp_path)


@pytest.fixture()
def served(result):
    viewer = Viewer(result, token=TOKEN)
    with live_server(viewer) as (url, errors):
        yield viewer, url, errors


def raw(url: str, head: str) -> socket.socket:
    """A connection to the server with `head` (request line and headers, without the blank line) sent."""
    host, port = url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=5)
    conn.sendall(f"{head}\r\nHost: 127.0.0.1\r\n{TOKEN_HEADER}: {TOKEN}\r\n\r\n".encode())
    return conn


def answer(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (5 s at most between bytes)."""
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := conn.recv(65536):
            out += chunk
    return out


def test_an_edit_declared_over_the_limit_is_refused_before_its_body_comes(served):
    viewer, url, _ = served
    conn = raw(url, "POST /api/edits HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 1000000000000")
    conn.sendall(b"{")
    try:
        reply = answer(conn)  # the old server waited for the terabyte: no answer, a timeout here
    except TimeoutError:
        pytest.fail("no answer to an edit declaring a 1 TB body: the server waits to read it")
    finally:
        conn.close()
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"].startswith("the edit is over")
    assert viewer.version == 0


def test_an_edit_streamed_past_the_limit_is_refused_without_reading_the_rest(served):
    viewer, url, _ = served
    conn = raw(url, "POST /api/edits HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked")
    chunk = b" " * (1 << 20)
    reply, sent = b"", 0
    try:
        while not reply and sent < 24 * len(chunk):  # chunks of 1 MiB until the server answers
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            conn.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                reply = conn.recv(65536)
        conn.settimeout(5)
        reply += answer(conn)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):  # closed after answering; no answer: below
        pass
    finally:
        conn.close()
    # the old server read all 24 MiB (and would read more) without answering
    assert reply.startswith(b"HTTP/1.1 413 "), f"no 413 after {sent >> 20} MiB: {reply[:200]!r}"
    assert sent <= 4 * len(chunk)
    assert viewer.version == 0


def test_an_edit_just_under_the_limit_is_applied(served):
    viewer, url, _ = served
    body = json.dumps({"op": "hide", "ids": [2]}).encode()
    body = body[:-1] + b" " * (MAX_EDIT_BYTES - len(body)) + b"}"
    reply = httpx.post(f"{url}/api/edits", content=body, headers=AUTH, timeout=30)
    assert reply.status_code == 200, reply.text[:200]
    assert viewer.version == 1


@pytest.mark.parametrize("op, start", [
    ({"op": "hide", "ids": [2] * 100_000}, "hide: ids repeat an entity: 2 (100000 ids given)"),
    ({"op": "merge", "ids": list(range(5, 100_005)), "into": 1}, "merge: ids must list at least two entities"),
    # an op name, field names or integers of up to the body's size (the old messages: 500 kB, 1 MB, 4 kB)
    ({"op": "x" * 500_000}, "unknown edit op 'xxx"),
    ({"op": "hide", "ids": [1], **{f"field{i:06d}": 1 for i in range(50_000)}}, "hide: unknown field(s) field000000"),
    ({"op": "hide", "ids": [10 ** 4000]}, "hide: id must be an entity id"),
    ({"op": "split", "id": 2, "frame": 10 ** 4000}, "split: entity 2 is present in frames"),
])
def test_an_edit_listing_100k_ids_gets_a_short_message(served, op, start):
    viewer, url, _ = served
    reply = httpx.post(f"{url}/api/edits", json=op, headers=AUTH, timeout=30)
    error = reply.json()["error"]
    assert reply.status_code == 400 and error.startswith(start), error[:300]
    assert len(error) < 300, f"{len(error)} characters: {error[:300]}"  # the old messages: 300 kB and 690 kB


def test_a_client_gone_mid_body_leaves_no_traceback(served):
    viewer, url, errors = served
    conn = raw(url, "POST /api/edits HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100")
    conn.sendall(b'{"op": "hide"')
    time.sleep(0.2)
    conn.close()
    deadline = time.monotonic() + 1  # time for the server to notice (the old one logged within ~10 ms)
    while not errors.records and time.monotonic() < deadline:
        time.sleep(0.02)
    assert httpx.get(f"{url}/api/state", timeout=5).json()["version"] == 0
    # the old server logged "Exception in ASGI application" with starlette's ClientDisconnect
    assert not errors.records, [r.getMessage() for r in errors.records]


def test_a_request_waiting_for_a_source_frame_does_not_freeze_the_others(result, monkeypatch):
    viewer = Viewer(result, token=TOKEN)
    entered, release = threading.Event(), threading.Event()
    read = viewer.result.source_frame

    def slow_source_frame(*args, **kwargs):  # a video's cursor busy decoding far ahead for another request
        entered.set()
        release.wait(60)  # (until the other request is answered: blocking the event loop, it never is)
        return read(*args, **kwargs)
    monkeypatch.setattr(viewer.result, "source_frame", slow_source_frame)
    with live_server(viewer) as (url, _):
        box = {}
        info = threading.Thread(target=lambda: box.setdefault("reply", httpx.get(f"{url}/api/video", timeout=30)))
        info.start()
        assert entered.wait(10)
        try:
            other = httpx.get(f"{url}/static/style.css", timeout=30)  # the old server ran /api/video on the event loop
        except httpx.TimeoutException:
            pytest.fail("a static file waited for /api/video's source frame: the event loop was blocked")
        finally:
            release.set()
            info.join(30)
        assert other.status_code == 200
        assert box["reply"].status_code == 200 and box["reply"].json()["has_source"] is True


def test_tabs_saving_and_editing_at_once_get_complete_consistent_revisions(served, result):
    viewer, url, errors = served
    replies = []

    def post(path, body=None):
        replies.append((path, httpx.post(f"{url}{path}", json=body or {}, headers=AUTH, timeout=60)))
    jobs = [("/api/save", None)] * 3 + [("/api/edits", {"op": "hide", "ids": [i]}) for i in (1, 2, 3)]
    threads = [threading.Thread(target=post, args=job) for job in jobs]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert all(r.status_code == 200 for _, r in replies), [(p, r.status_code, r.text[:200]) for p, r in replies]
    # a save with no edit since the one before gives that revision again (no second copy)
    saved = sorted({Path(r.json()["path"]).name for p, r in replies if p == "/api/save"})
    assert saved == [f"clip.rev{i}" for i in range(1, len(saved) + 1)]
    left = sorted(p.name for p in result.parent.iterdir() if p.name != ".clip.draft.json")  # (edits after the last save)
    assert left == ["clip", *saved, "input-clip"]  # no staging left
    for name in saved:  # each a complete revision of the edits made before it: its log replays to its files
        rev = result.parent / name
        ops = json.loads((rev / "edits.json").read_text())["ops"]
        assert ops == viewer.session.ops[:len(ops)]
        session = replay_edits(result, rev / "edits.json")
        hidden = {e.id for e in session.entities if e.hidden}
        assert hidden == {e["id"] for e in json.loads((rev / "entities.json").read_text())["entities"] if e["hidden"]}
    assert not errors.records


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_an_id_png_replaced_by_a_named_pipe_is_refused_not_waited_on(served, result):
    viewer, url, _ = served
    fifo = result / "panoptic" / "f003.png"
    fifo.unlink()
    os.mkfifo(fifo)
    replies = {}
    try:
        for name, call in [("png", lambda: httpx.get(f"{url}/api/idmaps/3.png", timeout=20)),
                           ("runs", lambda: httpx.get(f"{url}/api/idmaps/3.runs", timeout=20)),
                           ("save", lambda: httpx.post(f"{url}/api/save", headers=AUTH, timeout=20)),
                           ("edit", lambda: httpx.post(f"{url}/api/edits", json={"op": "hide", "ids": [1]},
                                                       headers=AUTH, timeout=20))]:
            try:
                replies[name] = call()
            except httpx.TimeoutException:  # the old server waited in open() for a writer, the save with the lock
                pytest.fail(f"{name}: no answer in 20 s: the server waits on the named pipe")
    finally:
        for _ in range(20):  # what is still waiting to open the pipe gets it, and reads its end
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # ENXIO: nobody waits on it
                break
            time.sleep(0.05)
    for name in ("png", "runs"):
        assert replies[name].status_code == 422 and "no longer a regular file" in replies[name].json()["error"]
    assert replies["save"].status_code == 400 and "f003.png" in replies["save"].json()["error"]
    assert replies["edit"].status_code == 200  # the save let go of the session's lock
    # no revision, no staging; the accepted edit is kept in the draft
    assert sorted(p.name for p in result.parent.iterdir()) == [".clip.draft.json", "clip", "input-clip"]


# what another process saving `clip.rev1` holds while it writes it: the flock of `.clip.rev1.lock`
_HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_save_while_another_server_writes_the_next_revision_takes_the_number_after(served, result):
    pytest.importorskip("fcntl", reason="revision folders are locked with fcntl.flock (POSIX)")
    viewer, url, _ = served
    assert httpx.post(f"{url}/api/edits", json={"op": "hide", "ids": [2]}, headers=AUTH).status_code == 200
    other = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(result.parent / ".clip.rev1.lock")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        reply = httpx.post(f"{url}/api/save", headers=AUTH, timeout=60)
    finally:
        other.stdin.close()
        other.wait(10)
    # the old server refused: 400 "clip.rev1 is being written by another entitysam run ...: pass wait=True"
    assert reply.status_code == 200, reply.text
    assert reply.json()["name"] == "clip.rev2"
    assert [o["ids"] for o in json.loads((result.parent / "clip.rev2" / "edits.json").read_text())["ops"]] == [[2]]
    assert not (result.parent / "clip.rev1").exists()  # left to the other server
