"""Helpers of the viewer tests: `entitysam view` as a subprocess, the viewer's app on a real uvicorn
server in a thread, headless system Chromium."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
URL_LINE = re.compile(r"at (http://\S+/\?token=(\S+))")


def chromium_or_skip() -> str:
    """The system Chromium (no browser download), or skip with the reason."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"browser tests need the distribution's Chromium at {CHROMIUM} "
                    "(apt-get install chromium chromium-driver)")
    pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install playwright)")
    return CHROMIUM


@contextlib.contextmanager
def view_server(result_dir: Path, *extra: str, timeout: float = 120.0) -> Iterator[tuple[str, str]]:
    """Run `entitysam view RESULT_DIR --port 0` until the block ends; yields (url with token, token)."""
    cmd = [sys.executable, "-m", "entitysam", "view", str(result_dir), "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    try:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            m = URL_LINE.search(line)
            if m:
                yield m.group(1), m.group(2)
                return
        raise AssertionError(f"`entitysam view` printed no URL: {''.join(seen)!r} (exit {proc.poll()})")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ServerErrors(logging.Handler):
    """What the server logs at ERROR (an exception escaping the app: a traceback in the terminal)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def tracebacks(self) -> list[str]:
        """The records that carry a traceback (an exception), as their message and exception."""
        return [f"{r.getMessage()} {r.exc_info[1]!r}" for r in self.records if r.exc_info]


@contextlib.contextmanager
def live_server(viewer, **options) -> Iterator[tuple[str, ServerErrors]]:
    """The app of `viewer` (an entitysam.review.server.Viewer) on uvicorn as `entitysam view` runs
    it (one worker, entitysam.review.connections.server_config; options: its keyword arguments, such
    as request_timeout) on a free loopback port, in a thread; yields (base URL, the handler
    collecting what uvicorn logs at ERROR)."""
    import uvicorn

    from entitysam.review.connections import server_config
    from entitysam.review.server import allowed_hosts, create_app

    errors = ServerErrors()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(errors)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(viewer, hosts=allowed_hosts("127.0.0.1"), loopback_only=True)
    config = server_config(app, log_config=None, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", errors
    finally:
        server.should_exit = True
        thread.join(10)
        logger.removeHandler(errors)
        sock.close()


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 900):
    """A Playwright page in headless system Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.errors = errors
            yield page
        finally:
            browser.close()


def open_viewer(page, url: str, timeout_ms: float = 60000) -> None:
    page.goto(url)
    page.wait_for_function("window.viewer && window.viewer.ready === true", timeout=timeout_ms)


def which_chromium() -> str | None:
    return shutil.which("chromium")
