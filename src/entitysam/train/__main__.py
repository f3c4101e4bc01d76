"""`python -m entitysam.train ...` (also under torchrun: `torchrun --nproc_per_node N -m entitysam.train ...`)."""

import sys

from ..errors import Terminated
from .cli import main

try:
    code = main()
except KeyboardInterrupt as stop:  # a Ctrl-C here printed a traceback; `entitysam train` says this (entitysam.cli)
    print("error: terminated" if isinstance(stop, Terminated) else "error: interrupted", file=sys.stderr)
    code = 130
sys.exit(code)
