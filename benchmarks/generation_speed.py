"""Greedy generation, today's path (``model.generate``) against corsa's decoding loop, side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/generation_speed.py --out benchmarks/generation-speed.json

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
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.tiny:
        from corsa.testing import tiny_llama

        model, name = tiny_llama(seed=0), "tiny"
    else:
        model = name = "smollm2-135m"
    editor = Editor(model, method="corsa", device=a.device, progress=False)
    prompts: list[str] = []
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

    def run(engine, part=prompts):
        return generate(m, fmt, part, a.new_tokens, a.batch_size, engine=engine)

    run("hf", prompts[:a.batch_size]), run("loop", prompts[:a.batch_size])  # warm up: one batch each
    seconds: dict[str, list[float]] = {"hf": [], "loop": []}
    answers = {}
    for _ in range(a.rounds):
        for engine in seconds:
            t = time.perf_counter()
            answers[engine] = run(engine)
            seconds[engine].append(time.perf_counter() - t)
    rate = {k: len(prompts) / statistics.median(v) for k, v in seconds.items()}
    same = sum(x == y for x, y in zip(answers["hf"], answers["loop"]))
    ids = [fmt.prompt_ids(x) for x in prompts]
    device = next(m.parameters()).device
    doc = {"command": " ".join(["benchmarks/generation_speed.py", *(argv if argv is not None else sys.argv[1:])]),
           "model": name, "template": fmt.name, "prompts": len(prompts), "batch_size": a.batch_size,
           "new_tokens": a.new_tokens, "rounds": a.rounds,
           "prompt_tokens_mean": round(sum(map(len, ids)) / len(ids), 1),
           "shared_prefix_tokens": shared_prefix(ids),
           "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "prompts_per_s": {"model_generate": round(rate["hf"], 2), "loop": round(rate["loop"], 2)},
           "ratio": round(rate["loop"] / rate["hf"], 2),
           "identical_answers": same, "different": [{"prompt": x, "model_generate": h, "loop": lo}
                                                    for x, h, lo in zip(prompts, answers["hf"], answers["loop"])
                                                    if h != lo],
           "seconds": {("model_generate" if k == "hf" else k): [round(x, 2) for x in v] for k, v in seconds.items()},
           "machine": {"platform": platform.platform(), "processor": platform.processor(),
                       "cpu_count": os.cpu_count()},
           "versions": library_versions()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, doc)
    print(f"{name}: model.generate {rate['hf']:.2f} prompts/s, loop {rate['loop']:.2f} prompts/s "
          f"({doc['ratio']}×), identical answers {same}/{len(prompts)}")
    if same != len(prompts):
        raise SystemExit(f"{len(prompts) - same} answers differ between the engines")
    return doc


if __name__ == "__main__":
    main()
