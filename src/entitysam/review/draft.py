"""The viewer's draft: the unsaved edit log of a review, kept on disk after each change.

`entitysam view` holds its edit session in memory; a viewer stopped (Ctrl-C, a closed terminal, a
crash, a reboot) lost every edit made since the last Save. Now each accepted change (edit, undo,
redo) writes the session's log to ``.<name>.draft.json`` beside the result folder (where its
revisions go; the result folder itself is never written: ``--overwrite`` and the revision code
accept in it only what a run wrote), atomically and flushed to disk (io.atomic). Its content is
a revision's ``edits.json`` record (so :func:`~entitysam.review.revision.replay_edits` reads it)
plus ``"draft": {"writer", "serial", "panoptic_sha256", "pid"}``.

* Opening a result whose draft names the bytes it was opened from (the SHA-256 of manifest.json
  and of panoptic.json, as a revision checks them) replays the draft's edits; a draft of another
  version of the result (it changed on disk since) is not applied: it is renamed to
  ``.<name>.draft-stale-<time>.json`` and named in the notice.
* No unsaved change (nothing edited, everything undone, Save done since): the draft is removed.
* Two viewers of one result: a viewer replaces or removes only the draft it read when it opened
  the result or wrote since. Once another viewer has written it, this one keeps no draft any more
  and says so (its edits stay in memory until saved); the other's draft is left as it is.
* A draft that cannot be written (a read-only or full disk) or a file of that name that is not a
  draft: no draft is kept, said once. Nothing is ever written over a file that is not a draft.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import EditError
from ..io.atomic import write_json_atomic
from ..io.paths import describe_os_error
from ..regular_file import read_regular_text
from .edits import EditSession
from .result import ResultFolder
from .revision import edits_record, read_edits

__all__ = ["DRAFT_SUFFIX", "draft_path", "Draft", "unsaved_line"]

DRAFT_SUFFIX = ".draft.json"
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


class Draft:
    """The draft of one viewer's session of `result` (see the module docstring).

    notice: what the viewer shows about the draft (restored, set aside, not kept), else None.
    say: where each notice also goes (the terminal)."""

    def __init__(self, result: ResultFolder, say: Callable[[str], None] | None = None):
        self.result = result
        self.path = draft_path(result.path)
        self.writer = secrets.token_hex(8)
        self.serial = 0
        self.seen: tuple[str, int] | None = None  # the draft on disk this viewer read or wrote last
        self.off: str | None = None  # why no draft is kept, once it is not
        self.notice: str | None = None
        self._say = say

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

    def restore(self) -> EditSession | None:
        """A session with the draft's edits replayed when there is a draft of this very result
        (else None; a draft of another version is set aside, a file that is no draft left alone)."""
        session = self._restore()
        if self.off is None and not os.access(self.path.parent, os.W_OK):  # said at once, not at the first edit
            self._stop(f"the folder {self.path.parent} is not writable: no draft of the edits can be kept there")
        return session

    def _restore(self) -> EditSession | None:
        kind, data = self._read()
        if kind == "foreign":
            self._stop(f"{self.path} is not a draft of entitysam (left as it is)")
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

    def _mine(self) -> bool:
        """Whether the draft on disk may be replaced or removed by this viewer (absent, or the one it
        read or wrote last); else drafts stop here."""
        kind, data = self._read()
        if kind == "none" or (kind == "draft" and _marker(data) == self.seen):
            return True
        self._stop(f"the draft {self.path} was written by another viewer of this result"
                   if kind == "draft" else f"{self.path} is not a draft of entitysam (left as it is)")
        return False

    def update(self, session: EditSession, unsaved: bool) -> None:
        """Keep the session's log (unsaved: it differs from what was saved, else the draft is removed)."""
        if not unsaved:
            self.clear()
            return
        if self.off is not None or not self._mine():
            return
        record = edits_record(session)
        self.serial += 1
        record["draft"] = {"writer": self.writer, "serial": self.serial,
                           "panoptic_sha256": self.result.fingerprint[1], "pid": os.getpid()}
        try:
            write_json_atomic(self.path, record, indent=1, durable=True)
        except OSError as err:
            err.filename = str(self.path)
            self._stop(describe_os_error(err, "the draft of the unsaved edits"))
            return
        self.seen = (self.writer, self.serial)

    def clear(self) -> None:
        """Remove the draft (saved as a revision, or nothing unsaved), when it is this viewer's."""
        if self.off is not None or self.seen is None or not self._mine():
            return
        with contextlib.suppress(FileNotFoundError):
            try:
                os.unlink(self.path)
            except OSError as err:
                self._stop(f"cannot remove the draft {self.path}: {err.strerror or err}")
                return
        self.seen = None


def unsaved_line(draft: Draft | None, result_dir: Path, count: int) -> str:
    """What a stopped viewer says of its unsaved edits (`count` edits in its log): where they are kept."""
    kept = (f"kept in the draft {draft.path}: viewing {result_dir} again restores them"
            if draft is not None and draft.off is None else "lost: no draft could be kept (said above)")
    return f"unsaved edits (a log of {count} edit{'s' * (count != 1)}) {kept}"
