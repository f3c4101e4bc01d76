"""``manifest.json``: the record that marks a result folder complete and written by this tool."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..regular_file import read_regular_text

__all__ = ["MANIFEST", "WRITER", "read_manifest", "manifest_data", "written_by_entitysam"]

MANIFEST = "manifest.json"
WRITER = "entitysam"  # manifest "writer": marks folders this tool wrote (only those --overwrite replaces)


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a complete output folder, or None (missing, unreadable, incomplete)."""
    data = manifest_data(directory)
    return data if data is not None and data.get("complete") is True else None


def manifest_data(directory: str | os.PathLike) -> dict[str, Any] | None:
    try:  # (opened without waiting: a named pipe there would block the read for ever)
        text = read_regular_text(Path(directory) / MANIFEST)
        data = None if text is None else json.loads(text)
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def written_by_entitysam(directory: str | os.PathLike) -> bool:
    """Whether `directory` is a real folder whose manifest.json says this tool wrote it (complete or
    not: an interrupted online result is one). The only kind of folder --overwrite replaces."""
    directory = Path(directory)
    if directory.is_symlink() or not directory.is_dir():
        return False
    data = manifest_data(directory)
    if data is None:
        return False
    return data.get("writer") == WRITER or str(data.get("format", "")).startswith("entitysam-")
