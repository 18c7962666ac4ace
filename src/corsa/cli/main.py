"""The `corsa` parser and dispatch: each command is a module of this package with `register(sub)`."""

from __future__ import annotations

import argparse
import os
import sys

from . import ask, bench, config_file, demo, edit, eval, export, prepare_model
from ..text import printable

COMMANDS = (edit, ask, eval, export, bench, demo, prepare_model)  # in the order `corsa --help` lists them
WITH_CONFIG = ("edit", "eval", "bench")  # the commands that take --config FILE.yaml and key=value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("corsa-edit")
    except PackageNotFoundError:
        from .. import __version__

        return __version__


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="corsa", description="Knowledge editing with CoRSA and its baselines.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    p.add_argument("--verbose", action="store_true",
                   help="let the libraries speak: transformers' loading bars and warnings (off by default)")
    p.add_argument("--version", action="version", version=f"corsa {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    for parser in sub.choices.values():
        parser.allow_abbrev = False  # a flag is spelled out: `demo --method` is not a short `--methods`
    return p


def quiet_libraries() -> None:
    """Silence what transformers, PEFT and torch print on every command (loading bars, deprecation
    notices): corsa's own messages and errors say what matters. `corsa --verbose` keeps them."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is first imported
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the "Loading weights" bars follow this too
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|peft|torch|accelerate)(\.|$)")
    if "transformers" in sys.modules:  # imported already (a Python session calling main)
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    from ..errors import CorsaError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = config_file.expand(argv, {name: sub for name, sub in _commands(parser).items() if name in WITH_CONFIG})
    except CorsaError as e:
        print(f"corsa: error: {printable(e, keep_newlines=True)}", file=sys.stderr)
        return e.exit_code
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    if int(os.environ.get("RANK", "0")) != 0:
        # under torchrun / accelerate launch only the main process speaks; errors still reach stderr
        sys.stdout = open(os.devnull, "w")
    finished = False
    try:
        code = args.func(args)
        finished = True
        return code
    except CorsaError as e:
        if args.debug:
            raise
        print(f"corsa: error: {printable(e, keep_newlines=True)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("corsa: interrupted; completed outputs were saved. Rerun the same command to resume.", file=sys.stderr)
        return 130
    finally:
        if "torch" in sys.modules:  # a command that never loaded torch launched nothing to shut down
            from .. import distributed as dist

            if dist.launched():
                dist.shutdown(wait=finished)  # after an error the other workers may never arrive
