"""Every error whose message is meant for the user: one hierarchy under EntitySAMError (the
command line prints the message and exits non-zero). Messages state the facts (the file, the
value, the cause) and name Python arguments, never command-line flags. What the caller can do
about an error is a list of `Remedy` (a Python argument and the value to pass): ``str(err)``
words them for Python callers (``pass overwrite=True to replace them``); the command line words
the same remedies with its flags (``entitysam.cli.wording``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["Terminated", "raise_terminated", "Remedy", "EntitySAMError", "InvalidArgumentError", "NonFiniteJSONError", "SourceError", "OutputError",
           "ModelNotAvailableError", "ModelLoadError", "CheckpointError", "CheckpointMismatchError",
           "CheckpointReadError", "UnsafeCheckpointError", "ResultFolderError", "ResultFolderNotFoundError",
           "ResultChangedError", "ResultFileGoneError", "EditError", "StaleVersionError", "TrainingDivergedError",
           "printable",
           "for_terminal", "say_on_stderr"]


def printable(text: str, limit: int | None = 200, keep: str = "") -> str:
    """Text a message shows (a key or name read from a file, a path a user gave): characters that
    are not printable escaped, but those in `keep` (a hostile name could otherwise drive the
    terminal: clear it, retitle it, reorder text with a bidirectional override, fake lines), cut to
    `limit` characters (a 5 MB key) where a limit is given."""
    cut = "".join(c if c.isprintable() or c in keep else repr(c)[1:-1]
                  for c in (text if limit is None else text[:limit + 1]))
    return cut if limit is None or len(cut) <= limit else cut[:limit] + " ..."


def for_terminal(message: str) -> str:
    """A message to print, whole, its control characters escaped: a file or folder name in it
    (`ESC]0;...BEL` retitles a terminal, `ESC[2J` clears it) is shown, not obeyed. A line break is
    kept where it starts an indented line (a list of remedies, on purpose); any other came from a
    name the message quotes, and is shown as ``\\n``, so that an error stays one `error:` line."""
    first, *others = message.split("\n")
    breaks = ("\n" if line.startswith(" ") else "\\n" for line in others)
    return printable(first, limit=None) + "".join(b + printable(line, limit=None) for b, line in zip(breaks, others))


def say_on_stderr(message: str) -> None:
    """`message` on stderr, flushed, as a terminal shows it safely (:func:`for_terminal`): the
    command line's messages and the Ray runner's default error lines."""
    print(for_terminal(message), file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Remedy:
    """One thing the caller can pass to avoid an error.

    argument: the Python keyword argument (``"overwrite"``); value: what to pass (``True``);
    metavar: instead of a value, a placeholder the caller fills in (``"PATH"``); purpose: what it
    does, worded to follow the argument (``"to replace them"``)."""

    argument: str
    value: Any = True
    purpose: str = ""
    metavar: str | None = None

    def python_words(self) -> str:
        shown = self.metavar if self.metavar is not None else repr(self.value)
        return " ".join(filter(None, [f"pass {self.argument}={shown}", self.purpose]))


def join_remedies(problem: str, remedies: Sequence[str]) -> str:
    """``problem: remedy (or remedy)``: the one layout of a message with its remedies; a
    multi-line problem (a list of instructions) gets each remedy as its last list items."""
    if not remedies:
        return problem
    if "\n" in problem:
        return problem + "".join(f"\n    - {r}" for r in remedies)
    first, *others = remedies
    return f"{problem}: {first}" + "".join(f" (or {r})" for r in others)


class EntitySAMError(Exception):
    """Base class: the message names the file (or argument) and the cause.

    problem: the facts alone; remedies: what the caller can pass instead (see `Remedy`)."""

    def __init__(self, problem: str = "", *remedies: Remedy):
        super().__init__(join_remedies(problem, [r.python_words() for r in remedies]))
        self.problem = problem
        self.remedies = tuple(remedies)

    def __reduce__(self):  # keeps problem and remedies across processes (multiprocessing, Ray)
        return _rebuild_error, (type(self), self.problem, self.remedies, self.__dict__)


def _rebuild_error(cls: type, problem: str, remedies: tuple, state: dict) -> EntitySAMError:
    err = cls.__new__(cls)
    EntitySAMError.__init__(err, problem, *remedies)
    err.__dict__.update(state)
    return err


class InvalidArgumentError(EntitySAMError, ValueError, TypeError):
    """An option or API argument has an unusable value (wrong type, out of range, not finite).
    Also a ValueError and a TypeError, so that generic handlers catch it."""


class FrameIndexError(InvalidArgumentError, IndexError):
    """A frame index out of range. Also an IndexError, as sequences raise."""


class NonFiniteJSONError(EntitySAMError, ValueError):
    """A value about to be written as JSON is NaN or infinite (not representable in JSON)."""


class SourceError(EntitySAMError, ValueError):
    """An input video, frame folder or image is missing, unreadable, empty or inconsistent."""


class OutputError(EntitySAMError):
    """The output folder cannot be written, or already holds results."""


class TrainingDivergedError(EntitySAMError, FloatingPointError):
    """Training produced infinite or NaN values (a learning rate too high, float16 overflow)."""


class ModelNotAvailableError(EntitySAMError):
    """A published checkpoint could not be found locally nor downloaded."""


class ModelLoadError(EntitySAMError):
    """A model could not be loaded for a reason the checkpoint reader does not name itself."""


class CheckpointError(EntitySAMError):
    """A checkpoint cannot be used; the message names the file and the cause."""


class CheckpointMismatchError(CheckpointError):
    """The state dict does not fit the model; the message lists every difference. fits: the
    name of the configuration the state dict fits exactly, when one does (None otherwise)."""

    def __init__(self, problem: str = "", *remedies: Remedy, fits: str | None = None):
        super().__init__(problem, *remedies)
        self.fits = fits


class CheckpointReadError(CheckpointMismatchError):
    """The file is not a readable checkpoint (missing, a folder, empty, truncated, not a state
    dict). A CheckpointMismatchError subclass, so that callers catching that still catch it."""


class UnsafeCheckpointError(CheckpointReadError):
    """The file holds pickled Python objects other than tensors and plain data: loading it could
    run code, so it is refused unless the caller explicitly trusts it (``allow_pickle=True``).
    path: the file."""

    def __init__(self, problem: str, *remedies: Remedy, path=None):
        super().__init__(problem, *remedies)
        self.path = path


class ResultFolderError(EntitySAMError, ValueError):
    """A folder is not a complete, readable result of `entitysam segment` (missing or incomplete
    manifest, missing or inconsistent files); the message names the folder and the cause."""


class ResultFolderNotFoundError(ResultFolderError):
    """The path given as a result folder names no folder: nothing there, a file, a broken link, a
    link loop, a path that cannot be looked up (no permission). The command line answers it as a
    mistaken argument (exit code 2), refused before any work, as `metrics` and `eval` do a missing
    folder."""


class ResultChangedError(ResultFolderError):
    """A result folder open for review changed on disk (rewritten, deleted, a file gone or
    unreadable) since it was opened: what was read of it then no longer matches it, so nothing
    is saved or exported from it; reopen it."""


class ResultFileGoneError(ResultChangedError):
    """A file of a result is gone from disk since it was opened: an id PNG of a result folder open
    for review, or the temporary id maps of a `SegmentationResult`."""


class EditError(EntitySAMError, ValueError):
    """An edit operation of a result (hide, merge, split, ...) is malformed or does not apply to
    the current entities; the message names the operation and the cause."""


class StaleVersionError(EntitySAMError):
    """A change asked of `entitysam view` at an edit version that is no longer the current one
    (another page of the same viewer edited, undid or redid since): nothing was done."""

    def __init__(self, expected: int, current: int):
        super().__init__(f"the edit changed in another tab or window (version {current}; this page showed "
                         f"version {expected}): nothing was done; the page now shows the current edit")
        self.expected, self.current = expected, current


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `kill`, `timeout`, Slurm and `docker stop` send), raised by the command line
    where a Ctrl-C would be: the command ends as on Ctrl-C, its temporary files removed."""


def raise_terminated(signum, frame) -> None:
    """The command line's SIGTERM handler."""
    raise Terminated()
