"""Sub-commands beyond edit/ask/demo: `corsa eval` (measure edits) and `corsa bench` (compare methods)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import ConfigError


def register(sub) -> None:
    """Add every extra sub-command to the `corsa` parser."""
    from .cli import add_config_options

    e = sub.add_parser("eval", help="measure edits on a model, with an adapter if given (method.md §5)",
                       description="Reliability, generality, locality, portability (generated) and efficacy, "
                                   "margins (teacher-forced) of a file of edits, beside the unedited model's.")
    e.add_argument("--model", default="smollm2-135m", help="alias, local folder or hub id (default: smollm2-135m)")
    e.add_argument("--adapter", default=None, help="the edited adapter (a run or adapter folder); none: the base model")
    e.add_argument("--edits", required=True, help="edit file (CounterFact, zsRE, MQuAKE, JSON/JSONL)")
    e.add_argument("--out", required=True, help="where to write the metrics (a .json file)")
    e.add_argument("--limit", type=int, default=None, help="use only the first N edits")
    e.add_argument("--skip-invalid", action="store_true", help="drop records that break the rules instead of failing")
    e.add_argument("--base", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate the unedited model, side by side (default: on)")
    e.add_argument("--template", default="auto", choices=["auto", "chat", "raw"])
    e.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.add_argument("--generator", default="hf", choices=["hf", "vllm"],
                   help="what generates the answers: hf (transformers, default) or vllm (GPU; the vllm extra)")
    e.add_argument("--vllm-gpu-memory", type=float, default=None, metavar="FRACTION",
                   help="with --generator vllm: the fraction of the GPU vLLM may take (default: what is free "
                        "after corsa's own model, less a margin)")
    _eval_options(e, batch_flag="--batch-size")
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", conflict_handler="resolve",
                       help="compare methods on the same edits over several updates (method.md §6)",
                       description="Train every method update after update on one adapter, evaluate after each "
                                   "update, and write results.json, results.csv, report.md and plots into --out. "
                                   "Rerunning the same command resumes, skipping finished (method, update) pairs.")
    add_config_options(b)  # training options for every method; --seed and --methods below replace theirs
    b.add_argument("--model", default="smollm2-135m", help="alias, local folder or hub id (default: smollm2-135m)")
    b.add_argument("--data", required=True, help="edit file (CounterFact, zsRE, MQuAKE, JSON/JSONL)")
    b.add_argument("--methods", "--method", dest="methods", default="lora,sam,dpo,corsa",
                   help="comma-separated methods (default: lora,sam,dpo,corsa)")
    b.add_argument("--edits", type=int, default=60, help="how many edits, chosen with --seed (default: 60)")
    b.add_argument("--updates", type=int, default=3, help="split the edits into this many updates (default: 3)")
    b.add_argument("--seed", type=int, default=0,
                   help="chooses the edits and seeds every method's training (default: 0)")
    b.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    b.add_argument("--set", action="append", default=[], metavar="METHOD.OPTION=VALUE",
                   help="a training option for one method, e.g. corsa.rho=0.1 (repeatable); a plain flag such "
                        "as --lr sets it for every method, and --rho/--beta/--combine for those that use them")
    b.add_argument("--skip-invalid", action="store_true", help="drop records that break the rules instead of failing")
    b.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    b.add_argument("--quiet", action="store_true", help="no progress output")
    _eval_options(b, batch_flag="--eval-batch-size")
    b.set_defaults(func=cmd_bench)


def _eval_options(p, batch_flag: str) -> None:
    g = p.add_argument_group("evaluation options")
    if batch_flag == "--batch-size":  # bench takes --max-new-tokens from the training options
        g.add_argument("--max-new-tokens", type=int, default=None,
                       help="tokens generated per answer (default: EditConfig's, 16)")
    g.add_argument(batch_flag, dest="eval_batch_size", type=int, default=16,
                   help="prompts per generation / scoring batch (default: 16)")
    g.add_argument("--sample", type=int, default=0,
                   help="draw N sampled answers per prompt instead of the greedy one (default: 0, greedy)")
    g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default: 0.7)")
    g.add_argument("--sample-seed", type=int, default=0, help="seed for sampling (default: 0)")
    g.add_argument("--mmlu", type=int, default=0, metavar="N",
                   help="also measure zero-shot MMLU accuracy on N seeded questions, before and after (default: off)")
    g.add_argument("--mmlu-file", default=None, help="MMLU jsonl (default: $CORSA_MMLU or ../shared/data/mmlu)")
    g.add_argument("--mmlu-seed", type=int, default=0, help="seed of the MMLU subset (default: 0)")


def eval_settings(args):
    from .evaluate import EvalSettings

    given = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    return EvalSettings(sample=args.sample, temperature=args.temperature, seed=args.sample_seed,
                        batch_size=args.eval_batch_size, **given)


# ---------------------------------------------------------------------------------------------


def _vllm_generator(args, editor):
    """vLLM over the same base model folder and the same adapter the editor loaded."""
    from .adapter import find_adapter_dir
    from .models import resolve_model
    from .vllm_backend import VLLMGenerator

    adapter_dir = find_adapter_dir(args.adapter) if args.adapter is not None else None
    options = {} if args.vllm_gpu_memory is None else {"gpu_memory_utilization": args.vllm_gpu_memory}
    return VLLMGenerator(resolve_model(args.model), editor.fmt, adapter_dir, **options)


def cmd_eval(args) -> int:
    from . import distributed as dist
    from .api import Editor, as_edits
    from .evaluate import HEADLINE, evaluate
    from .io import atomic_write_json, library_versions

    settings = eval_settings(args)
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the path of a .json file to write")
    if args.generator == "vllm" and dist.launched():  # said before minutes of loading, not after
        raise ConfigError("--generator vllm runs in one process (vLLM splits the work itself); drop the launcher")
    started = time.perf_counter()
    edits = as_edits(args.edits, limit=args.limit, on_invalid="skip" if args.skip_invalid else "error")
    if not edits:
        raise ConfigError(f"{args.edits} holds no edits")
    editor = Editor(args.model, adapter=args.adapter, template=args.template, device=args.device, progress=False)
    edits = _fill_old_from_base(editor, edits, settings.max_new_tokens)
    questions = None
    if args.mmlu:
        from . import mmlu

        questions = mmlu.subset(mmlu.load(args.mmlu_file), args.mmlu, args.mmlu_seed)
    progress = not args.quiet
    generator = _vllm_generator(args, editor) if args.generator == "vllm" else None
    base = None
    if args.adapter is None or args.base:
        base = evaluate(editor, edits, base=True, mmlu=questions, settings=settings, progress=progress,
                        generator=generator)
    edited = None
    if args.adapter is not None:
        edited = evaluate(editor, edits, base_answers=base["base_answers"] if base else None, mmlu=questions,
                          settings=settings, progress=progress, generator=generator)
    main = edited or base
    result = {
        "model": args.model, "adapter": args.adapter, "edits": args.edits, "n_edits": len(edits),
        "protocol": main["protocol"], "metrics": main["metrics"], "counts": main["counts"], "mmlu": main["mmlu"],
        "base": None if base is None or edited is None else
        {"metrics": base["metrics"], "mmlu": base["mmlu"], "records": base["records"]},
        "records": main["records"], "seconds": round(time.perf_counter() - started, 3),
        "versions": library_versions(),
    }
    dist.on_main(atomic_write_json, out, result)  # under a launcher: the main worker writes, and prints
    if not dist.is_main():
        return 0
    columns = [m for m in (base, edited) if m is not None]
    rows = [[short, key.split("/")[0].replace("_", "-")] + [_fmt(m["metrics"].get(key), key) for m in columns]
            for short, key in HEADLINE.items() if key in main["metrics"]]
    from .cli import show_table

    print(show_table(rows, ["metric", "protocol"] + ["unedited"] * (base is not None) + ["edited"] * (edited is not None)))
    c = main["counts"]
    print(f"{c['edits']} edits, {c['paraphrases']} paraphrases, {c['locality_probes']} locality probes, "
          f"{c['portability_questions']} multi-hop questions; generated = {main['protocol']['generated']['decoding']}, "
          f"up to {settings.max_new_tokens} new tokens; {result['seconds']:.0f} s")
    print(f"metrics and per-edit answers: {out}")
    return 0


def _fill_old_from_base(editor, edits, max_new_tokens):
    """Where y⁻ is not given, the unedited model's short answer, as training took it (corsa.old_answers)."""
    from .old_answers import fill

    return fill(editor.model, editor.fmt, edits, max_new_tokens)


def _fmt(value, key: str) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if "margin" in key else f"{100 * value:.1f}%"


def cmd_bench(args) -> int:
    from .bench import BenchSpec, parse_sets, run_bench
    from .report import text_table

    from .cli import config_values

    train = config_values(args, skip=("method", "seed"))
    spec = BenchSpec(model=args.model, data=args.data, out=Path(args.out),
                     methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                     n_edits=args.edits, n_updates=args.updates, seed=args.seed, train=train,
                     sets=parse_sets(args.set), eval=eval_settings(args), mmlu=args.mmlu,
                     mmlu_file=args.mmlu_file, mmlu_seed=args.mmlu_seed, skip_invalid=args.skip_invalid,
                     device=args.device, progress=not args.quiet)
    from . import distributed as dist

    results = run_bench(spec)
    if not dist.is_main():  # under a launcher the main worker prints the summary
        return 0
    out = Path(args.out)
    print(text_table(results))
    print(f"{results['n_edits']} edits in {results['n_updates']} updates; reliability, generality, locality: "
          f"generated ({results['protocol']['generated']['decoding']}); efficacy, margin: teacher-forced; "
          f"figures in %, margin in nats", file=sys.stdout)
    print(f"report: {out / 'report.md'}")
    print(f"results: {out / 'results.json'}, {out / 'results.csv'}")
    print("plots: " + ", ".join(str(out / p) for p in results["files"]["plots"]))
    return 0
