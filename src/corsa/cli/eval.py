"""`corsa eval`: every metric of method.md §5 for a file of edits, beside the unedited model's."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import ConfigError, refuse_given
from ..ownership import check_not_inside
from ..publish import check_writable
from ..scope import MODES
from .options import (add_adapter, add_config_file, add_device, add_edits_file, add_eval_options, add_model, add_quiet,
                      add_skip_invalid, add_template, eval_settings, output_path, progress)
from ..text import fmt_metric, show_table


def register(sub) -> None:
    e = sub.add_parser("eval", help="measure edits on a model, with an adapter if given (method.md §5)",
                       description="Reliability, generality, locality, portability (generated) and efficacy, "
                                   "margins (teacher-forced) of a file of edits, beside the unedited model's.")
    add_model(e)
    add_config_file(e)
    add_adapter(e, "the edited adapter (a run or adapter folder); none: the base model")
    add_edits_file(e)
    e.add_argument("--out", required=True, type=output_path, help="where to write the metrics (a .json file)")
    add_skip_invalid(e)
    e.add_argument("--base", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate the unedited model, side by side (default: on)")
    add_template(e)
    e.add_argument("--scope", default=None, choices=MODES,
                   help="who answers: the scope the adapter was saved with (default), all (the adapter "
                        "everywhere) or subject (only prompts that name an edited subject)")
    add_device(e)
    add_quiet(e)
    e.add_argument("--generator", default="hf", choices=["hf", "vllm"],
                   help="what generates the answers: hf (transformers, default) or vllm (GPU; the vllm extra)")
    e.add_argument("--vllm-gpu-memory", type=float, default=None, metavar="FRACTION",
                   help="with --generator vllm: the fraction of the GPU vLLM may take (default: what is free "
                        "after corsa's own model, less a margin)")
    e.add_argument("--code-split", default=None, metavar="TASKS_JSON",
                   help="with a CodeUpdateArena file: a code bench's tasks.json, so that its trained and held-out "
                        "tasks are measured apart (default: every task, counted as held out)")
    add_eval_options(e, aliases={"batch_size": "--batch-size"})  # eval has no training batch
    e.set_defaults(func=run)


def _vllm_generator(args, editor):
    """vLLM over the same base model folder and the same adapter the editor loaded."""
    from ..adapter import find_adapter_dir
    from ..models import resolve_model
    from ..vllm_backend import VLLMGenerator

    adapter_dir = find_adapter_dir(args.adapter) if args.adapter is not None else None
    options = {} if args.vllm_gpu_memory is None else {"gpu_memory_utilization": args.vllm_gpu_memory}
    return VLLMGenerator(resolve_model(args.model), editor.fmt, adapter_dir, **options)


def _ours(path: Path) -> bool:
    """Whether `path` is a metrics file of an earlier `corsa eval` (which a rerun may replace)."""
    import json

    from ..errors import CorsaError
    from ..files import read_bounded

    try:
        data = json.loads(read_bounded(path, 1 << 30, "--out"))  # a FIFO or a device is not a metrics file
    except (CorsaError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and {"protocol", "metrics", "records", "versions"} <= set(data)


# the flags of one domain that mean nothing in the other, refused by name: (dest, flag, the value
# when not given, why)
NOT_FOR_CODE = (("skip_invalid", "--skip-invalid", False, "a CodeUpdateArena file has no edit records to skip"),
                ("scope", "--scope", None, "every program is written with the adapter on (or off, for the unedited "
                                           "model); no subject gates it"),
                ("generator", "--generator", "hf", "programs are sampled with transformers only"),
                ("vllm_gpu_memory", "--vllm-gpu-memory", None, "programs are sampled with transformers only"),
                ("mmlu", "--mmlu", 0, "it measures programs (Pass@k), not MMLU"),
                ("mmlu_file", "--mmlu-file", None, "it measures programs (Pass@k), not MMLU"))
NOT_FOR_FACTS = (("code_split", "--code-split", None, "it is a code bench's split of CodeUpdateArena tasks"),)


def run(args) -> int:
    from ..code import is_arena

    if is_arena(args.edits):  # API updates: Pass@k of programs run in the sandbox
        refuse_given(args, NOT_FOR_CODE, "a CodeUpdateArena file")
        return run_code(args)
    refuse_given(args, NOT_FOR_FACTS, "an edit file of facts")
    return run_facts(args)


def run_code(args) -> int:
    """`corsa eval --edits <CodeUpdateArena file>`: Pass@k and UPass@k, unedited and edited side by side."""
    import json

    from ..api import Editor
    from ..code import load_arena
    from ..code.evaluate import TIMEOUT_S, drawing, evaluate_code
    from ..files import atomic_write_json
    from ..machine import library_versions

    settings = eval_settings(args)
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the path of a .json file to write")
    check_writable(out.parent, need_bytes=2**20)
    check_not_inside({"--edits": args.edits, "--adapter": args.adapter}, out)
    if out.exists() and not _ours(out):
        raise ConfigError(f"--out {out} exists and is not a metrics file corsa wrote; corsa never overwrites "
                          f"other files: choose another path")
    started = time.perf_counter()
    groups = load_arena(args.edits)[:args.limit] if args.limit else load_arena(args.edits)
    tasks = [t for g in groups for t in g]
    split = {"train": [], "held_out": [t.id for t in tasks]}
    if args.code_split is not None:  # a code bench's tasks.json: its trained tasks are reported apart
        from ..files import read_text_bounded

        try:
            chosen = json.loads(read_text_bounded(args.code_split, 64 * 2**20, "--code-split"))
            if not (isinstance(chosen, dict) and all(isinstance(chosen.get(k), list) and
                                                     all(isinstance(t, str) for t in chosen[k])
                                                     for k in ("train", "held_out"))):
                raise ValueError("it needs lists of task ids under 'train' and 'held_out'")
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"--code-split {args.code_split} is not a code bench's tasks.json: {e}") from None
        tasks = [t for t in tasks if t.id in set(chosen["train"]) | set(chosen["held_out"])]
        split = {"train": chosen["train"], "held_out": chosen["held_out"]}
    if not tasks:
        raise ConfigError(f"{args.edits} holds no task to measure" + (" of --code-split" if args.code_split else ""))
    from .. import sandbox

    sandbox.check()  # before the model loads: where programs cannot run, say so at once
    editor = Editor(args.model, adapter=args.adapter, template=args.template, device=args.device, progress=False)
    options = dict(**drawing(settings, tokens_given=args.eval_max_new_tokens is not None),
                   batch_size=settings.batch_size, seed=settings.seed, timeout_s=TIMEOUT_S, progress=progress(args))
    runs = {}
    if args.adapter is None or args.base:
        runs["unedited"] = evaluate_code(editor.model, editor.fmt, tasks, split, adapter=False, **options)
    if args.adapter is not None:
        runs["edited"] = evaluate_code(editor.model, editor.fmt, tasks, split, adapter=True, **options)
    main = runs.get("edited") or runs["unedited"]
    result = {"model": args.model, "adapter": args.adapter, "edits": args.edits, "domain": "code",
              "n_tasks": len(tasks), "protocol": main["protocol"], "metrics": main["metrics"],
              "base": runs["unedited"] if "edited" in runs and "unedited" in runs else None,
              "records": main["records"], "seconds": round(time.perf_counter() - started, 3),
              "versions": library_versions()}
    atomic_write_json(out, result)
    keys = [k for k in main["metrics"] if not k.endswith("/tasks") and main["metrics"][k] is not None]
    rows = [[k.removeprefix("code/")] + [fmt_metric(r["metrics"][k], k) for r in runs.values()] for k in keys]
    print(show_table(rows, ["metric"] + list(runs)))
    print(f"{len(tasks)} tasks; {options['samples']} programs per task sampled at temperature "
          f"{options['temperature']}, run in the sandbox; {result['seconds']:.0f} s")
    print(f"metrics and every program: {out}")
    return 0


def run_facts(args) -> int:
    from .. import distributed as dist
    from .. import old_answers
    from ..api import Editor, as_edits
    from ..evaluate import HEADLINE, evaluate
    from ..files import atomic_write_json
    from ..machine import library_versions

    settings = eval_settings(args)
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the path of a .json file to write")
    check_writable(out.parent, need_bytes=2**20)  # before minutes of evaluation, not after
    check_not_inside({"--edits": args.edits, "--adapter": args.adapter}, out)
    if out.exists() and not _ours(out):
        raise ConfigError(f"--out {out} exists and is not a metrics file corsa wrote; corsa never overwrites "
                          f"other files: choose another path")
    if args.generator == "vllm" and dist.launched():  # said before minutes of loading, not after
        raise ConfigError("--generator vllm runs in one process (vLLM splits the work itself); drop the launcher")
    started = time.perf_counter()
    edits = as_edits(args.edits, limit=args.limit, on_invalid="skip" if args.skip_invalid else "error")
    if not edits:
        raise ConfigError(f"{args.edits} holds no edits")
    questions = None
    if args.mmlu:  # before the model loads: a wrong file is found in a second, not a minute
        from .. import mmlu

        questions = mmlu.subset(mmlu.load(args.mmlu_file), args.mmlu, args.mmlu_seed)
    scope = {} if args.scope is None else {"scope": args.scope}
    editor = Editor(args.model, adapter=args.adapter, template=args.template, device=args.device, progress=False,
                    **scope)
    # a missing y⁻ is found as training finds it: the unedited model's short answer
    edits = old_answers.fill(editor.model, editor.fmt, edits, settings.max_new_tokens)
    show = progress(args)
    generator = _vllm_generator(args, editor) if args.generator == "vllm" else None
    base = None
    if args.adapter is None or args.base:
        base = evaluate(editor, edits, base=True, mmlu=questions, settings=settings, progress=show,
                        generator=generator)
    edited = None
    if args.adapter is not None:
        edited = evaluate(editor, edits, base_answers=base["base_answers"] if base else None, mmlu=questions,
                          settings=settings, progress=show, generator=generator)
    main = edited or base
    result = {
        "model": args.model, "adapter": args.adapter, "edits": args.edits, "n_edits": len(edits),
        "protocol": main["protocol"], "metrics": main["metrics"], "counts": main["counts"], "mmlu": main["mmlu"],
        "scope": main["scope"],
        "base": None if base is None or edited is None else
        {"metrics": base["metrics"], "mmlu": base["mmlu"], "records": base["records"]},
        "records": main["records"], "seconds": round(time.perf_counter() - started, 3),
        "versions": library_versions(),
    }
    dist.on_main(atomic_write_json, out, result)  # under a launcher: the main worker writes, and prints
    if not dist.is_main():
        return 0
    columns = [m for m in (base, edited) if m is not None]
    rows = [[short, key.split("/")[0].replace("_", "-")] + [fmt_metric(m["metrics"].get(key), key) for m in columns]
            for short, key in HEADLINE.items() if key in main["metrics"]]
    print(show_table(rows, ["metric", "protocol"] + ["unedited"] * (base is not None) + ["edited"] * (edited is not None)))
    c = main["counts"]
    print(f"{c['edits']} edits, {c['paraphrases']} paraphrases, {c['locality_probes']} locality probes, "
          f"{c['subject_questions']} questions about the edited subjects, "
          f"{c['portability_questions']} multi-hop questions; generated = {main['protocol']['generated']['decoding']}, "
          f"up to {settings.max_new_tokens} new tokens; {result['seconds']:.0f} s")
    if main["scope"]["mode"] != "all":
        s = main["scope"]
        print(f"scope: the adapter answered {s['asked_in_scope']}/{s['asked']} edit prompts and rephrasings and "
              f"{s['probes_in_scope']}/{s['probes']} locality probes and {s['subject_questions_in_scope']}/"
              f"{s['subject_questions']} questions about the edited subjects; the unedited model answered the rest")
    print(f"metrics and per-edit answers: {out}")
    return 0
