"""Files the viewer sends as they are (`/files/`, `/static/`, `/`, a source JPEG at /api/frames/), on
a real uvicorn server: a file rewritten, replaced, deleted or swapped for a named pipe while it is
asked for or downloaded, Range and HEAD requests (entitysam.review.file_response)."""

from __future__ import annotations

import contextlib
import os
import socket
import time

import pytest

pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
httpx = pytest.importorskip("httpx", reason="the tests speak HTTP through httpx")

from PIL import Image  # noqa: E402

from _blocking import release_readers, swap_for_a_pipe  # noqa: E402
from _review_result import make_result  # noqa: E402
from _viewer import live_server  # noqa: E402
from entitysam.review import routes  # noqa: E402
from entitysam.review.source_frames import SourceFrames  # noqa: E402
from entitysam.review.server import Viewer  # noqa: E402

BIG = 32 << 20  # far more than the socket buffers hold: the server is mid-file when it changes
OLD = bytes(range(256)) * (BIG // 256)


@pytest.fixture()
def served(tmp_path):
    result = make_result(tmp_path)
    (result / "big.bin").write_bytes(OLD)
    with live_server(Viewer(result, token="t")) as (url, errors):
        yield result, url, errors


def started_download(url: str, path: str, extra: str = "") -> tuple[socket.socket, bytes]:
    """A GET of `path` whose answer has begun (status line, headers, the first bytes), read no further."""
    host, port = url.removeprefix("http://").split(":")
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 10)  # fixed: no autotuning up to 32 MB
    conn.settimeout(10)
    conn.connect((host, int(port)))
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
    got = b""
    while b"\r\n\r\n" not in got:
        got += conn.recv(65536)
    return conn, got


def rest(conn: socket.socket, got: bytes) -> tuple[bytes, bytes]:
    """(head, body) once the server has closed the connection or sent its Content-Length."""
    head, _, body = got.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    with contextlib.suppress(ConnectionResetError):
        while len(body) < length and (chunk := conn.recv(1 << 20)):
            body += chunk
    conn.close()
    return head, body


def no_traceback(errors) -> None:
    deadline = time.monotonic() + 1  # what the server logs after the response (the old one: at once)
    while not errors.tracebacks() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not errors.tracebacks(), errors.tracebacks()


@pytest.mark.parametrize("request_range", ["", "Range: bytes=0-99,200-\r\n"])
@pytest.mark.parametrize("new_size", [1 << 20, 2 * BIG], ids=["shorter", "longer"])
def test_a_file_rewritten_during_its_download_ends_it_short_without_a_traceback(served, new_size, request_range):
    result, url, errors = served
    conn, got = started_download(url, "/files/big.bin", request_range)
    time.sleep(0.05)  # a later tick of the file system's clock: the rewrite gets another modification time
    (result / "big.bin").write_bytes(b"\xff" * new_size)  # as `cp` does: the same file, truncated, rewritten
    head, body = rest(conn, got)
    # the old server sent more or fewer bytes than its Content-Length and uvicorn logged "Exception in
    # ASGI application" (h11: "Too much data for declared Content-Length" / "Too little data")
    no_traceback(errors)
    declared = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    assert len(body) < declared  # cut short: the client sees an incomplete download
    if not request_range:
        assert body == OLD[:len(body)]  # what came is the file as it was: never the new bytes after the old
    assert httpx.get(f"{url}/files/manifest.json", timeout=10).status_code == 200


def test_a_file_replaced_by_a_rename_during_its_download_is_sent_whole_as_it_was(served):
    result, url, errors = served
    conn, got = started_download(url, "/files/big.bin")
    (result / "new.bin").write_bytes(b"\xff" * 1000)
    os.replace(result / "new.bin", result / "big.bin")  # as entitysam writes its files
    _, body = rest(conn, got)
    assert body == OLD
    no_traceback(errors)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
@pytest.mark.parametrize("change", ["deleted", "fifo"])
def test_a_file_gone_or_made_a_pipe_after_its_check_is_a_404(served, monkeypatch, change):
    result, url, errors = served
    checked = routes.safe_file

    def then_changed(root, relative):  # the file changes between the server's check and its open
        path = checked(root, relative)
        (result / "big.bin").unlink()
        if change == "fifo":
            os.mkfifo(result / "big.bin")
        return path
    monkeypatch.setattr(routes, "safe_file", then_changed)
    try:
        reply = httpx.get(f"{url}/files/big.bin", timeout=10)
    except httpx.TimeoutException:
        pytest.fail("no answer in 10 s: the server waits on the named pipe")
    assert reply.status_code == 404 and reply.json() == {"error": "not found"}  # the old server: a 500
    no_traceback(errors)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
@pytest.mark.parametrize("query", ["", "?w=16"], ids=["as-is", "scaled"])
def test_a_source_jpeg_made_a_pipe_after_its_check_is_a_404_not_a_thread_lost(tmp_path, monkeypatch, query):
    """A source JPEG (sent as it is, or decoded smaller) swapped for a named pipe between the check
    that it is a file and its read: the read waited for a writer for ever, holding a worker thread
    of the server. It is now opened once, without waiting: a pipe is no frame (404)."""
    result = make_result(tmp_path)
    for png in (tmp_path / "input-clip").glob("*.png"):
        Image.open(png).save(png.with_suffix(".jpg"), quality=90)
        png.unlink()
    checked = SourceFrames.frame_file

    def then_swapped(self, index, name):  # the file passed is_file(): now it becomes a pipe
        path = checked(self, index, name)
        swap_for_a_pipe(path)
        return path
    monkeypatch.setattr(SourceFrames, "frame_file", then_swapped)
    frame = tmp_path / "input-clip" / "f003.jpg"
    with live_server(Viewer(result, token="t")) as (url, errors):
        try:
            reply = httpx.get(f"{url}/api/frames/3.jpg{query}", timeout=10)
        except httpx.TimeoutException:
            pytest.fail("no answer in 10 s: the server waits on the named pipe")
        finally:
            release_readers(frame)
        assert reply.status_code == 404, reply.status_code
        assert reply.json() == {"error": "the source frame cannot be read (moved or deleted?)"}
        no_traceback(errors)
    assert os.path.exists(frame) and not os.path.isfile(frame)  # (swapped)


@pytest.mark.parametrize("header, status, expected", [
    ("bytes=10-19", 206, OLD[10:20]),
    ("bytes=-5", 206, OLD[-5:]),
    (f"bytes={BIG - 3}-", 206, OLD[-3:]),
    (f"bytes=5-{BIG * 2}", 206, OLD[5:]),
    ("bytes=0-4,3-9", 206, OLD[0:10]),  # overlapping: merged into one
    ("bytes=" + ",".join(["0-1"] * 101), 200, OLD),  # over 100 ranges: the whole file
    ("bytes=20-10", 400, None),
    ("items=0-1", 400, None),
    ("bytes=x-y", 400, None),
    ("bytes=" + "9" * 5000 + "-", 400, None),  # over Python's digit limit: not a number
    (f"bytes={BIG}-", 416, None),
], ids=lambda value: (value if len(value) <= 30 else f"{value[:20]}...({len(value)} chars)") if isinstance(value, str)
   else f"{len(value)}bytes" if isinstance(value, bytes) else None)  # not the expected bytes (megabytes) as an id
def test_range_requests(served, header, status, expected):
    _, url, errors = served
    reply = httpx.get(f"{url}/files/big.bin", headers={"Range": header}, timeout=30)
    assert reply.status_code == status
    if expected is not None:
        assert reply.content == expected and int(reply.headers["content-length"]) == len(expected)
    if status == 416:
        assert reply.headers["content-range"] == f"bytes */{BIG}"
    no_traceback(errors)


def test_several_ranges_come_as_multipart_byteranges(served):
    _, url, errors = served
    reply = httpx.get(f"{url}/files/big.bin", headers={"Range": "bytes=0-9,100-104"}, timeout=30)
    assert reply.status_code == 206 and int(reply.headers["content-length"]) == len(reply.content)
    boundary = reply.headers["content-type"].split("boundary=")[1]
    parts = reply.content.split(f"--{boundary}".encode())
    assert parts[0] == b"" and parts[-1] == b"--"
    bodies = [p.split(b"\r\n\r\n", 1)[1][:-2] for p in parts[1:-1]]
    assert bodies == [OLD[0:10], OLD[100:105]]
    assert b"Content-Range: bytes 100-104/" + str(BIG).encode() in parts[2]
    no_traceback(errors)


def test_if_range_and_head(served):
    _, url, _ = served
    whole = httpx.head(f"{url}/files/big.bin", timeout=10)
    assert whole.status_code == 200 and whole.content == b"" and int(whole.headers["content-length"]) == BIG
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["cache-control"] == "no-cache"
    part = httpx.get(f"{url}/files/big.bin", headers={"Range": "bytes=0-3", "If-Range": whole.headers["etag"]})
    assert part.status_code == 206 and part.content == OLD[:4]
    stale = httpx.get(f"{url}/files/big.bin", headers={"Range": "bytes=0-3", "If-Range": '"another"'}, timeout=30)
    assert stale.status_code == 200 and len(stale.content) == BIG
    index = httpx.get(f"{url}/", timeout=10)
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
