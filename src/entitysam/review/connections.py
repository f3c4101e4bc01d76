"""How `entitysam view` runs uvicorn: every request must arrive in full within a deadline.

uvicorn bounds an idle keep-alive connection (5 s) but not an unfinished request: its timer is
reset by every byte received, and a new connection has none. So a client sending its headers a
byte at a time (slowloris), or headers and a Content-Length body that never completes, held its
connection, a coroutine and (for an edit) the handler for as long as it liked; enough of them
used up the process's open files and the viewer stopped answering. A middleware cannot help
with the headers: the app is only called once they are complete.

The deadline is kept by uvicorn's own HTTP/1.1 protocol (h11), subclassed: from the moment the
server is ready for a request (connection opened, previous response sent) until h11 has the whole
request (head and body), at most `REQUEST_TIMEOUT` seconds. Then the connection is closed, after a
408 when part of a request came and no response began. Once a request has arrived nothing is
timed: a long export and a large download sent slowly to a slow client run as long as they take.
Time during which uvicorn itself stopped reading (a handler not reading a body over 64 kB, flow
control), or the client waits for the ``100 Continue`` it asked for (``Expect: 100-continue``; uvicorn
sends it when the handler first reads the body), is the server's, not the client's: the clock starts
again when that ends.

Stopping (`StoppingServer`): the first Ctrl-C or SIGTERM stops the server gracefully (no new
connection; the responses in flight get at most `STOP_TIMEOUT` seconds, then their connections are
dropped), the ones after it are ignored, as the command line's `interrupts.interrupt_once` ignores
them for the other commands; then `run_server` raises KeyboardInterrupt (`Terminated` for SIGTERM)
once the event loop is closed. The signals are taken from before the loop starts until it is
closed. uvicorn's own handlers made a second Ctrl-C force the exit (the app's lifespan cancelled:
a traceback) and re-raised the signals from inside the event loop once stopped, after putting
the command's handlers back; a Ctrl-C before uvicorn took them raised KeyboardInterrupt inside
asyncio's set-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading

import h11
from uvicorn import Config, Server
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import Terminated
from ..interrupts import handler_after_interrupt

__all__ = ["REQUEST_TIMEOUT", "STOP_TIMEOUT", "DeadlineProtocol", "StoppingServer", "run_server", "server_config"]

# The page sends each request at once (an edit is a few kB, 1 MiB at most); 20 s leaves room for
# a slow network and is Apache's default for the request head (mod_reqtimeout).
REQUEST_TIMEOUT = 20.0
# Once stopped, the responses in flight get this long to finish; then their connections are dropped
# (a client that stopped reading a download cannot hold the exit: later Ctrl-Cs are ignored). Not
# uvicorn's timeout_graceful_shutdown: it cancels the handlers, each cancellation logged with a
# traceback. A handler still running (a save, an export: worker threads) runs to its end.
STOP_TIMEOUT = 10.0
_STOPS = (signal.SIGINT, signal.SIGTERM)

_RECEIVING = (h11.IDLE, h11.SEND_BODY)  # the client's side of h11: a request not (fully) received
_NO_RESPONSE_YET = (h11.IDLE, h11.SEND_RESPONSE)
# While the server holds the client back it is looked at this often: when it lets the client go on,
# the client has nearly the whole deadline, not what was left of it at the last look.
_HELD_BACK_POLL = 0.25


def _timeout_reply(seconds: float) -> bytes:
    body = (f'{{"error": "the request did not arrive in full within {seconds:g} s"}}').encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncache-control: no-store\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


class DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for receiving each request (see the module docstring)."""

    request_timeout = REQUEST_TIMEOUT

    def connection_made(self, transport) -> None:
        self.waiting_since: float | None = None
        self.deadline_timer = None
        super().connection_made(transport)
        self.follow_request()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.follow_request()  # the next request may start now: its own deadline

    def connection_lost(self, exc) -> None:
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
            self.deadline_timer = None
        super().connection_lost(exc)

    def follow_request(self) -> None:
        """Start the clock when h11 waits for (the rest of) a request, stop it once it has it all."""
        if self.conn.their_state not in _RECEIVING:
            self.waiting_since = None
            return
        if self.waiting_since is None:
            self.waiting_since = self.loop.time()
            if self.deadline_timer is None:  # a timer still pending re-arms itself for what is left
                self.deadline_timer = self.loop.call_later(self.request_timeout, self.check_deadline)

    def check_deadline(self) -> None:
        self.deadline_timer = None
        if self.waiting_since is None or self.transport.is_closing():
            return
        if self.flow.read_paused or self.conn.they_are_waiting_for_100_continue:  # the client cannot send
            self.waiting_since = self.loop.time()
            self.deadline_timer = self.loop.call_later(min(_HELD_BACK_POLL, self.request_timeout), self.check_deadline)
            return
        left = self.waiting_since + self.request_timeout - self.loop.time()
        if left > 0:
            self.deadline_timer = self.loop.call_later(left, self.check_deadline)
            return
        partial = self.conn.their_state is h11.SEND_BODY or bool(self.conn.trailing_data[0])
        if partial and self.conn.our_state in _NO_RESPONSE_YET:  # an idle connection is closed silently
            self.transport.write(_timeout_reply(self.request_timeout))
        # a handler still waiting for the body gets http.disconnect (uvicorn's connection_lost)
        self.transport.close()


def server_config(app, *, request_timeout: float = REQUEST_TIMEOUT, **options) -> Config:
    """The uvicorn Config `entitysam view` serves `app` with: DeadlineProtocol with `request_timeout`
    seconds; `options`: other Config arguments (log_level="warning" and access_log=False unless
    given)."""
    protocol = type("DeadlineProtocol", (DeadlineProtocol,), {"request_timeout": float(request_timeout)})
    options = {"log_level": "warning", "access_log": False, **options}
    return Config(app, http=protocol, **options)


class StoppingServer(Server):
    """uvicorn's Server stopped by the first Ctrl-C or SIGTERM, the later ones ignored (see the
    module docstring). `stopped_by`: the signal that stopped it, None while none did."""

    stopped_by: int | None = None
    stop_timeout = STOP_TIMEOUT

    @contextlib.contextmanager
    def capture_signals(self):
        """uvicorn's hook (>= 0.29) taking SIGINT and SIGTERM while it serves: none here, the
        signals are `stopping_on_signals`' for the whole run."""
        yield

    @contextlib.contextmanager
    def stopping_on_signals(self):
        """Within the block, SIGINT and SIGTERM stop this server (the first; later ones ignored),
        also before the event loop runs it and while it is closed: a Ctrl-C there raised
        KeyboardInterrupt inside asyncio ("coroutine 'Server.serve' was never awaited"). A
        signal ignored (SIG_IGN, nohup) or not set from Python is left as it is."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        before = {sig: signal.getsignal(sig) for sig in _STOPS}
        taken = []  # (a SIGTERM between taking SIGINT and SIGTERM raises here: SIGINT is given back)
        try:
            for sig in (sig for sig, handler in before.items() if handler not in (None, signal.SIG_IGN)):
                signal.signal(sig, self.stop_on_signal)
                taken.append(sig)
            yield
        finally:  # stopped: the command is ending, its own handler would ignore what comes now
            for sig in taken:
                signal.signal(sig, before[sig] if self.stopped_by is None else handler_after_interrupt(before[sig]))

    def stop_on_signal(self, signum, frame) -> None:
        if self.stopped_by is None:
            self.stopped_by = signum
            self.should_exit = True

    async def shutdown(self, sockets=None) -> None:
        """uvicorn's graceful shutdown, the connections still open after `stop_timeout` dropped."""
        timer = asyncio.get_running_loop().call_later(self.stop_timeout, self.close_connections)
        try:
            await super().shutdown(sockets=sockets)
        finally:
            timer.cancel()

    def close_connections(self) -> None:
        """Drop every connection (abort: close would wait to send what is buffered): a response being
        sent ends as if its client went away, quietly."""
        for connection in list(self.server_state.connections):
            connection.transport.abort()


def run_server(config: Config, sockets) -> None:
    """Serve on `sockets` until stopped; stopped by a signal, raise what the command line's
    handler would have (KeyboardInterrupt, `Terminated` for SIGTERM), now that all is closed."""
    server = StoppingServer(config)
    with server.stopping_on_signals():
        server.run(sockets=sockets)
    if server.stopped_by is not None:
        raise Terminated() if server.stopped_by == signal.SIGTERM else KeyboardInterrupt
