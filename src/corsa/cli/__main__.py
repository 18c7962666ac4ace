"""`python -m corsa.cli …`, the form launchers take (torchrun -m corsa.cli edit …)."""

import sys

from .main import main

sys.exit(main())
