"""Calls that must return (or raise) in bounded time: a hang fails the test instead of stalling it;
files swapped for a named pipe (which an open by name waits on for ever)."""

from __future__ import annotations

import os
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


def swap_for_a_pipe(path) -> None:
    """Replace the file at `path` by a named pipe nobody writes to, in one rename (the path is never
    missing): opening it by name then waits for a writer for ever."""
    fifo = path.with_name(path.name + ".fifo")
    os.mkfifo(fifo)
    os.replace(fifo, path)


def release_readers(path) -> None:
    """Let a reader stuck opening the named pipe `path` go (a writer opens it and closes it at
    once): a thread of a failed test must not stay blocked in it until the tests end."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # nobody is waiting (ENXIO), or it is no pipe any more
        pass
