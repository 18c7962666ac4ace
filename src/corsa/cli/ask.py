"""`corsa ask`: greedy answers of the model, with an adapter (and its scope) if one is given."""

from __future__ import annotations

from ..config import ASK_NEW_TOKENS
from .options import add_adapter, add_device, add_model, add_template
from ..text import printable


def register(sub) -> None:
    a = sub.add_parser("ask", help="greedy answers of the model, with an adapter if given")
    a.add_argument("prompt", nargs="+", help="one or more prompts, each answered on its own")
    add_model(a)
    add_adapter(a, "a run or adapter folder; none: the unedited model")
    a.add_argument("--max-new-tokens", type=int, default=ASK_NEW_TOKENS,
                   help=f"tokens generated per answer (default: {ASK_NEW_TOKENS})")
    add_template(a)
    add_device(a)
    a.set_defaults(func=run)


def run(args) -> int:
    from ..api import ask

    answers = ask(args.prompt, model=args.model, adapter=args.adapter, max_new_tokens=args.max_new_tokens,
                  template=args.template, device=args.device)
    for prompt, answer in zip(args.prompt, answers):
        print(printable(f"{prompt} → {answer}" if len(args.prompt) > 1 else answer))
    return 0
