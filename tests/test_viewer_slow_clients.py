"""`entitysam view` against clients that never finish a request, on a real uvicorn server on
127.0.0.1 (entitysam.review.connections, here with a 2 s deadline): headers sent a byte at a time,
a connection that sends nothing, an edit whose body never completes, a body trickled after the
answer, the next request trickled on a kept-alive connection. Each was held open for as long as
the client liked (uvicorn's keep-alive timer is reset by every byte and a new connection has none);
now each is closed at the deadline, with a 408 where part of a request came. What must not be
cut: a large download read slowly, a long export, requests spaced out on one connection."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import pytest

pytest.importorskip("starlette", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="the viewer needs the `viewer` extra (starlette, uvicorn)")
httpx = pytest.importorskip("httpx", reason="the tests speak HTTP through httpx")

from _review_result import make_result  # noqa: E402
from _viewer import live_server  # noqa: E402
from entitysam.review.server import TOKEN_HEADER, Viewer  # noqa: E402

TOKEN = "test-token"
AUTH = {TOKEN_HEADER: TOKEN}
DEADLINE = 2.0  # (its margins hold on a loaded machine, where the test itself may wait a second)
WAIT = 8.0  # how long a test waits for the close: the old server never closed
LATE = DEADLINE + 3  # closed by then: the old server never closed


@pytest.fixture()
def result(tmp_path):
    return make_result(tmp_path)


@pytest.fixture()
def served(result):
    viewer = Viewer(result, token=TOKEN)
    with live_server(viewer, request_timeout=DEADLINE) as (url, errors):
        yield viewer, url, errors


def connect(url: str, **options) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    conn = socket.socket()
    for name, value in options.items():
        conn.setsockopt(socket.SOL_SOCKET, getattr(socket, name), value)
    conn.connect((host, int(port)))
    return conn


def trickle(conn: socket.socket, data: bytes, every: float = 0.1) -> tuple[bytes, float | None]:
    """Send `data` a byte every `every` seconds (then nothing) for at most WAIT seconds, reading what
    comes back: (what the server sent, seconds until it closed the connection, None if it did not)."""
    start, reply, sent = time.monotonic(), b"", 0
    while time.monotonic() - start < WAIT:
        if sent < len(data):
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.send(data[sent:sent + 1])
            sent += 1
        conn.settimeout(every)
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return reply, time.monotonic() - start
        if not chunk:
            return reply, time.monotonic() - start
        reply += chunk
    return reply, None


def assert_408(reply: bytes) -> None:
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    head, body = reply.split(b"\r\n\r\n", 1)
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"] == f"the request did not arrive in full within {DEADLINE:g} s"


def test_headers_sent_a_byte_at_a_time_get_a_408_and_the_others_are_answered(served):
    viewer, url, errors = served
    conns = [connect(url) for _ in range(3)]
    try:
        for conn in conns[1:]:
            conn.sendall(b"GET /api/state HTTP/1.1\r\nHo")  # as many stuck in their headers
        started = time.monotonic()
        assert httpx.get(f"{url}/api/state", timeout=5).status_code == 200  # meanwhile: answered
        reply, closed = trickle(conns[0], b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100)
        assert closed is not None, f"still open after {WAIT} s of headers a byte at a time"
        assert closed < LATE
        assert_408(reply)
        for conn in conns[1:]:
            conn.settimeout(max(0.1, started + LATE - time.monotonic()))
            assert_408(conn.recv(65536))
    finally:
        for conn in conns:
            conn.close()
    assert not errors.records, [r.getMessage() for r in errors.records]


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(served):
    _, url, _ = served
    with connect(url) as conn:
        reply, closed = trickle(conn, b"")
    assert closed is not None and closed < LATE, "an idle new connection is held for good"
    assert reply == b""  # nothing asked, nothing answered (a browser's spare connection)


def test_an_edit_whose_body_never_completes_gets_a_408(served):
    viewer, url, errors = served
    with connect(url) as conn:
        conn.sendall(f"POST /api/edits HTTP/1.1\r\nHost: 127.0.0.1\r\n{TOKEN_HEADER}: {TOKEN}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n".encode())
        reply, closed = trickle(conn, b'{"op": "hide", "ids": [2]', every=0.2)
    assert closed is not None, f"an edit's body cut short is waited for: still open after {WAIT} s"
    assert_408(reply)
    time.sleep(0.2)  # what the handler, told the client is gone, would log
    assert viewer.version == 0
    assert not errors.records, [r.getMessage() for r in errors.records]


def test_a_body_trickled_after_the_answer_is_cut(served):
    """Undo reads no body: the answer comes at once, and the old server then waited for the rest of
    the declared body for as long as bytes kept coming (each one reset its keep-alive timer)."""
    viewer, url, _ = served
    with connect(url) as conn:
        conn.sendall(f"POST /api/undo HTTP/1.1\r\nHost: 127.0.0.1\r\n{TOKEN_HEADER}: {TOKEN}\r\n"
                     "Content-Length: 1000\r\n\r\n".encode())
        reply, closed = trickle(conn, b" " * 1000, every=0.2)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
    assert closed is not None and closed < LATE, f"still open after {WAIT} s"


def test_the_next_request_trickled_on_a_kept_alive_connection_gets_a_408(served):
    _, url, _ = served
    with connect(url) as conn:
        conn.sendall(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        reply, closed = trickle(conn, b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
    assert closed is not None, f"still open after {WAIT} s"
    assert_408(reply[reply.index(b"HTTP/1.1 408 "):])


def test_a_large_download_read_slowly_is_not_cut(tmp_path):
    result = make_result(tmp_path)
    data = bytes(range(256)) * (64 << 10)  # 16 MiB: more than the socket buffers on both sides hold
    (result / "big.bin").write_bytes(data)
    with live_server(Viewer(result, token=TOKEN), request_timeout=DEADLINE) as (url, errors):
        with connect(url, SO_RCVBUF=1 << 16) as conn:
            conn.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            conn.settimeout(10)
            reply, start = b"", time.monotonic()
            while time.monotonic() - start < 2.5 * DEADLINE:  # a slow client: 640 kB/s
                reply += conn.recv(16 << 10)
                time.sleep(0.025)
            head, body = reply.split(b"\r\n\r\n", 1)
            assert len(body) < len(data)  # still downloading after the deadline
            while len(body) < len(data) and (chunk := conn.recv(1 << 20)):
                body += chunk
        assert head.startswith(b"HTTP/1.1 200 ") and body == data
        assert not errors.records, [r.getMessage() for r in errors.records]


def test_a_long_export_and_requests_spaced_out_on_one_connection_are_not_cut(result):
    viewer = Viewer(result, token=TOKEN)
    export = viewer.export

    def slow_export(fmt, *expected):  # a long video's export
        time.sleep(2.5 * DEADLINE)
        return export(fmt, *expected)
    viewer.export = slow_export
    with live_server(viewer, request_timeout=DEADLINE) as (url, _), httpx.Client(timeout=30) as client:
        reply = client.post(f"{url}/api/export?format=ytvis", json={}, headers=AUTH)
        assert reply.status_code == 200 and reply.content, reply.text[:200]
        for _ in range(5):  # 1.5 deadlines on one kept-alive connection: each request arrives in time
            time.sleep(0.3 * DEADLINE)
            assert client.get(f"{url}/api/state").status_code == 200
        with connect(url) as conn:  # an edit in two parts, its body a quarter deadline after its head
            body = json.dumps({"op": "hide", "ids": [2]}).encode()
            conn.sendall(f"POST /api/edits HTTP/1.1\r\nHost: 127.0.0.1\r\n{TOKEN_HEADER}: {TOKEN}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            time.sleep(0.25 * DEADLINE)
            conn.sendall(body)
            conn.settimeout(10)
            assert conn.recv(65536).startswith(b"HTTP/1.1 200 ")
    assert viewer.version == 1


def test_entitysam_view_serves_with_the_deadline(result, monkeypatch):
    import uvicorn

    from entitysam.review.connections import REQUEST_TIMEOUT, DeadlineProtocol
    from entitysam.review.server import serve

    configs = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: configs.append(self.config))
    serve(result, port=0, say=lambda message: None)
    assert issubclass(configs[0].http, DeadlineProtocol)
    assert configs[0].http.request_timeout == REQUEST_TIMEOUT == 20


def test_a_client_waiting_for_100_continue_is_not_cut_while_the_server_works(result):
    """A client that sends `Expect: 100-continue` waits for the server before sending its body.
    Export reads no body: the server never asked for it, yet the export was cut at the deadline
    with a 408 that blamed the client, its work thrown away. The wait is the server's time."""
    viewer = Viewer(result, token=TOKEN)
    export = viewer.export

    def slow_export(fmt, *expected):
        time.sleep(2.5 * DEADLINE)
        return export(fmt, *expected)
    viewer.export = slow_export
    with live_server(viewer, request_timeout=DEADLINE) as (url, errors), connect(url) as conn:
        conn.sendall(f"POST /api/export?format=ytvis HTTP/1.1\r\nHost: 127.0.0.1\r\n{TOKEN_HEADER}: {TOKEN}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n".encode())
        reply, closed = trickle(conn, b"")
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
        assert not errors.records, [r.getMessage() for r in errors.records]


def test_a_body_held_back_by_the_server_gets_the_deadline_after_the_server_reads_again():
    """A handler that reads its body late (here 1.8 deadlines in): uvicorn stops reading past 64 kB
    and the client cannot send. The clock started again at the last look while reading was
    paused (a deadline in), so when reading resumed the client had only what was left of it
    (0.2 deadline) and got a 408 for a body it sent 0.4 deadline after the server read again."""
    import asyncio
    import threading

    import uvicorn

    from entitysam.review.connections import server_config

    deadline, received = 2.0, []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await asyncio.sleep(1.8 * deadline)
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        received.append(len(body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(server_config(app, request_timeout=deadline, log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        size = 600_000
        with socket.create_connection(sock.getsockname()) as conn:
            start = time.monotonic()
            conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
            first = threading.Thread(target=conn.sendall, args=(b"a" * (size - 1000),))
            first.start()
            time.sleep(max(0.0, start + 2.2 * deadline - time.monotonic()))  # 0.4 deadline after the read
            first.join(10)
            conn.sendall(b"a" * 1000)
            reply, closed = trickle(conn, b"")
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
        assert received == [size]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
