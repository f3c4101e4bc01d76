"""Live streams that misbehave around online mode (more in test_hostile_streams.py): a Ctrl-C while
a stream is being opened."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from entitysam.io.sources import LiveSource


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# As in test_online.py: the child gets Python's own SIGINT handler back, as in a terminal.
WITH_CTRL_C = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "runpy.run_module('entitysam', run_name='__main__', alter_sys=True)")


@contextlib.contextmanager
def silent_server():
    """A port that takes connections (in the kernel's backlog) and never answers: a camera or
    server that hangs. Yields its URL."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        yield f"http://127.0.0.1:{server.getsockname()[1]}/live.ts"


# ----------------------------------------------------------------------------- Ctrl-C while opening


def test_ctrl_c_while_a_live_stream_opens_stops_at_once():
    """PyAV lost the KeyboardInterrupt (raised inside its error check, where the timeout's
    ExitError replaced it): the open waited its whole timeout and failed as timed out."""
    with silent_server() as url:
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
        started = time.monotonic()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            LiveSource(url, timeout=(10.0, 1.0))
        assert time.monotonic() - started < 5


def test_cli_ctrl_c_while_a_live_stream_opens_exits_130_at_once(tmp_path):
    """`entitysam segment URL --online`, Ctrl-C while the camera does not answer: it went on for
    the 15 s open timeout, then said the stream timed out, exit 1."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    with silent_server() as url:
        p = subprocess.Popen([sys.executable, "-c", WITH_CTRL_C, "segment", url, "-o", str(tmp_path / "out"),
                              "--online", "--model", "demo", "-q"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(3)  # (python, torch imported; the open under way)
        started = time.monotonic()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        waited = time.monotonic() - started
    assert p.returncode == 130, err
    assert waited < 8 and "timed out" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written, no lock left
