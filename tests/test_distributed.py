"""Data parallelism: two gloo workers under torchrun train the adapter one process would train.

The workers run this file as a script (see the bottom); the tests launch it with torchrun and
compare what worker 0 saved with a single-process run on the same global batches. The batch
does not split evenly (7 edits, micro-batches of 3, two per step), so workers hold different
numbers of edits and one sometimes holds none.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # each test starts real processes (and kills some)

from corsa.methods import METHODS as ROWS  # noqa: E402

# every trained row of the table: each must train the same adapter on two workers (the locate-then-edit
# rows compute their closed-form change on every worker alike, with no gradient to share)
METHODS = [m for m, row in ROWS.items() if row.solver is None]
# early_stop with an unreachable target: the check after each epoch runs its margins and greedy
# answers split over the workers, and must decide the same on every worker
TRAIN = dict(epochs=3, batch_size=3, grad_accum=2, lr=1e-2, early_stop=True, margin_target=-100.0,
             max_new_tokens=4, progress=False)
TORCHRUN = Path(sys.executable).with_name("torchrun")
# Two workers sum the gradient in another order than one process: float32 noise of ~1e-7 relative
# in the gradient (the logged grad/norm agrees to that), which AdamW's g/√v turns into differences of
# up to a few 1e-4 of the adapter's scale after 6 steps (measured 3.9e-4 for lora since its batch
# shares the prompt prefix, whose length differs between a shard and the whole micro-batch; 0.5e-5
# for the others). A worker that weighted its shard wrongly moves φ by whole percent, so a relative
# bound of 1e-3 still tells the two apart.
REL_TOL = 1e-3


def edits():
    from corsa.records import Edit

    return [Edit(id=f"e{i}", prompt=f"The capital of country {i} is", target_new=f"City{i}",
                 target_old=f"Town{i}") for i in range(7)]


def train(method: str):
    """The same run, in one process or on every worker: the adapter, the log and the answers."""
    from corsa import Editor
    from corsa.testing import tiny_llama

    editor = Editor(tiny_llama(seed=0), method=method, **TRAIN)
    record = editor.update(edits())
    lora = {n: p.detach().clone() for n, p in editor.model.named_parameters() if "lora_" in n}
    answers = editor.ask([e.prompt for e in edits()], max_new_tokens=6)
    return lora, record.result.history, answers


def launch(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


def scale(a: dict) -> float:
    return max(v.abs().max().item() for v in a.values())


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    launch(__file__, str(out))
    return out


@pytest.mark.parametrize("method", METHODS)
def test_two_workers_train_the_adapter_of_one_process(method, two_workers):
    saved = torch.load(two_workers / f"{method}.pt")
    assert saved["world_size"] == 2
    lora, history, answers = train(method)
    diff = max_diff(saved["lora"], lora)
    print(f"{method}: max |Δφ| two workers vs one process = {diff:.2e} of max |φ| {scale(lora):.2e}")
    assert diff < REL_TOL * scale(lora)
    assert max_diff(saved["lora_rank1"], saved["lora"]) == 0.0  # the workers never drift apart
    # the logged losses are those of the global group, not of worker 0's shard
    assert len(saved["history"]) == len(history) == 6 + 2  # 6 steps, 2 early-stop checks
    for h2, h1 in zip(saved["history"], history):
        for key in ("loss/sft", "loss/dpo", "grad/norm", "sam/grad_norm", "early_stop/min_margin"):
            if key in h1:
                assert h2[key] == pytest.approx(h1[key], rel=1e-4, abs=1e-6), key
    assert saved["answers"] == answers  # generation split over workers and gathered in order
    assert saved["n_reference"] == (len(edits()) if ROWS[method].dpo else None)  # DPO rows score it once


def test_corsa_edit_under_torchrun_writes_one_adapter_and_one_record(tmp_path):
    from safetensors.torch import load_file

    from corsa.cli import main
    from corsa.testing import save_tiny_llama

    base = save_tiny_llama(tmp_path / "base", seed=0)
    data = tmp_path / "edits.jsonl"
    data.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in edits()))
    args = ["edit", "--model", str(base), "--edits", str(data), "--method", "corsa", "--epochs", "2",
            "--batch-size", "3", "--grad-accum", "2", "--lr", "1e-2", "--quiet", "--no-check"]
    launch("-m", "corsa.cli", *args, "--out", str(tmp_path / "ddp"))
    assert main([*args, "--out", str(tmp_path / "single")]) == 0

    ddp, single = tmp_path / "ddp", tmp_path / "single"
    assert sorted(p.name for p in ddp.iterdir()) == ["adapter", "edits.jsonl", "log.jsonl", "run.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ddp", "edits.jsonl", "single"]  # no leftovers
    run = json.loads((ddp / "run.json").read_text())
    assert run["world_size"] == 2 and run["config"]["method"] == "corsa"
    steps = run["updates"][0]["steps"]
    assert steps == 2 * 2 and (ddp / "log.jsonl").read_text().count("\n") == steps  # one writer
    weights = "adapter/adapter_model.safetensors"
    one = load_file(single / weights)
    diff = max_diff(load_file(ddp / weights), one)
    print(f"corsa edit: max |Δφ| torchrun ×2 vs one process = {diff:.2e} of max |φ| {scale(one):.2e}")
    assert diff < REL_TOL * scale(one)


def close(a, b, tol: float = 1e-6, path: str = "") -> None:
    """Equal JSON values, floats within `tol` (relative, or absolute near 0)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            close(a[k], b[k], tol, f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, tol, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=tol, abs=tol), path
    else:
        assert a == b, path


def test_corsa_bench_and_eval_under_torchrun_match_one_process(tmp_path):
    from corsa.comparison import TIMING_KEYS
    from corsa.cli import main
    from corsa.testing import save_tiny_llama

    base = save_tiny_llama(tmp_path / "base", seed=0)
    rows = [{"id": f"e{i}", "prompt": f"The capital of country {i} is", "target_new": f"City{i}",
             "target_old": f"Town{i}" if i % 2 else None,  # y⁻ filled in from the unedited model
             "paraphrases": [f"Country {i} has its capital in", f"Capital of {i}:"],
             "locality": [{"prompt": f"The colour of object {i} is", "answer": "red"},
                          {"prompt": f"Object {i} weighs"}]} for i in range(6)]
    data = tmp_path / "edits.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer_a": str(i + 1), "answer_b": str(i),
                                        "answer_c": "x", "answer_d": "y", "correct_answer": "A",
                                        "topic": "arithmetic"}) + "\n" for i in range(5)))
    # small, uneven evaluation batches, so that each worker scores and generates several of them
    args = ["bench", "--model", str(base), "--data", str(data), "--methods", "lora,corsa", "--edits", "4",
            "--updates", "2", "--epochs", "1", "--batch-size", "3", "--lr", "1e-2", "--warmup-steps", "0",
            "--max-new-tokens", "4", "--eval-batch-size", "3", "--mmlu", "5", "--mmlu-file", str(mmlu), "--quiet"]
    launch("-m", "corsa.cli", *args, "--out", str(tmp_path / "ddp"))
    assert main([*args, "--out", str(tmp_path / "single")]) == 0

    ddp, single = tmp_path / "ddp", tmp_path / "single"
    files = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*"))  # noqa: E731
    assert files(ddp) == files(single)  # one set of outputs, no temporary folders left behind
    assert not [p for p in ddp.rglob(".*")]
    for method in ("lora", "corsa"):
        for k in (1, 2):
            log = ddp / method / f"update-{k}" / "log.jsonl"
            assert log.read_text().count("\n") == json.loads(log.with_name("run.json").read_text())[
                "updates"][-1]["steps"]  # one writer
    got, want = (json.loads((d / "results.json").read_text()) for d in (ddp, single))
    # the evaluation is split by whole batches, so the unedited model's numbers are bit-identical
    assert got["base"] == want["base"]
    for method in ("lora", "corsa"):
        close(got["methods"][method]["final"], want["methods"][method]["final"], 1e-6, method)
        assert got["methods"][method]["retention"] == want["methods"][method]["retention"]
    drop = lambda o: ({k: drop(v) for k, v in o.items() if k not in TIMING_KEYS + ("versions", "files")}  # noqa: E731
                      if isinstance(o, dict) else [drop(v) for v in o] if isinstance(o, list) else o)
    # everything else too, timings aside; the trained adapters differ by float rounding (~1e-7),
    # which moves a margin of about 1 nat by up to ~2e-6
    close(drop(got), drop(want), 1e-5)
    assert (ddp / "edits.jsonl").read_text() == (single / "edits.jsonl").read_text()

    # `corsa eval` of an adapter the bench saved
    args = ["eval", "--model", str(base), "--adapter", str(single / "corsa" / "update-2"), "--edits", str(data),
            "--max-new-tokens", "4", "--eval-batch-size", "3", "--quiet"]
    launch("-m", "corsa.cli", *args, "--out", str(tmp_path / "eval-ddp.json"))
    assert main([*args, "--out", str(tmp_path / "eval-single.json")]) == 0
    got, want = (json.loads((tmp_path / f"eval-{n}.json").read_text()) for n in ("ddp", "single"))
    assert drop(got) == drop(want)  # the same adapter: bit-identical numbers and answers


# ----------------------------------------------------------------------------------------------
# The worker: `torchrun --nproc_per_node 2 tests/test_distributed.py OUT`


def worker(out: Path) -> None:
    import torch.distributed as td

    import corsa.engine as engine
    from corsa import distributed as dist

    n_reference = []
    real_reference = engine.compute_reference
    engine.compute_reference = lambda *a, **k: (lambda r: n_reference.append(len(r.chosen)) or r)(
        real_reference(*a, **k))
    for method in METHODS:
        n_reference.clear()
        lora, history, answers = train(method)
        assert dist.world_size() == 2, "not launched with two workers"
        names = sorted(lora)
        theirs = [torch.zeros_like(lora[n]) for n in names]  # worker 1's φ, to prove they agree
        if dist.rank() == 1:
            theirs = [lora[n] for n in names]
        dist.broadcast_(theirs, src=1)
        if dist.is_main():
            torch.save({"lora": lora, "lora_rank1": dict(zip(names, theirs)), "history": history,
                        "answers": answers, "world_size": dist.world_size(),
                        "n_reference": n_reference[0] if n_reference else None}, out / f"{method}.pt")
    td.barrier()
    dist.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    worker(Path(sys.argv[1]))
