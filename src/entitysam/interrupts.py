"""Holding a Ctrl-C (or the SIGTERM the command line turns into one) while files are moved or
written, so that an interrupt never lands between two steps that belong together."""

from __future__ import annotations

import contextlib
import signal
import threading

from .errors import Terminated, raise_terminated

__all__ = ["deferred_sigint"]


@contextlib.contextmanager
def deferred_sigint():
    """Hold a Ctrl-C (SIGINT), and a SIGTERM the command line turns into one, until the block is
    done, then raise it (KeyboardInterrupt, or `Terminated`).

    Used around the writes of one online frame (its files and its entities.jsonl line) and the
    renames that move a result into place, so that an interrupt never leaves them half done. No-op
    outside the main thread; a signal is held only while Python handles it by raising (SIGINT's
    default handler, the command line's SIGTERM one); blocks nest (the outermost one holds).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    held = {sig: handler for sig, handler in held.items()
            if handler is signal.default_int_handler or handler is raise_terminated}
    received = []
    for sig in held:
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
    if received:
        raise Terminated() if signal.SIGTERM in received else KeyboardInterrupt
