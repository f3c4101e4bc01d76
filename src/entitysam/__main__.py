"""`python -m entitysam ...` (and `torchrun -m entitysam train ...`): the `entitysam` command."""

import sys

from .cli import command

sys.exit(command())
