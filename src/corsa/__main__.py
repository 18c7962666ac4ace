"""`python -m corsa` runs the same command line as `corsa`."""

import sys

from corsa.cli import main

if __name__ == "__main__":
    sys.exit(main())
