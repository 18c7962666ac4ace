"""corsa's greedy decoding loop gives model.generate's tokens: chat and raw, adapter on and off, padded batches."""

import pytest
import torch

from corsa.unedited import adapter_off as off
from corsa.generate import MIN_SHARED_PREFIX, _generate, answer_ends, generate, generate_ids, shared_prefix
from corsa.prompts import PromptFormat, pad_id
from corsa.testing import tiny_llama

# lengths differ, so every batch is padded; batch_size 3 leaves a short last batch
PROMPTS = [f"The capital of country {i} is" + " very" * (i % 4) for i in range(11)]


def varied_model(chat: bool, adapter: bool = False):
    """The tiny model with larger weights (its answers vary and end at different steps: the end of
    turn and the line break are made likely), optionally under a LoRA adapter with B ≠ 0."""
    model, tok = tiny_llama(seed=0, chat_template=chat)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)
        for t in (tok.eos_token_id, tok.convert_tokens_to_ids("Ċ")):
            model.model.embed_tokens.weight[t] *= 3
    if adapter:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 init_lora_weights=False))
    model.eval()
    return model, PromptFormat(tok)


def plain_generate(model, fmt, ids, n=16):
    """model.generate on one unpadded prompt, cut after the end of turn."""
    eos = fmt.tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, num_beams=1, pad_token_id=pad_id(fmt.tokenizer),
                             eos_token_id=eos)[0, len(ids):].tolist()
    return out[:out.index(eos) + 1] if eos in out else out


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "raw"])
@pytest.mark.parametrize("adapter", ["none", "on", "off"])
def test_loop_gives_model_generates_tokens(chat, adapter):
    model, fmt = varied_model(chat, adapter != "none")
    with off(model, adapter == "off"):
        loop = generate_ids(model, fmt, PROMPTS, 16, batch_size=3)
        hf = generate_ids(model, fmt, PROMPTS, 16, batch_size=3, engine="hf")
        assert loop == hf
        assert loop == [plain_generate(model, fmt, fmt.prompt_ids(p)) for p in PROMPTS]
        assert generate(model, fmt, PROMPTS, 16, batch_size=3) == generate(model, fmt, PROMPTS, 16, batch_size=3,
                                                                          engine="hf")
    # the test means something: rows end at different steps, and chat prompts share their template's head
    lengths = {len(r) for r in loop}
    assert len(lengths) >= 3 and min(lengths) < 16
    if chat:
        assert shared_prefix([fmt.prompt_ids(p) for p in PROMPTS]) >= MIN_SHARED_PREFIX


def test_raw_rows_stop_at_the_line_break_with_the_same_text():
    model, fmt = varied_model(chat=False)
    ends = answer_ends(fmt)
    assert fmt.tokenizer.convert_tokens_to_ids("Ċ") in ends and fmt.tokenizer.eos_token_id in ends
    rows = _generate(model, fmt, PROMPTS, 16, 3, ends=ends)
    full = _generate(model, fmt, PROMPTS, 16, 3, engine="hf")
    stopped = [r for (r,), (f,) in zip(rows, full) if len(r) < len(f) and r[-1] in ends]
    assert stopped  # some rows left the batch at a line break, before model.generate's 16 tokens
    assert [fmt.decode_answer(r) for (r,) in rows] == [fmt.decode_answer(f) for (f,) in full]


@pytest.mark.parametrize("options", [dict(prefill=True), dict(shots=[("The sky is", "blue"), ("Grass is", "green")])],
                         ids=["prefill", "shots"])
def test_prefill_and_shots_match(options):
    model, fmt = varied_model(chat=True, adapter=True)
    assert generate(model, fmt, PROMPTS, 12, 4, **options) == generate(model, fmt, PROMPTS, 12, 4, engine="hf",
                                                                      **options)


def test_a_single_prompt_and_no_tokens():
    model, fmt = varied_model(chat=True)
    assert generate_ids(model, fmt, PROMPTS[:1]) == generate_ids(model, fmt, PROMPTS[:1], engine="hf")
    assert generate_ids(model, fmt, PROMPTS[:2], 0) == [[], []]
    with pytest.raises(ValueError, match="engine"):
        generate(model, fmt, PROMPTS[:1], engine="vllm")


def test_sampling_still_draws_from_model_generate():
    model, fmt = varied_model(chat=True)
    torch.manual_seed(3)
    a = generate(model, fmt, PROMPTS[:4], 8, 2, num_samples=3, temperature=1.5)
    torch.manual_seed(3)
    b = generate(model, fmt, PROMPTS[:4], 8, 2, num_samples=3, temperature=1.5, engine="hf")
    assert a == b and all(len(s) == 3 for s in a)


def test_shared_prefix_leaves_every_prompt_a_token_of_its_own():
    head = list(range(10, 10 + MIN_SHARED_PREFIX + 2))
    assert shared_prefix([head + [1, 2], head + [3]]) == len(head)
    assert shared_prefix([head + [1], head]) == len(head) - 1      # the shorter one keeps its last token
    assert shared_prefix([head]) == 0                                # one prompt: nothing to share
    assert shared_prefix([[1, 2, 3, 4, 5], [1, 2, 9, 4, 5]]) == 0    # shorter than MIN_SHARED_PREFIX


def test_the_speed_benchmark_runs_on_the_tiny_model(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import generation_speed

    data = tmp_path / "edits.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "target_new": "Paris", "paraphrases": [p + " indeed"]}) + "\n"
                            for p in PROMPTS[:6]))
    doc = generation_speed.main(["--tiny", "--data", str(data), "--prompts", "10", "--batch-size", "4",
                                 "--rounds", "1", "--out", str(tmp_path / "speed.json")])
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["identical_answers"] == saved["prompts"] == 10 and saved["different"] == []
    assert set(saved["prompts_per_s"]) == {"model_generate", "loop"} and saved["threads"] >= 1
    assert doc["ratio"] == saved["ratio"]
