"""``python -m auxilia`` (what ``torchrun -m auxilia train ...`` starts on every rank)."""

import sys

from auxilia.cli import main

sys.exit(main())
