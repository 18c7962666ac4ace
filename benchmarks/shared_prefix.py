"""What running the prompts' shared prefix once saves (corsa.scoring.shared_prefix), side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/shared_prefix.py --out benchmarks/shared-prefix.json

On SmolLM2 every chat prompt opens with the same 24-token system turn. `score_shared` runs it
once per batch and repeats its KV cache; this script times, on the same CounterFact batch and
in alternating rounds, the teacher-forced scoring of y⁺ and y⁻ (the hold test), one forward
and backward of their summed log-probs, and one whole CoRSA step, with the prefix shared and
with it run in every row (MIN_SHARED_PREFIX set out of reach). It also checks that both give
the same log-probs. `--tiny` runs it on the tiny test model.
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

from corsa import Editor, scoring  # noqa: E402
from corsa.step import compute_reference, corsa_step, trainable_parameters  # noqa: E402
from corsa.files import atomic_write_json  # noqa: E402
from corsa.machine import library_versions  # noqa: E402
from corsa.loaders import load_edits  # noqa: E402
from corsa.prompts import collate_shared, encode_edits, pad_id  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "counterfact" / "easyedit" / "counterfact-edit.json"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--edits", type=int, default=16, help="edits in the batch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tiny", action="store_true")
    a = p.parse_args(argv)
    if a.tiny:
        from corsa.testing import tiny_llama

        model, name = tiny_llama(seed=0), "tiny"
    else:
        model = name = "smollm2-135m"
    editor = Editor(model, method="corsa", progress=False)
    edits = load_edits(a.data, on_invalid="skip", limit=a.edits)
    enc = encode_edits(editor.fmt, edits, None, need_rejected=True)
    pad = pad_id(editor.tokenizer)
    batch = collate_shared([e.prompt for e in enc], [[e.chosen, e.rejected] for e in enc], pad)
    m, params, cfg = editor.model, trainable_parameters(editor.model), editor.config
    with torch.no_grad():  # a trained adapter, not B = 0
        for q in params:
            q.add_(torch.randn_like(q) * 0.01)
    ref = compute_reference(m, editor.fmt, enc, cfg, 16)
    gen = torch.Generator().manual_seed(0)

    def hold_test():
        with torch.no_grad(), scoring.eval_mode(m):
            return scoring.score_shared(m, batch)

    def forward_backward():
        m.train()
        scoring.score_shared(m, batch).sum().backward()
        m.zero_grad(set_to_none=True)

    def step():
        m.train()
        corsa_step(m, params, cfg, enc, ref, [list(range(len(enc)))], pad, gen)
        m.zero_grad(set_to_none=True)

    saved = scoring.MIN_SHARED_PREFIX
    modes = {"shared": saved, "every_row": 10**9}
    lp = {}
    for mode, v in modes.items():
        scoring.MIN_SHARED_PREFIX = v
        lp[mode] = hold_test()
    times = {task: {mode: [] for mode in modes} for task in ("hold_test", "forward_backward", "corsa_step")}
    for r in range(a.rounds + 1):  # round 0 warms up
        for task, fn in (("hold_test", hold_test), ("forward_backward", forward_backward), ("corsa_step", step)):
            for mode, v in modes.items():
                scoring.MIN_SHARED_PREFIX = v
                t = time.perf_counter()
                fn()
                if r:
                    times[task][mode].append(time.perf_counter() - t)
    scoring.MIN_SHARED_PREFIX = saved
    result = {}
    for task, by_mode in times.items():
        med = {mode: statistics.median(ts) for mode, ts in by_mode.items()}
        result[task] = {"median_s": {k: round(v, 4) for k, v in med.items()},
                        "times_s": {k: [round(x, 4) for x in v] for k, v in by_mode.items()},
                        "shared_over_every_row": round(med["shared"] / med["every_row"], 3)}
    doc = {"command": " ".join(["benchmarks/shared_prefix.py", *(argv if argv is not None else sys.argv[1:])]),
           "model": name, "edits": len(enc), "prompt_tokens": list(batch.prompt_mask.sum(-1).tolist()),
           "shared_prefix_tokens": scoring.shared_prefix(batch),
           "max_logprob_difference": float((lp["shared"] - lp["every_row"]).abs().max()),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                       "torch_threads": torch.get_num_threads()},
           "versions": library_versions(), "tasks": result}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, doc)
    return doc


if __name__ == "__main__":
    main()
