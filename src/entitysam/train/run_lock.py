"""One training run per output_dir: rank 0 holds the lock file ``output_dir/.training-run.lock``
while it trains. Two runs given one output_dir (a job launched again while it still ran) wrote
their config.json, log.txt, checkpoints and last_checkpoint over each other's."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OutputError
from ..io.output_lock import OutputLock, OutputLockedError

__all__ = ["RunLock"]

LOCK_NAME = "training-run"  # (the lock file is in output_dir: its parent may not be writable)


class RunLock:
    """The lock of `output_dir`, taken by `take` (again after `release`), released by `release`;
    the OS releases it when the process ends, however it ends."""

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)
        self._lock: OutputLock | None = None

    def take(self) -> None:
        """OutputError when another run holds it, naming that run's process."""
        if self._lock is not None:
            return
        try:
            self._lock = OutputLock.acquire(self.output_dir / LOCK_NAME)
        except OutputLockedError as err:
            raise OutputError(f"output_dir {self.output_dir} is in use by another run ({err.holder}): let it finish "
                              "first, or give this run another output_dir") from None

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()
