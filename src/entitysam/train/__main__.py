"""`python -m entitysam.train ...` (also under torchrun: `torchrun --nproc_per_node N -m entitysam.train ...`)."""

import sys

from .cli import main

sys.exit(main())
