"""Every error whose message is meant for the user: one hierarchy under EntitySAMError (the
command line prints the message and exits non-zero). Messages state the facts (the file, the
value, the cause) and name Python arguments, not command-line flags: the command line words
its own advice (`entitysam.cli`)."""

from __future__ import annotations


class EntitySAMError(Exception):
    """Base class: the message names the file (or option) and the cause."""


class InvalidArgumentError(EntitySAMError, ValueError, TypeError):
    """An option or API argument has an unusable value (wrong type, out of range, not finite).
    Also a ValueError and a TypeError, so that generic handlers catch it."""


class NonFiniteJSONError(EntitySAMError, ValueError):
    """A value about to be written as JSON is NaN or infinite (not representable in JSON)."""


class SourceError(EntitySAMError, ValueError):
    """An input video, frame folder or image is missing, unreadable, empty or inconsistent."""


class OutputError(EntitySAMError):
    """The output folder cannot be written, or already holds results."""


class ModelNotAvailableError(EntitySAMError):
    """A published checkpoint could not be found locally nor downloaded."""


class ModelLoadError(EntitySAMError):
    """A model could not be loaded for a reason the checkpoint reader does not name itself."""


class CheckpointError(EntitySAMError):
    """A checkpoint cannot be used; the message names the file and the cause."""


class CheckpointMismatchError(CheckpointError):
    """The state dict does not fit the model; the message lists every difference."""


class CheckpointReadError(CheckpointMismatchError):
    """The file is not a readable checkpoint (missing, a folder, empty, truncated, not a state
    dict). A CheckpointMismatchError subclass, so that callers catching that still catch it."""


class UnsafeCheckpointError(CheckpointReadError):
    """The file holds pickled Python objects other than tensors and plain data: loading it could
    run code, so it is refused unless the caller explicitly trusts it (``allow_pickle=True``).
    path: the file; problem: the message without the advice (for callers that word their own)."""

    def __init__(self, message: str, *, path=None, problem: str | None = None):
        super().__init__(message)
        self.path = path
        self.problem = problem if problem is not None else message


class ResultFolderError(EntitySAMError, ValueError):
    """A folder is not a complete, readable result of `entitysam segment` (missing or incomplete
    manifest, missing or inconsistent files); the message names the folder and the cause."""


class EditError(EntitySAMError, ValueError):
    """An edit operation of a result (hide, merge, split, ...) is malformed or does not apply to
    the current entities; the message names the operation and the cause."""
