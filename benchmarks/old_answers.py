"""How often the filled y⁻ is the old answer: CounterFact prompts with their `ground_truth` hidden.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/old_answers.py --out runs/old-answers.json

For each of `--edits` CounterFact records (every `--stride`-th from `--start`, so that the
relations mix), the y⁻ that corsa fills in (:func:`corsa.old_answers.fill`: the span of the
unedited model's own reply that the model scores highest as a short answer) is compared with the
record's `ground_truth`, which the filler never sees. Side by side on the same greedy replies:

- `greedy_contains`: the unedited model's greedy reply mentions `ground_truth`
  (:func:`corsa.metrics.contains`, the project's one answer matcher);
- `filled_matches`: the filled y⁻ *is* `ground_truth` (equal after :func:`corsa.metrics.normalise`),
  and `filled_contains`: the filled y⁻ matches it by the answer matcher ("Microsoft Corporation"
  for "Microsoft", as a generated answer counts for y⁺).

Each count is also given over the records whose prompt does not already name `ground_truth`
(`*_known`): a reply that restates "Holy Name Cathedral, Chicago can be found in" contains
"Chicago" without knowing anything, while the model's answer there may be another city.
Issue 13's target: the filled y⁻ matches `ground_truth` at least as often as the greedy reply
contains it. The JSON lists every case.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from corsa import EditConfig, Editor  # noqa: E402
from corsa.unedited import adapter_off  # noqa: E402
from corsa.generate import generate  # noqa: E402
from corsa.files import atomic_write_json  # noqa: E402
from corsa.machine import library_versions  # noqa: E402
from corsa.loaders import load_edits  # noqa: E402
from corsa.metrics import contains, normalise  # noqa: E402
from corsa.old_answers import fill  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COUNTERFACT = ROOT.parent / "shared" / "data" / "counterfact" / "easyedit" / "counterfact-edit.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=str(COUNTERFACT), help="CounterFact, EasyEdit format")
    p.add_argument("--edits", type=int, default=48)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--stride", type=int, default=7, help="take every stride-th record (default 7)")
    p.add_argument("--out", default="runs/old-answers.json")
    args = p.parse_args(argv)

    # a record that contradicts an earlier one (CounterFact asks "The twin city of Tirana is" twice)
    # would stop the edit loader; here each prompt is filled alone, so such records are only skipped
    records = load_edits(args.data, limit=args.start + args.stride * args.edits, on_invalid="skip")
    picked = records[args.start::args.stride][:args.edits]
    truth = [e.target_old for e in picked]
    hidden = [dataclasses.replace(e, target_old=None) for e in picked]

    editor = Editor(model=args.model, config=EditConfig(method="lora"))
    t0 = time.perf_counter()
    filled = fill(editor.model, editor.fmt, hidden, editor.config.max_new_tokens)
    seconds = time.perf_counter() - t0
    # the answers the filler read, generated again the same way (greedy, adapter off on a new adapter)
    with adapter_off(editor.model):
        greedy = generate(editor.model, editor.fmt, [e.prompt for e in picked], editor.config.max_new_tokens, 16)

    cases = [{"id": e.id, "prompt": e.prompt, "ground_truth": t, "greedy": g, "filled": f.target_old,
              "greedy_contains": contains(g, t), "filled_contains": contains(f.target_old, t),
              "filled_matches": normalise(f.target_old) == normalise(t), "prompt_names_it": contains(e.prompt, t)}
             for e, t, g, f in zip(picked, truth, greedy, filled)]
    n = len(cases)
    kinds = ("greedy_contains", "filled_contains", "filled_matches")
    rates = {k: sum(c[k] for c in cases) for k in kinds}
    rates.update({f"{k}_known": sum(c[k] for c in cases if not c["prompt_names_it"]) for k in kinds})
    rates["prompt_names_it"] = sum(c["prompt_names_it"] for c in cases)
    result = {"data": args.data, "model": args.model, "edits": n, "start": args.start, "stride": args.stride,
              "fill_seconds": round(seconds, 1), "counts": rates,
              "target": {f"{k}{sub} >= greedy_contains{sub}": rates[k + sub] >= rates["greedy_contains" + sub]
                         for k in ("filled_matches", "filled_contains") for sub in ("", "_known")},
              "cases": cases, "versions": library_versions()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out), result)
    for k, v in rates.items():
        print(f"{k:22s} {v}/{n}")
    for c in cases:
        if c["greedy_contains"] != c["filled_contains"]:
            which = "found only in the reply" if c["greedy_contains"] else "found only in y⁻"
            print(f"  {which}: {c['prompt']!r} → {c['greedy']!r} → y⁻ {c['filled']!r} (truth {c['ground_truth']!r})")
    print(f"fill: {seconds:.1f} s for {n} edits; written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
