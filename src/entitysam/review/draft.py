"""The viewer's draft: the unsaved edit log of a review, kept on disk after each change.

`entitysam view` holds its edit session in memory; a viewer stopped (Ctrl-C, a closed terminal, a
crash, a reboot) lost every edit made since the last Save. Now each accepted change (edit, undo,
redo) writes the session's log to ``.<name>.draft.json`` beside the result folder (where its
revisions go; the result folder itself is never written: ``--overwrite`` and the revision code
accept in it only what a run wrote), atomically and flushed to disk (io.atomic). Its content is
a revision's ``edits.json`` record (so :func:`~entitysam.review.revision.replay_edits` reads it)
plus ``"draft": {"writer", "serial", "panoptic_sha256", "pid", "host"}``.

* Opening a result whose draft names the bytes it was opened from (the SHA-256 of manifest.json
  and of panoptic.json, as a revision checks them) replays the draft's edits; a draft of another
  version of the result (it changed on disk since) is not applied: it is renamed to
  ``.<name>.draft-stale-<time>-<hex>.json`` and named in the notice.
* No unsaved change (nothing edited, everything undone, Save done since): the draft is removed.
* Two viewers of one result (two processes, two machines sharing the folder): a viewer replaces or
  removes ``.<name>.draft.json`` only while it is the draft it read when it opened the result or
  wrote since. Once another viewer has written it (or a file that is no draft is there), this
  viewer leaves it as it is and keeps its own log in a draft of its own,
  ``.<name>.draft-viewer-<id>.json``, said on the terminal and the page: each viewer's edits stay
  on disk, none written over. The check and the write are one step under ``flock`` on
  ``.<name>.draft-lock`` (io.file_lock; unlocked where the file system has no flock). Opening the
  result names the viewers' own drafts found beside it (restored by renaming one to the draft).
* A draft that cannot be written (a read-only or full disk): no draft is kept, said once.
  Nothing is ever written over a file that is not this viewer's draft.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import EditError
from ..io.atomic import write_json_atomic
from ..io.file_lock import locked
from ..io.paths import describe_os_error
from ..regular_file import read_regular_text
from .edits import EditSession
from .result import ResultFolder
from .revision import edits_record, read_edits

__all__ = ["DRAFT_SUFFIX", "draft_path", "Draft", "unsaved_line"]

DRAFT_SUFFIX = ".draft.json"
OWN_INFIX = ".draft-viewer-"  # .<name>.draft-viewer-<id>.json: a viewer's own draft, beside another's
_LOST = "edits made now are kept in memory only, until saved"


def draft_path(result_dir: str | os.PathLike) -> Path:
    """Where the draft of the result folder `result_dir` is kept: ``.<name>.draft.json`` beside it."""
    result_dir = Path(os.path.abspath(result_dir))
    return result_dir.parent / f".{result_dir.name}{DRAFT_SUFFIX}"


def _marker(data: Any) -> tuple[str, int] | None:
    """(writer, serial) of a draft record, None when `data` is no draft of this tool."""
    draft = data.get("draft") if isinstance(data, dict) else None
    if not isinstance(draft, dict) or not isinstance(draft.get("writer"), str) \
            or not isinstance(draft.get("serial"), int) or data.get("format") != "entitysam-edits":
        return None
    return draft["writer"], draft["serial"]


def _who(data: Any) -> str:
    """The viewer that wrote the draft record `data`, as its pid and host say (for the notices)."""
    draft = data.get("draft") or {}
    pid, host = draft.get("pid"), draft.get("host")
    if not isinstance(pid, int):
        return "another viewer"
    where = f" on {host}" if isinstance(host, str) and host.isprintable() and host != socket.gethostname() else ""
    return f"another viewer (pid {pid}{where})"


def own_drafts(primary: Path) -> list[Path]:
    """The viewers' own drafts of the result whose draft is `primary` (see the module docstring)."""
    prefix = primary.name[:-len(DRAFT_SUFFIX)] + OWN_INFIX
    try:
        names = os.listdir(primary.parent)
    except OSError:
        return []
    return sorted(primary.parent / n for n in names if n.startswith(prefix) and n.endswith(".json"))


class Draft:
    """The draft of one viewer's session of `result` (see the module docstring).

    path: where this viewer keeps its draft (the result's draft, else its own one beside it).
    notice: what the viewer shows about the draft (restored, set aside, not kept), else None.
    say: where each notice also goes (the terminal)."""

    def __init__(self, result: ResultFolder, say: Callable[[str], None] | None = None):
        self.result = result
        self.primary = draft_path(result.path)
        self.path = self.primary
        # not ".<name>.draft.lock": the run lock of a result named "<name>.draft" (io.output_lock)
        self.lock_path = self.primary.with_name(self.primary.name[:-len(".json")] + "-lock")
        self.writer = secrets.token_hex(8)
        self.serial = 0
        self.seen: tuple[str, int] | None = None  # the draft at self.path this viewer read or wrote last
        self.off: str | None = None  # why no draft is kept, once it is not
        self.notice: str | None = None
        self._say = say

    @property
    def own(self) -> bool:
        """Whether this viewer keeps its draft in a file of its own (another's draft is the result's)."""
        return self.path != self.primary

    def _tell(self, message: str) -> None:
        self.notice = message
        if self._say is not None:
            self._say(message)

    def _stop(self, why: str) -> None:
        if self.off is None:
            self.off = why
            self._tell(f"{why}: {_LOST}")

    def _read(self) -> tuple[str, Any]:
        """("none" | "foreign" | "draft", its data) of the file at self.path now."""
        try:
            text = read_regular_text(self.path)
        except FileNotFoundError:
            return "none", None
        except (OSError, ValueError):
            return "foreign", None
        if text is None:  # a folder, a named pipe: not a draft
            return "foreign", None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            return "foreign", None
        return ("draft", data) if _marker(data) is not None else ("foreign", None)

    def _locked(self, step: Callable[[], Any]) -> Any:
        """`step()` under the draft's lock (another viewer's check and write wait); a lock that
        cannot be taken (read-only folder): no draft any more, said once."""
        try:
            with locked(self.lock_path):
                return step()
        except OSError as err:
            err.filename = str(self.lock_path)
            self._stop(describe_os_error(err, "the lock of the draft"))
            return None

    def restore(self) -> EditSession | None:
        """A session with the draft's edits replayed when there is a draft of this very result
        (else None; a draft of another version is set aside, a file that is no draft left alone)."""
        if not os.access(self.path.parent, os.W_OK):  # said at once, not at the first edit
            session = self._restore()
            self._stop(f"the folder {self.path.parent} is not writable: no draft of the edits can be kept there")
        else:
            session = self._locked(self._restore)
        others = own_drafts(self.primary)
        if others:  # said with what was said of the draft, which the page still shows
            before = self.notice
            self._tell(f"unsaved edits of other viewers of this result, not restored here, are kept in "
                       f"{', '.join(map(str, others))} (rename one to {self.primary.name} to restore it)")
            self.notice = self.notice if before is None else f"{before}; {self.notice}"
        return session

    def _restore(self) -> EditSession | None:
        kind, data = self._read()
        if kind == "foreign":
            self._go_own(f"{self.path} is not a draft of entitysam (left as it is)")
            return None
        if kind == "none":
            return None
        self.seen = _marker(data)
        digests = ((data.get("original") or {}).get("manifest_sha256"), data["draft"].get("panoptic_sha256"))
        ops: list = []
        why = None
        if digests != tuple(self.result.fingerprint) or None in digests:
            why = "made on another version of this result (it changed on disk since)"
        else:
            try:
                ops = read_edits(data)["ops"]
                session = EditSession(self.result, ops)
            except EditError as err:
                why = f"not applicable ({err})"
        if why is not None:
            self._set_aside(why)
            return None
        self._tell(f"restored {len(ops)} unsaved edit{'s' * (len(ops) != 1)} from the draft {self.path}")
        return session

    def _set_aside(self, why: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name[:-len(DRAFT_SUFFIX)]}.draft-stale-{stamp}-"
                                    f"{secrets.token_hex(2)}.json")
        try:
            os.rename(self.path, aside)
        except OSError as err:
            self.seen = None
            self._stop(f"the draft {self.path} was {why}: not applied, and it cannot be set aside "
                       f"({err.strerror or err}): it is left as it is")
            return
        self.seen = None
        self._tell(f"the draft {self.path} was {why}: not applied; its edit log is kept in {aside}")

    def _go_own(self, why: str) -> None:
        """Leave the result's draft to whoever wrote it: this viewer's log goes to a draft of its own."""
        self.path = self.primary.with_name(f"{self.primary.name[:-len(DRAFT_SUFFIX)]}{OWN_INFIX}{self.writer}.json")
        self.seen = None
        self._tell(f"{why}: this viewer's unsaved edits are kept in {self.path} from now on "
                   f"(viewing the result again restores {self.primary.name}, not them: rename to restore)")

    def _mine(self) -> bool:
        """Whether the draft at self.path may be replaced or removed by this viewer (absent, or the
        one it read or wrote last); else it moves to a draft of its own (the result's one)."""
        kind, data = self._read()
        if kind == "none" or (kind == "draft" and _marker(data) == self.seen):
            return True
        if self.own:  # its own file, changed by someone: left as it is, and no draft any more
            self._stop(f"{self.path} was changed by someone else (left as it is)")
            return False
        self._go_own(f"the draft {self.path} was written by {_who(data)} of this result (left to it)"
                     if kind == "draft" else f"{self.path} is not a draft of entitysam (left as it is)")
        return True

    def update(self, session: EditSession, unsaved: bool) -> None:
        """Keep the session's log (unsaved: it differs from what was saved, else the draft is removed)."""
        if not unsaved:
            self.clear()
            return
        if self.off is None:
            self._locked(lambda: self._write(session))

    def _write(self, session: EditSession) -> None:
        """Check that the draft is still this viewer's and replace it, under the lock."""
        if not self._mine():
            return
        record = edits_record(session)
        self.serial += 1
        record["draft"] = {"writer": self.writer, "serial": self.serial,
                           "panoptic_sha256": self.result.fingerprint[1], "pid": os.getpid(),
                           "host": socket.gethostname()}
        try:
            write_json_atomic(self.path, record, indent=1, durable=True)
        except OSError as err:
            err.filename = str(self.path)
            self._stop(describe_os_error(err, "the draft of the unsaved edits"))
            return
        self.seen = (self.writer, self.serial)

    def clear(self) -> None:
        """Remove the draft (saved as a revision, or nothing unsaved), when it is this viewer's."""
        if self.off is None and self.seen is not None:
            self._locked(self._remove)

    def _remove(self) -> None:
        kind, data = self._read()
        if kind == "foreign" or (kind == "draft" and _marker(data) != self.seen):
            return  # another viewer's now, or no draft: left to it (this one has nothing unsaved to keep)
        with contextlib.suppress(FileNotFoundError):
            try:
                os.unlink(self.path)
            except OSError as err:
                self._stop(f"cannot remove the draft {self.path}: {err.strerror or err}")
                return
        self.seen = None

    def saved(self) -> None:
        """A Save wrote the session: no draft, and "restored ..." has been said (what still holds,
        a draft of its own or none kept, is still said)."""
        self.clear()
        if self.off is None and not self.own:
            self.notice = None


def unsaved_line(draft: Draft | None, result_dir: Path, count: int) -> str:
    """What a stopped viewer says of its unsaved edits (`count` edits in its log): where they are kept."""
    if draft is None or draft.off is not None:
        kept = "lost: no draft could be kept (said above)"
    elif draft.own:
        kept = (f"kept in this viewer's own draft {draft.path} (another viewer's is {draft.primary}): "
                f"rename it to {draft.primary.name} to restore them")
    else:
        kept = f"kept in the draft {draft.path}: viewing {result_dir} again restores them"
    return f"unsaved edits (a log of {count} edit{'s' * (count != 1)}) {kept}"
