"""Interrupts of the command line: the first Ctrl-C (or SIGTERM) stops the run, the ones after it
are ignored while it cleans up, and none lands between two writes that belong together."""

from __future__ import annotations

import contextlib
import signal
import threading

from .errors import Terminated, raise_terminated

__all__ = ["deferred_sigint", "forget_handled_interrupts", "handler_after_interrupt", "interrupt_once",
           "interrupts_once"]

_STOPS = (signal.SIGINT, signal.SIGTERM)


def _ignore(signum, frame) -> None:
    """A Ctrl-C or SIGTERM after the first one: the run is already stopping (see interrupt_once)."""


def interrupt_once(signum, frame) -> None:
    """The command line's SIGINT and SIGTERM handler: the first raises (KeyboardInterrupt, or
    `Terminated` for SIGTERM), the ones after it are ignored. The run is then cleaning up (removing
    its staging folder and lock, finishing an online result): a second Ctrl-C, pressed while it
    did, interrupted that cleanup, left the lock behind and printed a traceback."""
    ignore_further_interrupts()
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt


def ignore_further_interrupts() -> None:
    """From now on, ignore the signals that interrupt_once handles (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for sig in _STOPS:
            if signal.getsignal(sig) is interrupt_once:
                signal.signal(sig, _ignore)


def handler_after_interrupt(handler):
    """What replaces the signal handler `handler` once the command is stopping on an interrupt:
    interrupt_once then ignores the signals (as after its own first one), any other stays."""
    return _ignore if handler is interrupt_once else handler


def forget_handled_interrupts() -> None:
    """Clear CPython's record of a KeyboardInterrupt that left an exec() of a string, once the
    command has handled every interrupt (its exit code decided).

    CPython sets that record whenever a KeyboardInterrupt leaves code compiled from a string
    (dataclasses and namedtuple make their methods that way: a Ctrl-C landing while a module
    using them is imported), caught later or not, and `python -m entitysam` then ends by killing
    itself with SIGINT (status -2 to its parent, which takes it for an unhandled Ctrl-C) instead
    of exiting with the command's code. Running any string through exec() resets the record."""
    exec("None", {})  # noqa: S102 - a constant: only the interpreter's side effect is wanted


@contextlib.contextmanager
def interrupts_once(then=None):
    """Within the block, a Ctrl-C and a SIGTERM go to interrupt_once: SIGTERM (what `kill`,
    `timeout`, Slurm and `docker stop` send) ends the command as Ctrl-C does, cleaning up, instead
    of killing it with its temporary files and lock left behind. Only signals left to Python's
    defaults are taken (a run started with Ctrl-C ignored keeps ignoring it). After the block they
    go back to their handlers before it, or to `then` (a handler): the process's exit passes its own,
    since a default handler, even for an instant, let a repeated SIGTERM kill the process (-15)
    and a repeated Ctrl-C raise a traceback between the command's end and the exit's shield."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    before = {sig: signal.getsignal(sig) for sig in _STOPS}
    taken = [sig for sig in _STOPS if before[sig] is defaults[sig]]
    for sig in taken:
        signal.signal(sig, interrupt_once)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, then if then is not None and sig in taken else handler)


@contextlib.contextmanager
def deferred_sigint():
    """Hold a Ctrl-C (SIGINT), and a SIGTERM the command line turns into one, until the block is
    done, then raise it (KeyboardInterrupt, or `Terminated`).

    Used around steps that belong together: an online frame's merge (counted as processed, and in
    the merger), its writes (files, entities.jsonl line, counts), the renames that move a result
    into place, so that an interrupt never leaves them half done. When the block raised, the
    interrupt is raised from its error (a batch that turned the error into a failed video and
    went on would have lost the Ctrl-C, and ignored every later one). No-op
    outside the main thread; a signal is held only while Python handles it by raising (SIGINT's
    default handler, the command line's handlers); blocks nest (the outermost one holds).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {sig: signal.getsignal(sig) for sig in _STOPS}
    held = {sig: handler for sig, handler in held.items()
            if handler in (signal.default_int_handler, raise_terminated, interrupt_once)}
    received = []
    for sig in held:
        signal.signal(sig, lambda signum, frame: received.append(signum))
    error = None
    try:
        yield
    except BaseException as err:  # noqa: BLE001 - raised below, or the interrupt from it
        error = err
    finally:
        for sig, handler in held.items():  # (after one came: the run is stopping, as after interrupt_once)
            signal.signal(sig, handler_after_interrupt(handler) if received else handler)
    if received:  # raised as interrupt_once would have: the first one counts
        raise (Terminated() if signal.SIGTERM in received else KeyboardInterrupt()) from error
    if error is not None:
        raise error
