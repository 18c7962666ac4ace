"""`corsa demo` (`make demo`): the comparison in small, on the bundled CounterFact sample."""

from __future__ import annotations

from .bench import run_spec, spec_of
from .options import SAMPLE, add_config_options, add_device, add_model, add_quiet, add_report_to, output_path

DEMO_METHODS = "lora,corsa,corsa-lifelong"


def register(sub) -> None:
    d = sub.add_parser("demo", help="compare LoRA, CoRSA and corsa-lifelong over 2 updates on the bundled "
                                     "CounterFact sample",
                       description="`corsa bench` on the 16 bundled CounterFact edits: LoRA, CoRSA and "
                                   "corsa-lifelong, 2 updates of 8, with corsa's defaults; prints the table and "
                                   "where the report and plots are. Rerun to resume.")
    add_model(d)
    d.add_argument("--out", default="runs/demo", type=output_path, help="output folder (default: runs/demo)")
    d.add_argument("--methods", default=DEMO_METHODS, help=f"comma-separated methods (default: {DEMO_METHODS})")
    d.add_argument("--edits", type=int, default=16, help="how many of the 16 bundled edits (default: 16)")
    d.add_argument("--updates", type=int, default=2, help="split them into this many updates (default: 2)")
    add_device(d)
    add_quiet(d)
    add_report_to(d)
    add_config_options(d, skip=("method", "seed"))  # options given go to every method
    d.set_defaults(func=run)


def run(args) -> int:
    return run_spec(spec_of(args, SAMPLE, args.methods))
