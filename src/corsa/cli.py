"""The `corsa` command line. Options for training are generated from EditConfig's fields."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import typing
from pathlib import Path

from .config import EditConfig
from .errors import CorsaError

SAMPLE = Path(__file__).parent / "data" / "counterfact_sample.jsonl"


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One --flag per EditConfig field, with its help text and default (one source of truth)."""
    from .config import PRESETS
    from .methods import OPTIONS

    hints = typing.get_type_hints(EditConfig)
    group = parser.add_argument_group("training options (defaults sized for the bundled model; "
                                      "--preset release for the authors' release)")
    group.add_argument("--preset", default=None, choices=sorted(PRESETS),
                       help="start from a named set of options (release: lr 2e-4, batch 8 × 4, 10 fixed epochs); "
                            "flags given beside it win")
    for f in dataclasses.fields(EditConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not None else "method default" if f.name in OPTIONS else "none"
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        hint = hints[f.name]
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint) if typing.get_args(hint) else hint
        if base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif "tuple" in str(hint):  # comma-separated lists (EditConfig splits them)
            group.add_argument(flag, default=None, help=help_text + "; comma-separated", dest=f.name)
        else:
            group.add_argument(flag, type=base, default=None, help=help_text, dest=f.name)


def config_values(args, skip: tuple[str, ...] = ()) -> dict:
    """The training options given on the command line, on top of --preset's."""
    from .config import PRESETS

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(EditConfig)
             if f.name not in skip and getattr(args, f.name, None) is not None}
    return {**PRESETS.get(getattr(args, "preset", None) or "", {}), **given}


def config_from_args(args) -> EditConfig:
    return EditConfig(**config_values(args))


def cmd_prepare_model(args) -> int:
    from .models import prepare_alias

    path = prepare_alias(args.name)
    print(f"{args.name}: ready at {path}")
    return 0


def show_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def cmd_edit(args) -> int:
    from .api import Editor, as_edits
    from .metrics import contains
    from .updates import run_updates, settings_of

    cfg = config_from_args(args)
    out = Path(args.out)
    edits = as_edits(args.edits, limit=args.limit, on_invalid="skip" if args.skip_invalid else "error")

    def make_editor(adapter=None):
        return Editor(args.model, adapter=adapter or args.adapter, config=cfg, progress=not args.quiet,
                      trust_remote_code=args.trust_remote_code)

    t0 = time.perf_counter()
    if args.updates == 1:
        editor = make_editor()
        before = editor.ask([e.prompt for e in edits]) if args.check else None
        record = editor.update(edits, out=out)
        edits = record.edits
        print(f"trained {cfg.method} on {len(edits)} edits: {record.result.steps} steps, "
              f"{record.result.epochs} epochs{' (stopped early)' if record.result.stopped_early else ''}, "
              f"{time.perf_counter() - t0:.1f} s")
    else:
        settings = settings_of(args.model, args.adapter, cfg, edits, args.updates)
        editor, _ = run_updates(make_editor, edits, args.updates, out, settings)
        before = editor.ask([e.prompt for e in edits], base=args.adapter is None) if args.check else None
        print(f"trained {cfg.method} on {len(edits)} edits in {args.updates} updates, {time.perf_counter() - t0:.1f} s")
    if args.check:
        after = editor.ask([e.prompt for e in edits])
        rows = [[e.id, e.target_new, b[:40], a[:40], "yes" if contains(a, e.target_new) else "no"]
                for e, b, a in zip(edits, before, after)]
        print(show_table(rows, ["edit", "new answer", "before", "after", "took"]))
        took = sum(contains(a, e.target_new) for e, a in zip(edits, after))
        took_before = sum(contains(b, e.target_new) for e, b in zip(edits, before))
        print(f"greedy answer contains the new answer: {took}/{len(edits)} after, {took_before}/{len(edits)} before")
    print(f"adapter and run record: {out}")
    return 0


def cmd_ask(args) -> int:
    from .api import ask

    for prompt, answer in zip(args.prompt, ask(args.prompt, model=args.model, adapter=args.adapter,
                                                 max_new_tokens=args.max_new_tokens, template=args.template)):
        print(f"{prompt} → {answer}" if len(args.prompt) > 1 else answer)
    return 0


def cmd_demo(args) -> int:
    """The comparison of the paper in small: LoRA against CoRSA on the bundled CounterFact sample."""
    argv = ["bench", "--model", args.model, "--data", str(SAMPLE), "--methods", args.methods,
            "--edits", str(args.edits), "--updates", str(args.updates), "--out", args.out]
    if args.quiet:
        argv.append("--quiet")
    if args.preset:
        argv += ["--preset", args.preset]
    for f in dataclasses.fields(EditConfig):  # training options given to the demo go to every method
        value = getattr(args, f.name, None)
        if value is not None and f.name not in ("method", "seed"):
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, tuple):
                value = ",".join(value) or "none"
            argv += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    bench = build_parser().parse_args(argv)
    return bench.func(bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="corsa", description="Knowledge editing with CoRSA and its baselines.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("edit", help="train the adapter on a file of edits (one update)")
    e.add_argument("--model", default="smollm2-135m", help="alias, local folder or hub id (default: smollm2-135m)")
    e.add_argument("--edits", required=True, help="edit file (CounterFact, zsRE, MQuAKE, JSON/JSONL)")
    e.add_argument("--adapter", default=None, help="continue training this adapter (a run or adapter folder)")
    e.add_argument("--out", required=True, help="output folder for the adapter and the run record")
    e.add_argument("--limit", type=int, default=None, help="use only the first N edits")
    e.add_argument("--updates", type=int, default=1,
                   help="split the edits (in file order) into K consecutive updates of one adapter, saved "
                        "in OUT/update-k; a rerun of the same command resumes after the last complete one")
    e.add_argument("--skip-invalid", action="store_true",
                   help="drop records that break the rules (conflicting or empty targets) instead of failing")
    e.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="print each edit's greedy answer before and after (default: on)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.add_argument("--trust-remote-code", action="store_true",
                   help="allow a hub model to run its own Python code (off: such code is never executed)")
    add_config_options(e)
    e.set_defaults(func=cmd_edit)

    a = sub.add_parser("ask", help="greedy answers of the model, with an adapter if given")
    a.add_argument("prompt", nargs="+")
    a.add_argument("--model", default="smollm2-135m")
    a.add_argument("--adapter", default=None)
    a.add_argument("--max-new-tokens", type=int, default=32)
    a.add_argument("--template", default="auto", choices=["auto", "chat", "raw"])
    a.set_defaults(func=cmd_ask)

    m = sub.add_parser("prepare-model", help="convert a bundled model alias once into the cache")
    m.add_argument("name", nargs="?", default="smollm2-135m")
    m.set_defaults(func=cmd_prepare_model)

    d = sub.add_parser("demo", help="compare LoRA, CoRSA and corsa-lifelong over 2 updates on the bundled "
                                     "CounterFact sample",
                       description="`corsa bench` on the 16 bundled CounterFact edits: LoRA, CoRSA and "
                                   "corsa-lifelong, 2 updates of 8; prints the table and where the report and plots "
                                   "are. Rerun to resume.")
    d.add_argument("--model", default="smollm2-135m")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--methods", default="lora,corsa,corsa-lifelong")
    d.add_argument("--edits", type=int, default=16)
    d.add_argument("--updates", type=int, default=2)
    d.add_argument("--quiet", action="store_true")
    add_config_options(d)
    d.set_defaults(func=cmd_demo)

    from . import commands  # eval, bench and later commands register themselves here

    commands.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if int(os.environ.get("RANK", "0")) != 0:
        # under torchrun / accelerate launch only the main process speaks; errors still reach stderr
        sys.stdout = open(os.devnull, "w")
    try:
        return args.func(args)
    except CorsaError as e:
        if args.debug:
            raise
        print(f"corsa: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("corsa: interrupted; completed outputs were saved. Rerun the same command to resume.", file=sys.stderr)
        return 130
    finally:
        from . import distributed as dist

        if dist.launched():
            dist.shutdown()


if __name__ == "__main__":
    sys.exit(main())
