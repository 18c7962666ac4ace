"""Greedy generation, today's path (``model.generate``) against corsa's decoding loop, side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/generation_speed.py --out benchmarks/generation-speed.json
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/generation_speed.py --edits 16 --fast-batch-size 64 \
        --out benchmarks/eval-speed.json

With ``--edits N`` the adapter is corsa-lifelong trained (its defaults) on the first N CounterFact
edits, and the prompts are those the bench's evaluation generates for them: edit prompts,
paraphrases and questions about the edited subjects (the locality probes lie outside the
subject scope and are answered from the unedited model's cache). A third path joins: the loop
at ``--fast-batch-size``.

At the bench's settings (evaluation batches of 16, ``config.NEW_TOKENS`` new tokens, the chat
template), on the edit prompts and paraphrases of the first CounterFact records (96 prompts by
default), under a LoRA adapter moved off zero (a trained adapter's cost and answers, not the
base model's): both engines answer every prompt in alternating rounds, so a slow spell of a
shared machine hits both alike, and the prompts per second of the median round are compared.
The answers of the two must be identical (the script fails otherwise, after writing the JSON).
`--tiny` runs it on the tiny test model; `--threads` sets torch's threads (default: torch's choice,
as `corsa bench` leaves it).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from corsa import Editor, config  # noqa: E402
from corsa.generate import generate, shared_prefix  # noqa: E402
from corsa.files import atomic_write_json  # noqa: E402
from corsa.machine import library_versions  # noqa: E402
from corsa.loaders import load_edits  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "counterfact" / "easyedit" / "counterfact-edit.json"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--prompts", type=int, default=96, help="edit prompts and paraphrases, in file order")
    p.add_argument("--batch-size", type=int, default=16, help="evaluation batch size (the bench's: 16)")
    p.add_argument("--new-tokens", type=int, default=config.NEW_TOKENS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 leaves torch's choice")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--edits", type=int, default=0, help="train corsa-lifelong on this many edits first (0: a random adapter)")
    p.add_argument("--fast-batch-size", type=int, default=0, help="the third path's batch size (with --edits; 0: --batch-size)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.tiny:
        from corsa.testing import tiny_llama

        model, name = tiny_llama(seed=0), "tiny"
    else:
        model = name = "smollm2-135m"
    if a.edits:
        editor, prompts = edited(model, a)
        m, fmt = editor.model, editor.fmt
    else:
        editor = Editor(model, method="corsa", device=a.device, progress=False)
        prompts = []
        for e in load_edits(a.data, on_invalid="skip", limit=a.prompts):
            prompts = list(dict.fromkeys([*prompts, e.prompt, *e.paraphrases]))
            if len(prompts) >= a.prompts:
                break
        prompts = prompts[:a.prompts]
        m, fmt = editor.model, editor.fmt
        with torch.no_grad():  # a trained adapter, not B = 0
            g = torch.Generator().manual_seed(0)
            for q in (q for q in m.parameters() if q.requires_grad):
                q.add_(torch.randn(q.shape, generator=g).to(q) * 0.01)
    fast = a.fast_batch_size or a.batch_size

    def run(engine, part=prompts):
        if engine == "loop_fast":
            return generate(m, fmt, part, a.new_tokens, fast)
        return generate(m, fmt, part, a.new_tokens, a.batch_size, engine=engine)

    engines = ["hf", "loop"] + (["loop_fast"] if a.edits else [])
    for engine in engines:
        run(engine, prompts[:a.batch_size])  # warm up: one batch each
    seconds: dict[str, list[float]] = {k: [] for k in engines}
    answers = {}
    for _ in range(a.rounds):
        for engine in seconds:
            t = time.perf_counter()
            answers[engine] = run(engine)
            seconds[engine].append(time.perf_counter() - t)
    rate = {k: len(prompts) / statistics.median(v) for k, v in seconds.items()}
    same = sum(all(x == answers[k][i] for k in engines) for i, x in enumerate(answers["hf"]))
    ids = [fmt.prompt_ids(x) for x in prompts]
    device = next(m.parameters()).device
    doc = {"command": " ".join(["benchmarks/generation_speed.py", *(argv if argv is not None else sys.argv[1:])]),
           "model": name, "template": fmt.name, "prompts": len(prompts), "batch_size": a.batch_size,
           "new_tokens": a.new_tokens, "rounds": a.rounds,
           "prompt_tokens_mean": round(sum(map(len, ids)) / len(ids), 1),
           "shared_prefix_tokens": shared_prefix(ids),
           "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "prompts_per_s": {("model_generate" if k == "hf" else k): round(v, 2) for k, v in rate.items()},
           "ratio": round(rate["loop"] / rate["hf"], 2),
           **({"edits": a.edits, "fast_batch_size": fast, "loop_fast_ratio": round(rate["loop_fast"] / rate["hf"], 2)}
              if a.edits else {}),
           "identical_answers": same, "different": [{"prompt": x, **{k: answers[k][i] for k in engines}}
                                                    for i, x in enumerate(prompts)
                                                    if any(answers[k][i] != answers["hf"][i] for k in engines)],
           "seconds": {("model_generate" if k == "hf" else k): [round(x, 2) for x in v] for k, v in seconds.items()},
           "machine": {"platform": platform.platform(), "processor": platform.processor(),
                       "cpu_count": os.cpu_count()},
           "versions": library_versions()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, doc)
    extra = f", loop at {fast} {rate['loop_fast']:.2f} ({doc['loop_fast_ratio']}×)" if a.edits else ""
    print(f"{name}: model.generate {rate['hf']:.2f} prompts/s, loop {rate['loop']:.2f} prompts/s "
          f"({doc['ratio']}×){extra}, identical answers {same}/{len(prompts)}")
    if same != len(prompts):
        raise SystemExit(f"{len(prompts) - same} answers differ between the engines")
    return doc


def edited(model, a):
    """corsa-lifelong trained on the first `a.edits` edits, and the prompts its bench evaluation generates
    (under the subject scope)."""
    from corsa.subjects import probes

    editor = Editor(model, method="corsa-lifelong", device=a.device, progress=False)
    edits = load_edits(a.data, on_invalid="skip", limit=a.edits * 2)[:a.edits]
    editor.update(edits)
    asked = [x for e in edits for x in (e.prompt, *e.paraphrases, *probes(e))]
    prompts = [x for x in dict.fromkeys(asked) if editor.scope is None or editor.scope.covers(x)]
    return editor, prompts


if __name__ == "__main__":
    main()
