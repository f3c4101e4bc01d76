"""Ctrl-C pressed twice in quick succession stops `entitysam view` as one does: exit 0 (stopping
is how the viewer ends), no traceback, the unsaved edits said and kept in the draft, no lock file.

The second SIGINT used to reach uvicorn's own handler, which then forced the exit (the app's
lifespan cancelled: a logged traceback); and a Ctrl-C landing while the viewer still started
(uvicorn's modules being imported) made `python -m entitysam` kill itself by SIGINT at the end
(status -2) after printing nothing. Each case is run at several gaps between the two signals:
the old code failed some of them in most runs, not all of them in every run. With the Ctrl-Cs
after the first ignored, a client that stopped reading cannot hold the stopping viewer for ever."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("starlette")

from _review_result import make_result  # noqa: E402
from _viewer import URL_LINE  # noqa: E402

from conftest import REPO  # noqa: E402

GAPS = [0.0, 0.01, 0.05, 0.1, 0.2]  # seconds between the two Ctrl-Cs
EDIT = {"op": "label", "id": 1, "text": "sky"}


def environment() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def start_viewer(result: Path) -> tuple[subprocess.Popen, str, str]:
    """`python -m entitysam view RESULT --port 0`, once it printed its URL: (process, base URL, token)."""
    proc = subprocess.Popen([sys.executable, "-m", "entitysam", "view", str(result), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = URL_LINE.search(proc.stdout.readline())
        if m:
            return proc, m.group(1).split("/?")[0], m.group(2)
        assert proc.poll() is None, proc.communicate()[1]
    proc.kill()
    raise AssertionError("no URL printed")


def edit(base: str, token: str) -> None:
    """One edit through the API, retried until the server listens (the URL is printed before)."""
    request = urllib.request.Request(f"{base}/api/edits", data=json.dumps(EDIT).encode(), method="POST",
                                     headers={"X-EntitySAM-Token": token, "Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for _ in range(300):
        try:
            assert opener.open(request, timeout=30).status == 200
            return
        except urllib.error.URLError:
            time.sleep(0.05)
    raise AssertionError("the viewer never answered")


def interrupt_twice(proc: subprocess.Popen, gap: float) -> tuple[str, str]:
    """Two SIGINTs `gap` seconds apart (a double Ctrl-C); the process's (stdout, stderr)."""
    try:
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("gap", GAPS)
def test_a_double_ctrl_c_while_serving_stops_the_viewer_cleanly(tmp_path, gap):
    result = make_result(tmp_path)
    proc, base, token = start_viewer(result)
    edit(base, token)
    out, err = interrupt_twice(proc, gap)
    assert (proc.returncode, err) == (0, ""), err
    draft = tmp_path / ".clip.draft.json"
    assert [line for line in out.splitlines() if "unsaved edits" in line] == [
        f"unsaved edits (a log of 1 edit) kept in the draft {draft}: viewing {result} again restores them"], out
    assert [op["op"] for op in json.loads(draft.read_text())["ops"]] == ["label"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".clip.draft.json", "clip", "input-clip"], "left behind"


@pytest.mark.parametrize("gap", GAPS)
def test_a_double_ctrl_c_while_the_viewer_starts_exits_0_not_killed_by_sigint(tmp_path, gap):
    result = make_result(tmp_path)
    proc, _base, _token = start_viewer(result)  # the URL is printed before uvicorn is imported and serves
    out, err = interrupt_twice(proc, gap)
    assert (proc.returncode, err) == (0, ""), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "input-clip"], "left behind"


def test_a_client_that_stops_reading_holds_the_stop_only_for_the_stop_timeout(tmp_path):
    """Once stopped, a response in flight has `stop_timeout` seconds; then its connection is dropped,
    quietly (no traceback logged): with the Ctrl-Cs after the first ignored, a client that stopped
    reading a download would otherwise hold the viewer for ever."""
    import logging
    import socket
    import threading

    from _viewer import ServerErrors

    from entitysam.review.connections import STOP_TIMEOUT, StoppingServer, server_config
    from entitysam.review.server import Viewer, allowed_hosts, create_app

    assert STOP_TIMEOUT == 10
    result = make_result(tmp_path)
    (result / "big.bin").write_bytes(bytes(64 << 20))  # more than the socket buffers hold
    errors = ServerErrors()
    logging.getLogger("uvicorn.error").addHandler(errors)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(Viewer(result, token="t"), hosts=allowed_hosts("127.0.0.1"), loopback_only=True)
    server = StoppingServer(server_config(app, log_config=None))
    server.stop_timeout = 0.5
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        with socket.create_connection(sock.getsockname()) as conn:
            conn.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.1 200 ")  # then nothing more is read
            stopped = time.monotonic()
            server.should_exit = True
            thread.join(10)
            assert not thread.is_alive() and time.monotonic() - stopped < 5
    finally:
        server.should_exit = True
        thread.join(10)
        logging.getLogger("uvicorn.error").removeHandler(errors)
        sock.close()
    assert errors.tracebacks() == []


def test_a_signal_while_the_viewer_takes_the_signals_gives_back_those_it_took(monkeypatch):
    """The viewer takes SIGINT, then SIGTERM. A SIGTERM landing between the two runs the command's
    handler, which raises: SIGINT was left bound to the server that never ran (later Ctrl-Cs of a
    program calling serve() did nothing). Emulated: the second signal.signal call raises."""
    from entitysam.review import connections

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    real = signal.signal
    calls = []

    def signal_then_interrupted(sig, handler):
        calls.append(sig)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(sig, handler)

    server = connections.StoppingServer(connections.server_config(lambda scope, receive, send: None))
    monkeypatch.setattr(connections.signal, "signal", signal_then_interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            with server.stopping_on_signals():
                pass
    finally:
        monkeypatch.setattr(connections.signal, "signal", real)
        now = {sig: signal.getsignal(sig) for sig in before}
        for sig, handler in before.items():
            real(sig, handler)
    assert now == before


def test_a_result_folder_named_in_undecodable_bytes_is_served_under_a_strict_utf8_stdout(tmp_path):
    """`entitysam view` printed the folder's name as it is before serving: a name of undecodable
    bytes (\\udcff, legal on Linux) made a strict UTF-8 stdout (an en_US.UTF-8 locale) raise a
    UnicodeEncodeError instead of starting the server. The name is shown escaped."""
    result = make_result(tmp_path / "r\udcff")
    proc = subprocess.Popen([sys.executable, "-m", "entitysam", "view", str(result), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            env=dict(environment(), PYTHONIOENCODING="utf-8"))
    try:
        line = proc.stdout.readline()
        assert URL_LINE.search(line) and "r\\udcff" in line, (line, proc.poll(), proc.poll() is not None
                                                                and proc.stderr.read()[-2000:])
    finally:
        proc.kill()
        proc.communicate()
