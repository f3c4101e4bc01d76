"""The optional tqdm progress bar of segment(), stream() and saving (stderr)."""

from __future__ import annotations

import functools
import sys


@functools.cache
def _bar_class():
    from tqdm import tqdm  # noqa: PLC0415 - optional dependency

    class Bar(tqdm):
        """tqdm, quiet when collected half-built: a Ctrl-C inside its constructor left a bar whose
        close() raised at collection ("Exception ignored in tqdm.__del__" after the one-line error)."""

        def __del__(self):
            if hasattr(self, "pos"):
                super().__del__()

    return Bar


def progress_bar(enabled: bool, total: int | None, desc: str, unit: str = "frame"):
    """A tqdm bar, or None when disabled or tqdm is not installed (an optional dependency)."""
    if not enabled:
        return None
    try:
        bar = _bar_class()
    except ImportError:
        return None
    return bar(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr, leave=True)
