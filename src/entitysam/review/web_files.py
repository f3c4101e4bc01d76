"""What the viewer serves, and the names its server and routes share. Which files it may serve: only regular files inside one root folder (the result folder,
or the package's static folder), whatever the URL says (``..``, encoded ``%2e%2e``, absolute paths,
backslashes, NUL bytes, symlinks that lead outside)."""

from __future__ import annotations

import mimetypes
from pathlib import Path

__all__ = ["STATIC_DIR", "TOKEN_HEADER", "VERSION_HEADER", "IMMUTABLE", "safe_file", "media_type"]

STATIC_DIR = Path(__file__).with_name("static")  # the front end: plain JS/CSS/HTML
TOKEN_HEADER = "X-EntitySAM-Token"  # where POST requests carry the run's token (or ?token=)
VERSION_HEADER = "X-EntitySAM-Version"  # the edit version a POST is meant for (the page's state.version)
# frames and original id maps never change in a run. private: only the browser keeps them, never a
# shared cache (a proxy), which would give them to requests without the token; a viewer serves one
# person's browser, so private costs nothing on loopback either
IMMUTABLE = "private, max-age=31536000, immutable"

_EXTRA_TYPES = {".js": "text/javascript", ".css": "text/css", ".json": "application/json",
                ".png": "image/png", ".jpg": "image/jpeg", ".mp4": "video/mp4", ".html": "text/html",
                ".svg": "image/svg+xml", ".npz": "application/octet-stream", ".jsonl": "application/json"}


def safe_file(root: Path, relative: str) -> Path | None:
    """The regular file `relative` names inside `root`, or None when it is not one.

    The URL path is already percent-decoded by the server, so ``%2e%2e`` arrives as ``..``; each
    part is checked before the file system is asked anything, then the fully resolved path (all
    symlinks followed) must still lie inside the resolved root.
    """
    if not relative or "\x00" in relative or "\\" in relative:
        return None
    parts = relative.split("/")
    if relative.startswith("/") or any(part in ("", ".", "..") for part in parts) or ":" in parts[0]:
        return None
    real_root = root.resolve()
    try:
        candidate = (real_root / Path(*parts)).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop, a name the OS refuses
        return None
    if not candidate.is_relative_to(real_root) or not candidate.is_file():
        return None
    return candidate


def media_type(path: Path) -> str:
    """The Content-Type for a served file (a fixed table first: the system's may be missing)."""
    return _EXTRA_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
