"""`corsa export`: merge an adapter into a full model folder for plain transformers or vLLM."""

from __future__ import annotations

from pathlib import Path

from .options import add_adapter, add_device, add_model, add_quiet, output_path, progress


def register(sub) -> None:
    x = sub.add_parser("export", help="merge an adapter into a full model folder (transformers, vLLM)")
    add_adapter(x, "a run or adapter folder", required=True)
    x.add_argument("--out", required=True, type=output_path,
                   help="the folder for the merged model (new, empty, or an earlier export)")
    add_model(x, " of the base model", default=None, default_text="the one the adapter was trained on, from its record")
    x.add_argument("--all-prompts", action="store_true",
                   help="export a scoped adapter (--scope subject) anyway: merged, it answers every prompt "
                        "with the edits applied")
    add_device(x)
    add_quiet(x)
    x.set_defaults(func=run)


def run(args) -> int:
    from ..export import export

    out = export(args.adapter, args.out, model=args.model, device=args.device, all_prompts=args.all_prompts,
                 progress=progress(args))
    print(f"merged model: {Path(out)} (load it with transformers' AutoModelForCausalLM.from_pretrained, or vLLM)")
    return 0
