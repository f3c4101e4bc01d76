"""Export: ytvis (see entitysam.review.export)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_ytvis(view: Any, out: Path, *, overwrite: bool = False, **options: Any) -> Path:
    """Write `view` to `out` atomically; returns `out`."""
    raise NotImplementedError
