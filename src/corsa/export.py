"""`corsa export`: merge a saved adapter into a full model folder that plain transformers and vLLM load.

The merged weights are θ + (α/r)·B·A for every LoRA layer (PEFT's ``merge_and_unload``): the same
model that answers with the adapter, as one safetensors checkpoint with its tokenizer and chat
template. What a merge cannot keep is a scope (`--scope subject`): the gate that lets only
prompts naming an edited subject reach the adapter is not a weight, so a merged scoped adapter
answers every prompt as if edited. That is refused unless the caller accepts it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import adapter as adapters
from .api import Editor
from .errors import ConfigError, CorsaError
from .files import read_bounded, sha256_file
from .locks import output_lock
from .machine import library_versions
from .ownership import check_not_inside, check_ours, manifest
from .publish import check_writable, publish_contents
from .models import hub_id
from .text import printable

EXPORT_MARKER = "corsa-export.json"


def export(adapter: str | os.PathLike, out: str | os.PathLike, model: str | None = None,
           device: str | None = None, all_prompts: bool = False, progress: bool = True) -> Path:
    """Write the base model with `adapter` merged into `out`; returns `out`.

    model: the base model; by default the one the adapter was trained on (its record says).
    all_prompts: export a scoped adapter anyway, knowing the merged model answers every prompt edited.
    """
    folder = adapters.find_adapter_dir(adapter)
    saved = adapters.marker(folder)
    model = model or saved.get("model")
    if not model:
        raise ConfigError(f"adapter {folder} does not record its base model; name it with --model")
    scope = saved.get("scope") or "all"
    if scope != "all" and not all_prompts:
        raise ConfigError(f"adapter {folder} answers only prompts that name an edited subject (scope "
                          f"'{scope}'); merged weights cannot keep that gate, so the exported model would answer "
                          f"every prompt with the edits applied and unrelated answers may change. Pass "
                          f"--all-prompts to export it so, or keep serving the adapter with its scope")
    out = Path(out)
    check_not_inside({"--adapter": folder, "--model": model if Path(model).exists() else None}, out)
    check_ours(out, "export")
    check_writable(out, need_bytes=0)
    with output_lock(out, "export"):
        editor = Editor(model, adapter=folder, device=device, progress=progress)  # any method's adapter
        check_ours(out, "export")  # again under the lock: nothing came in while the model loaded
        merged = editor.model.merge_and_unload()
        name = hub_id(str(model))
        if name:  # the checkpoint names its base model as the hub knows it, not a machine-local cache path
            merged.config._name_or_path = name
        edits = editor.history
        run = _run_record(folder)
        check_writable(out, need_bytes=sum(p.numel() * p.element_size() for p in merged.parameters()))
        # written complete beside the old export, then put in place together (a kill leaves one or the other)
        with publish_contents(out, kind="export") as tmp:
            merged.save_pretrained(str(tmp), safe_serialization=True)
            editor.tokenizer.save_pretrained(str(tmp))  # the chat template travels with the tokenizer
            (tmp / "README.md").write_text(model_card(str(model), name, edits, run, scope), encoding="utf-8")
            # written last, listing every file of the export: what makes the folder provably corsa's
            (tmp / EXPORT_MARKER).write_text(json.dumps({
                "corsa_export": 1, "base_model": str(model), "base_hub_id": name,
                "base_fingerprint": editor.fingerprint, "adapter": str(folder.resolve()),
                "adapter_sha256": sha256_file(folder / adapters.ADAPTER_WEIGHTS), "scope": scope,
                "edits": len(edits), "versions": library_versions(),
                "files": manifest(tmp, [f.name for f in tmp.iterdir()]),
            }, indent=2, ensure_ascii=False) + "\n")
    return out


def _run_record(folder: Path) -> dict:
    """The run record beside the adapter (`corsa edit` writes one), with the last evaluation if any."""
    record = {}
    for name in ("run.json", "eval.json"):
        path = folder.parent / name
        try:
            data = json.loads(read_bounded(path, 64 * 2**20, name))
        except (CorsaError, ValueError, RecursionError):
            continue
        if isinstance(data, dict):
            record[name] = data
    return record


def model_card(model: str, hub: str | None, edits, run: dict, scope: str) -> str:
    """A model card: the base model, the edits it holds, the method and settings, the last evaluation."""
    config = (run.get("run.json") or {}).get("config") or {}
    lines = ["---", f"base_model: {hub}" if hub else f"# base model: {model}", "tags: [knowledge-editing, corsa]", "---",
             "", "# An edited model made with corsa", "",
             f"Base model: `{hub or model}`. The corsa adapter that held the edits was merged into its weights "
             f"(θ + (α/r)·B·A per LoRA layer)."]
    if scope != "all":
        lines.append(f"The adapter was scoped ('{scope}'); merged, the model answers every prompt with the edits applied.")
    if config:
        keys = ("method", "lr", "epochs", "batch_size", "rho", "beta", "lora_r", "lora_alpha", "seed")
        lines += ["", "## Method and settings", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {config[k]} |" for k in keys if k in config]
    lines += ["", f"## Edits ({len(edits)})", "", "| id | prompt | new answer | old answer |", "|---|---|---|---|"]
    cell = lambda text: printable(str(text or "")).replace("|", "\\|")  # noqa: E731
    lines += [f"| {cell(e.id)} | {cell(e.prompt)} | {cell(e.target_new)} | {cell(e.target_old)} |" for e in edits]
    metrics = (run.get("eval.json") or {}).get("metrics")
    if metrics:
        lines += ["", "## Last evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"
