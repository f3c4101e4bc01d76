"""The optional tqdm progress bar of segment(), stream() and saving (stderr)."""

from __future__ import annotations

import sys


def progress_bar(enabled: bool, total: int | None, desc: str, unit: str = "frame"):
    """A tqdm bar, or None when disabled or tqdm is not installed (an optional dependency)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr, leave=True)
