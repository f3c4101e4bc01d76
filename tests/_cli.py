"""The command line run as a user runs it, in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args, timeout=120):
    """`python -m entitysam segment ...` in a subprocess: a hang fails the test instead of blocking it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "entitysam", "segment", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)
