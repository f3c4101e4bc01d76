"""Helpers of the viewer tests: `entitysam view` as a subprocess, headless system Chromium."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
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
