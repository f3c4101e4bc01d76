"""Errors whose message is meant for the user (the command line prints it and exits non-zero)."""

from __future__ import annotations


class EntitySAMError(Exception):
    """Base class: the message names the file (or option) and the cause."""


class SourceError(EntitySAMError, ValueError):
    """An input video, frame folder or image is missing, unreadable, empty or inconsistent."""


class OutputError(EntitySAMError):
    """The output folder cannot be written, or already holds results."""


class ModelNotAvailableError(EntitySAMError):
    """A published checkpoint could not be found locally nor downloaded."""
