"""Every flag that more than one command takes, defined once.

Training flags are generated from :class:`corsa.config.EditConfig`'s fields and evaluation
flags from :class:`corsa.config.EvalSettings`'s, with their help and defaults, so a default is
written in one place: the dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from ..config import DEFAULT_MODEL, PRESETS, TEMPLATES, EditConfig, EvalSettings
from ..methods import OPTIONS, describe_default

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "counterfact_sample.jsonl"


def output_path(value: str) -> str:
    """An --out value: never empty, which would mean the current folder (and its adapter/)."""
    import os
    import re

    if not value.strip():
        raise argparse.ArgumentTypeError("is empty; name a folder (or file) for the output")
    if re.fullmatch(r"[a-z][a-z0-9_-]*=.*", value) and not os.path.exists(value):
        raise argparse.ArgumentTypeError(f"{value!r} reads as an option (key=value), not a folder; give the folder "
                                         f"right after --out and the option after it")
    return value


def add_model(p, help_extra: str = "", default: str | None = DEFAULT_MODEL, default_text: str | None = None) -> None:
    p.add_argument("--model", default=default,
                   help=f"alias, local folder or hub id{help_extra} (default: {default_text or default})")


def add_adapter(p, help: str, required: bool = False) -> None:
    p.add_argument("--adapter", default=None, required=required, help=help)


def add_edits_file(p, limit: bool = True) -> None:
    """--edits FILE (edit, eval; bench's edit file is --data, its --edits a count) and --limit N."""
    p.add_argument("--edits", required=True, help="edit file (CounterFact, zsRE, MQuAKE, JSON/JSONL)")
    if limit:
        p.add_argument("--limit", type=int, default=None, help="use only the first N edits")


def add_device(p) -> None:
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: auto)")


def add_config_file(p) -> None:
    p.add_argument("--config", metavar="FILE.yaml",
                   help="take the flags from a YAML file (keys are flag names: lr: 1e-3); flags and key=value "
                        "given after it override the file (configs/ holds the files behind the README's tables)")


def add_quiet(p) -> None:
    p.add_argument("--quiet", action="store_true",
                   help="no progress output (bars are drawn on a terminal only, so a log gets no redraws)")


def progress(args) -> bool:
    """Progress output unless --quiet: bars on a terminal (distributed.show_bar), one-line messages anywhere."""
    return not getattr(args, "quiet", False)


def add_report_to(p) -> None:
    from ..tracking import REPORTERS

    p.add_argument("--report-to", default="none", choices=REPORTERS,
                   help="also log every step to TensorBoard: event files in OUT/tensorboard (a bench: one folder "
                        "per method), for `tensorboard --logdir OUT/tensorboard`; needs tensorboardX "
                        "(default: none; log.jsonl is always written)")


def add_skip_invalid(p) -> None:
    p.add_argument("--skip-invalid", action="store_true",
                   help="drop records that break the rules (conflicting or empty targets) instead of failing")


def add_template(p) -> None:
    """--template for the commands without training options (ask, eval); theirs is EditConfig.template."""
    f = next(f for f in dataclasses.fields(EditConfig) if f.name == "template")
    p.add_argument("--template", default=f.default, choices=TEMPLATES,
                   help=f"prompt format: {f.metadata['help']} (default: {f.default})")


def _base_type(hint):
    args = [t for t in typing.get_args(hint) if t is not type(None)]
    return args[0] if args else hint


def add_config_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One --flag per EditConfig field, with its help text and default (one source of truth)."""
    hints = typing.get_type_hints(EditConfig)
    group = parser.add_argument_group("training options (defaults sized for the bundled model; "
                                      "--preset release for the authors' release)")
    group.add_argument("--preset", default=None, choices=sorted(PRESETS),
                       help="start from a named set of options (release: lr 2e-4, batch 8 × 4, 10 fixed epochs); "
                            "flags given beside it win")
    for f in dataclasses.fields(EditConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        # a method option's default is its row's (corsa.methods), shown from there
        default = describe_default(f.name) if f.name in OPTIONS else f.default if f.default is not None else "none"
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        hint = hints[f.name]
        base = _base_type(hint)
        if base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif "tuple" in str(hint):  # comma-separated lists (EditConfig splits them)
            group.add_argument(flag, default=None, help=help_text + "; comma-separated", dest=f.name)
        else:
            group.add_argument(flag, type=base, default=None, help=help_text, dest=f.name)


def config_values(args, skip: tuple[str, ...] = ()) -> dict:
    """The training options given on the command line, on top of --preset's."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(EditConfig)
             if f.name not in skip and getattr(args, f.name, None) is not None}
    return {**PRESETS.get(getattr(args, "preset", None) or "", {}), **given}


def config_from_args(args) -> EditConfig:
    return EditConfig(**config_values(args))


def add_eval_options(p, skip: tuple[str, ...] = (), aliases: dict[str, str] | None = None) -> None:
    """One flag per EvalSettings field (their `flag` metadata), and the MMLU options.

    aliases: field → an older flag name still accepted (not shown in the help).
    """
    g = p.add_argument_group("evaluation options")
    hints = typing.get_type_hints(EvalSettings)
    for f in dataclasses.fields(EvalSettings):
        if f.name in skip:
            continue
        g.add_argument(f.metadata["flag"], dest=f"eval_{f.name}", type=_base_type(hints[f.name]), default=None,
                       help=f"{f.metadata['help']} (default: {f.default})")
        if aliases and f.name in aliases:
            g.add_argument(aliases[f.name], dest=f"eval_{f.name}", type=_base_type(hints[f.name]), default=None,
                           help=argparse.SUPPRESS)
    g.add_argument("--mmlu", type=int, default=0, metavar="N",
                   help="also measure zero-shot MMLU accuracy on N seeded questions, before and after (default: off)")
    g.add_argument("--mmlu-file", default=None, help="MMLU jsonl (default: $CORSA_MMLU or ../shared/data/mmlu)")
    g.add_argument("--mmlu-seed", type=int, default=0, help="seed of the MMLU subset (default: 0)")


def eval_settings(args) -> EvalSettings:
    """The EvalSettings the flags give; a field whose flag was not given keeps its default.

    Where the command has no --max-new-tokens of its own (bench), the training option's is used.
    """
    given = {f.name: getattr(args, f"eval_{f.name}") for f in dataclasses.fields(EvalSettings)
             if getattr(args, f"eval_{f.name}", None) is not None}
    if "max_new_tokens" not in given and getattr(args, "max_new_tokens", None) is not None:
        given["max_new_tokens"] = args.max_new_tokens
    return EvalSettings(**given)
