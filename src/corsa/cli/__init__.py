"""The `corsa` command line: one module per command, the shared flags in :mod:`corsa.cli.options`.

`corsa --help` and `corsa <command> --help` import neither torch nor transformers; a command
imports what it needs when it runs.
"""

from .main import build_parser, main
from .options import SAMPLE, config_from_args, config_values

__all__ = ["main", "build_parser", "config_from_args", "config_values", "SAMPLE"]
