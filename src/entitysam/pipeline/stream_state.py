"""The status of an online stream: ``running``, then ``complete`` (the source ended),
``stopped`` (stop() or closed early), ``interrupted`` (Ctrl-C) or ``failed`` (with the error
message), and whether reading has ended."""

from __future__ import annotations

from ..errors import EntitySAMError
from ..io.paths import describe_os_error

__all__ = ["StreamState", "describe_stream_error"]


def describe_stream_error(err: BaseException, name: str) -> str:
    """The one-line message of an error that failed the stream of video `name`."""
    if isinstance(err, EntitySAMError):
        return str(err)
    if isinstance(err, OSError):  # e.g. a full disk: say so, not "OSError: [Errno 28] ..."
        return describe_os_error(err, f"the results of {name}")
    return f"{type(err).__name__}: {err}"


class StreamState:
    """status / error of one stream, and `ended`: no more frames will be read (end of the
    source, stop, error). The first ending wins, except that a Ctrl-C overrides a stop."""

    def __init__(self) -> None:
        self.status = "running"
        self.error: str | None = None
        self.ended = False

    def source_ended(self) -> None:
        """The source has no more frames (or its reader failed: `fail` follows)."""
        self.ended = True

    def complete(self) -> None:
        """Iteration ended: a stream still running read its source to the end."""
        if self.status == "running":
            self.status = "complete"

    def stop(self) -> None:
        if not self.ended:
            self.ended = True
            if self.status == "running":
                self.status = "stopped"

    def fail(self, status: str, message: str | None) -> None:
        """End as ``failed`` (message: the error) or ``interrupted`` (message None)."""
        if self.status == "running" or (status == "interrupted" and self.status != "failed"):
            self.status = status
            self.error = message
        self.ended = True

    def interrupt_if_open(self) -> bool:
        """A Ctrl-C the caller caught: ``interrupted`` unless already complete / failed.
        Returns whether the status changed."""
        if self.status in ("running", "stopped"):
            self.fail("interrupted", None)
            return True
        return False

    def could_not_finish(self, message: str) -> None:
        """Not even the manifest could be written: ``failed``, whatever the status was."""
        self.status, self.error = "failed", message
        self.ended = True

    def finished_as(self, status: str, error: str | None) -> None:
        """What finishing the files reported (a full disk turns any status into ``failed``)."""
        if status != self.status:
            self.status, self.error = status, error
