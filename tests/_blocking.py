"""Calls that must return (or raise) in bounded time: a hang fails the test instead of stalling it."""

from __future__ import annotations

import threading


def within(seconds, fn, *args, **kwargs):
    """fn(*args, **kwargs) on a daemon thread; fails if it has not returned or raised within `seconds`."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"{fn.__name__} blocked for more than {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]
