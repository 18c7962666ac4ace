"""`corsa bench`: the multi-update comparison of methods (method.md §6), resumable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..comparison.spec import BenchSpec
from .options import (add_config_file, add_config_options, add_device, add_eval_options, add_model, add_quiet,
                      add_report_to, add_skip_invalid, config_values, eval_settings, output_path, progress)

# the spec's defaults, written once (BenchSpec)
_DEFAULT = {f.name: f.default for f in dataclasses.fields(BenchSpec)}
DEFAULT_METHODS = ",".join(_DEFAULT["methods"])
# API updates, in updates: each brings 3-11 tasks whose programs are sampled and run, and whose
# reference solutions (hundreds of tokens) are trained: on 2 CPU cores a bench of 4 takes about an hour
CODE_EDITS, CODE_UPDATES = 4, 2


def register(sub) -> None:
    b = sub.add_parser("bench", help="compare methods on the same edits over several updates (method.md §6)",
                       description="Train every method update after update on one adapter, evaluate after each "
                                   "update, and write results.json, results.csv, report.md and plots into --out. "
                                   "Rerunning the same command resumes, skipping finished (method, update) pairs.")
    add_model(b)
    add_config_file(b)
    b.add_argument("--data", required=True, help="edit file (CounterFact, zsRE, MQuAKE, JSON/JSONL), or a CodeUpdateArena "
                   "file (API updates: --edits counts API updates, programs are run in the sandbox, Pass@k)")
    b.add_argument("--methods", "--method", dest="methods", default=DEFAULT_METHODS,
                   help=f"comma-separated methods (default: {DEFAULT_METHODS})")
    b.add_argument("--edits", type=int, default=None,
                   help=f"how many edits, chosen with --seed (default: {_DEFAULT['n_edits']}); for a CodeUpdateArena "
                        f"file, how many API updates (default: {CODE_EDITS})")
    b.add_argument("--updates", type=int, default=None,
                   help=f"split the edits into this many updates (default: {_DEFAULT['n_updates']}; "
                        f"{CODE_UPDATES} for a CodeUpdateArena file)")
    b.add_argument("--seed", type=int, default=_DEFAULT["seed"],
                   help=f"chooses the edits and seeds every method's training (default: {_DEFAULT['seed']})")
    b.add_argument("--out", required=True, type=output_path, help="output folder (rerun the same command to resume)")
    b.add_argument("--set", action="append", default=[], metavar="METHOD.OPTION=VALUE",
                   help="a training option for one method, e.g. corsa.rho=0.1 (repeatable); a plain flag such "
                        "as --lr sets it for every method, and --rho/--beta/--combine for those that use them")
    b.add_argument("--earlier-sample", type=int, default=_DEFAULT["earlier_sample"], metavar="N",
                   help="after each update but the last, measure the earlier updates' edits on a seeded sample "
                        "of N (the update's own edits are all measured, and every edit after the last update): "
                        "a long stream's bench then grows linearly, not quadratically (default: 0, all of them)")
    add_skip_invalid(b)
    add_device(b)
    add_quiet(b)
    add_report_to(b)
    add_config_options(b, skip=("method", "seed"))  # --methods and --seed above are the bench's own
    add_eval_options(b, skip=("max_new_tokens",))   # one --max-new-tokens: the training option's
    b.set_defaults(func=run)


def spec_of(args, data, methods: str, sets=()):
    """The BenchSpec of parsed bench-like arguments (bench's, or demo's with its own data)."""
    from ..comparison import BenchSpec, parse_sets

    return BenchSpec(model=args.model, data=str(data), out=Path(args.out),
                     methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                     n_edits=args.edits, n_updates=args.updates, seed=getattr(args, "seed", 0),
                     train=config_values(args, skip=("method", "seed")), sets=parse_sets(list(sets)),
                     eval=eval_settings(args), mmlu=getattr(args, "mmlu", 0),
                     mmlu_file=getattr(args, "mmlu_file", None), mmlu_seed=getattr(args, "mmlu_seed", 0),
                     skip_invalid=getattr(args, "skip_invalid", False),
                     earlier_sample=getattr(args, "earlier_sample", 0), device=getattr(args, "device", None),
                     progress=progress(args), report_to=getattr(args, "report_to", "none"))


def run(args) -> int:
    from ..code import is_arena

    code = is_arena(args.data)
    if args.edits is None:
        args.edits = CODE_EDITS if code else _DEFAULT["n_edits"]
    if args.updates is None:
        args.updates = CODE_UPDATES if code else _DEFAULT["n_updates"]
    return run_spec(spec_of(args, args.data, args.methods, args.set))


def run_spec(spec) -> int:
    """Run a bench (facts, or API updates for a CodeUpdateArena file) and print its table and files."""
    from .. import comparison
    from .. import distributed as dist
    from ..comparison.harness import domain_of

    results = comparison.run_bench(spec)
    if dist.is_main():  # under a launcher the main worker prints the summary
        domain_of(spec).summary(results)
    return 0
