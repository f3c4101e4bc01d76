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
"""

from __future__ import annotations

import h11
from uvicorn import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["REQUEST_TIMEOUT", "DeadlineProtocol", "server_config"]

# The page sends each request at once (an edit is a few kB, 1 MiB at most); 20 s leaves room for
# a slow network and is Apache's default for the request head (mod_reqtimeout).
REQUEST_TIMEOUT = 20.0

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
