"""Everything worth measuring on a CUDA machine, in one command and one JSON (about 5 minutes on an H100).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu_run.py --out runs/gpu.json

1. ``run_benchmark.py --device cuda`` on SmolLM2 (bf16 autocast): the step time and peak GPU
   memory of lora, sam, dpo, corsa, the cheaper sharpness steps (reuse, momentum) and the
   release-style step, side by side in one process; and time to edit 64 CounterFact edits with
   early stopping against 10 fixed epochs;
2. ``corsa edit`` with corsa on the 16 bundled CounterFact edits (the adapter the next step reads);
3. ``corsa eval`` of that adapter with ``--generator hf`` and ``--generator vllm`` (the ``vllm``
   extra), each timed: prompts per second for each, and whether both give the same metrics.

Each part runs as its own process with a time limit, so one that fails (vLLM not installed, say)
is recorded with its error and the others still run. Nothing here is needed by the tests; the
JSON's figures go into the README's "Speed and memory" when a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "corsa" / "data" / "counterfact_sample.jsonl"
CORSA = [sys.executable, "-m", "corsa"]


def _run(name: str, argv: list[str], timeout_s: int, env: dict) -> dict:
    """One part: its command, wall time, exit status and the tail of its output."""
    print(f"gpu run · {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=ROOT)
        rc, out = done.returncode, (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:
        rc, out = None, f"timed out after {timeout_s} s: {(e.stderr or '')[-2000:]}"
    return {"command": argv, "seconds": round(time.perf_counter() - started, 2), "returncode": rc, "output": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/gpu.json", help="the JSON file to write")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu run: no CUDA device here; this script is for a GPU machine (the CPU figures come from "
              "benchmarks/run_benchmark.py)", file=sys.stderr)
        return 2
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "parts": {}}
    with tempfile.TemporaryDirectory(prefix="corsa-gpu-") as tmp:
        tmp = Path(tmp)
        steps = tmp / "steps.json"
        result["parts"]["steps"] = _run("step benchmark", [sys.executable, str(ROOT / "benchmarks" / "run_benchmark.py"),
                                                          "--models", args.model, "--device", "cuda", "--threads", "0",
                                                          "--out", str(steps)], 240, env)
        if steps.exists():
            result["steps"] = json.loads(steps.read_text())
        adapter = tmp / "adapter-run"
        result["parts"]["edit"] = _run("corsa edit", [*CORSA, "edit", "--model", args.model, "--edits", str(SAMPLE),
                                                     "--method", "corsa", "--device", "cuda", "--out", str(adapter),
                                                     "--quiet"], 120, env)
        for generator in ("hf", "vllm"):
            metrics = tmp / f"eval-{generator}.json"
            part = _run(f"corsa eval --generator {generator}",
                        [*CORSA, "eval", "--model", args.model, "--adapter", str(adapter), "--edits", str(SAMPLE),
                         "--device", "cuda", "--generator", generator, "--quiet", "--out", str(metrics)], 150, env)
            if metrics.exists():
                ev = json.loads(metrics.read_text())
                # every prompt the evaluation generated for, edited and unedited
                prompts = 2 * sum(1 + len(r["paraphrases"]) + len(r["locality"]) for r in ev["records"])
                part.update(metrics=ev["metrics"], eval_seconds=ev["seconds"],
                            prompts_per_second=round(prompts / ev["seconds"], 2) if ev["seconds"] else None)
            result["parts"][f"eval_{generator}"] = part
    hf, vllm = result["parts"]["eval_hf"].get("metrics"), result["parts"]["eval_vllm"].get("metrics")
    if hf and vllm:
        result["generators_agree"] = {k: hf[k] == vllm[k] for k in hf if k.startswith("generated/")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
