"""The keys' second moment C = E[k kᵀ] of an MLP output projection, over a text corpus.

ROME, MEMIT and AlphaEdit need to know which key directions ordinary text uses, so an edit can
leave them alone (editors.solve). The papers estimate C from 100,000 Wikipedia samples, hours on
a GPU; nothing can be downloaded here, so the corpus is one available offline:

- by default, **the model's own text**: sampled continuations (temperature 1, seeded) of short
  openings, raw, and its greedy replies to corsa's bundled anchor prompts in its chat format
  (generic questions; never an evaluation probe). Text in the model's own distribution, in the
  format edits are asked in, for any model, with no data to ship;
- or a file (`--stats-corpus FILE`): plain text, one document per line, or JSON lines with a
  "text", "question" or "prompt" field.

`--stats-tokens` caps the corpus (default 20,000 tokens: enough to estimate C's leading
directions on a 135M model; docs/results.md reports how the results move with it). C is
computed once per model (its fingerprint), layer and corpus, with the adapter off, and cached
under $CORSA_CACHE/stats. The corpus is generated in chunks saved as they finish, so an
interrupted computation resumes where it stopped; the one forward pass over it is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import distributed as dist
from ..unedited import adapter_off
from ..errors import DataError
from ..generate import generate_ids
from ..files import atomic_write_json, jsonl_lines, read_bounded, read_text_bounded
from ..models import model_fingerprint
from ..models.aliases import default_cache_dir
from ..preserve import read_anchors
from ..prompts import pad_id
from .layout import Layout

OPENINGS = ("The", "In", "A", "It", "This", "When", "There", "One", "My", "We", "After", "Many")
CHUNK = 16          # sequences per generated chunk and per accumulation batch
SAMPLE_TOKENS = 96  # tokens sampled per raw sequence
VERSION = 1         # bump when the default corpus changes, so old caches are not reused


def cache_root() -> Path:
    return default_cache_dir() / "stats"


def corpus_key(corpus: str | None, tokens: int, template: str = "chat") -> str:
    """What identifies a corpus: the default one by its version, prompt format (its chat part is in
    the model's chat format) and size; a file by its content's hash, the format and the size."""
    if corpus is None:
        return f"self-v{VERSION}-{template}-{tokens}"

    digest = hashlib.sha256(read_bounded(corpus, MAX_CORPUS_BYTES, "the statistics corpus", DataError)).hexdigest()[:16]
    return f"file-{digest}-{template}-{tokens}"


MAX_CORPUS_BYTES = 1 << 30  # read whole into memory: the cap of an edit file


def read_corpus(path: str) -> list[str]:
    """Documents of a corpus file: text lines, or JSON lines with a text, question or prompt field."""
    lines = jsonl_lines(read_text_bounded(path, MAX_CORPUS_BYTES, "the statistics corpus", DataError))
    docs = []
    for n, line in lines:
        line = line.strip()
        if not line:
            continue
        if path.endswith(".jsonl"):
            try:
                record = json.loads(line)
            except ValueError as e:
                raise DataError(f"is not JSON ({e})", path=str(path), record=f"line {n}") from None
            text = next((record[k] for k in ("text", "question", "prompt") if isinstance(record, dict)
                         and isinstance(record.get(k), str)), None)
            if not text:
                raise DataError("has no text, question or prompt field", path=str(path), record=f"line {n}",
                                field="text")
            docs.append(text)
        else:
            docs.append(line)
    if not docs:
        raise DataError("holds no text", path=str(path))
    return docs


def _own_text_chunk(model, fmt, j: int, n_chunks_raw: int, anchors: list[str]) -> list[list[int]]:
    """Chunk j of the default corpus: sampled raw continuations, then chat replies to anchors."""
    tok = fmt.tokenizer
    if j < n_chunks_raw:
        starts = [OPENINGS[(j * CHUNK + b) % len(OPENINGS)] for b in range(CHUNK)]
        ids = [tok(s, add_special_tokens=False).input_ids for s in starts]
        T = max(map(len, ids))
        pad = pad_id(tok)
        x = torch.tensor([[pad] * (T - len(i)) + i for i in ids])
        mask = torch.tensor([[0] * (T - len(i)) + [1] * len(i) for i in ids])
        device = next(model.parameters()).device
        # seeded here, and the callers' generators (CPU and this device's) left as they were
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(1000 + j)
            out = model.generate(input_ids=x.to(device), attention_mask=mask.to(device), do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=SAMPLE_TOKENS,
                                 pad_token_id=pad, eos_token_id=tok.eos_token_id)
        seqs = []
        for row, i in zip(out.cpu().tolist(), ids):
            row = row[T - len(i):]                       # without the left padding
            ends = [n for n in range(len(i), len(row)) if row[n] == tok.eos_token_id]
            seqs.append(row[:ends[0] + 1] if ends else row)
        return seqs
    part = anchors[(j - n_chunks_raw) * CHUNK:(j - n_chunks_raw + 1) * CHUNK]
    replies = generate_ids(model, fmt, part, max_new_tokens=64)
    return [fmt.prompt_ids(p) + r for p, r in zip(part, replies)]


def corpus_ids(model, fmt, corpus: str | None, tokens: int, folder: Path, progress: bool) -> list[list[int]]:
    """The corpus as token sequences, at most `tokens` tokens; generated chunks are kept in `folder`."""
    if corpus is not None:
        seqs, total = [], 0
        for doc in read_corpus(corpus):
            ids = fmt.tokenizer(doc, add_special_tokens=False).input_ids[:512]
            seqs.append(ids[:tokens - total])
            total += len(seqs[-1])
            if total >= tokens:
                break
        return [s for s in seqs if s]

    anchors = read_anchors() if fmt.chat else []
    n_chat = -(-len(anchors) // CHUNK)
    n_raw = max(1, -(-max(0, tokens - 60 * len(anchors)) // (CHUNK * SAMPLE_TOKENS)))
    seqs: list[list[int]] = []
    with tqdm(total=n_raw + n_chat, desc="statistics · the model's own text", unit="chunk",
              disable=not dist.show_bar(progress), leave=False) as bar:
        for j in range(n_raw + n_chat):
            file = folder / f"corpus-{j}.json"
            if file.exists():
                chunk = json.loads(file.read_text())
            else:
                chunk = _own_text_chunk(model, fmt, j, n_raw, anchors)
                atomic_write_json(file, chunk)
            seqs.extend(chunk)
            bar.update(1)
    out, total = [], 0
    for s in seqs:
        out.append(s[:tokens - total])
        total += len(out[-1])
        if total >= tokens:
            break
    return [s for s in out if s]


def second_moments(model, fmt, layout: Layout, layers: list[int], corpus: str | None = None, tokens: int = 20000,
                   fingerprint: str = "", progress: bool = True, log=None) -> dict[int, torch.Tensor]:
    """C_l = E[k kᵀ] (float64, d_in × d_in) of layer l's projection keys, for each of `layers`.

    Read from the cache when computed before for this model, layer and corpus; otherwise the
    corpus is run once through the unedited model (adapter off) with the missing layers hooked.
    """
    from safetensors.torch import load_file, save_file

    if not fingerprint:  # the cache is per model: never shared under a made-up name
        fingerprint = model_fingerprint(model)
    folder = cache_root() / fingerprint / corpus_key(corpus, tokens, fmt.name)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[int, torch.Tensor] = {}
    for layer in layers:
        file = folder / f"layer-{layer}.safetensors"
        if file.exists():
            out[layer] = load_file(str(file))["mom2"]
    todo = [layer for layer in layers if layer not in out]
    if not todo:
        return out
    if log:
        log(f"statistics · computing the keys' second moment of layer(s) {', '.join(map(str, todo))} over "
            f"{tokens} tokens of {'the model' + chr(39) + 's own text' if corpus is None else corpus} (cached after)")
    off = adapter_off(model)
    was_training = model.training
    model.eval()
    try:
        with off:
            seqs = corpus_ids(model, fmt, corpus, tokens, folder, progress)
            sums = _accumulate(model, fmt, layout, todo, seqs, progress)
    finally:
        model.train(was_training)
    for layer in todo:
        out[layer] = sums[layer][0] / max(sums[layer][1], 1)
        # written whole under a temporary name, then renamed: a reader never sees half a file
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".layer-{layer}.", suffix=".tmp")
        os.close(fd)
        save_file({"mom2": out[layer]}, tmp, metadata={"tokens": str(sums[layer][1]), "corpus": corpus or "self"})
        os.replace(tmp, folder / f"layer-{layer}.safetensors")
    return out


def _accumulate(model, fmt, layout: Layout, layers: list[int], seqs: list[list[int]], progress: bool) -> dict:
    """Σ k kᵀ (float64) and the number of tokens, per layer, over `seqs` (one forward pass, hooked)."""
    sums = {layer: torch.zeros(layout.d_in, layout.d_in, dtype=torch.float64) for layer in layers}
    count = 0
    mask = None

    def hook(layer):
        def pre(module, args):
            k = args[0].detach().double()[mask.to(args[0].device).bool()]
            sums[layer].add_((k.T @ k).cpu())  # returns None: the input goes on unchanged
        return pre

    handles = [layout.module(model, layer).register_forward_pre_hook(hook(layer)) for layer in layers]
    device = next(model.parameters()).device
    pad = pad_id(fmt.tokenizer)
    try:
        with torch.no_grad(), tqdm(total=len(seqs), desc="statistics · keys", unit="seq",
                                   disable=not dist.show_bar(progress), leave=False) as bar:
            for start in range(0, len(seqs), CHUNK):
                part = seqs[start:start + CHUNK]
                T = max(map(len, part))
                x = torch.tensor([s + [pad] * (T - len(s)) for s in part])
                mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in part])
                model(input_ids=x.to(device), attention_mask=mask.to(device), use_cache=False)
                count += int(mask.sum())
                bar.update(len(part))
    finally:
        for h in handles:
            h.remove()
    return {layer: (sums[layer], count) for layer in layers}
