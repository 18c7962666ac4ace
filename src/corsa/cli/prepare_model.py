"""`corsa prepare-model`: convert a bundled model alias once into the cache."""

from __future__ import annotations


from ..config import DEFAULT_MODEL


def register(sub) -> None:
    m = sub.add_parser("prepare-model", help="convert a bundled model alias once into the cache")
    m.add_argument("name", nargs="?", default=DEFAULT_MODEL,
                   help=f"the alias to prepare (default: {DEFAULT_MODEL}); the cache is $CORSA_CACHE")
    m.set_defaults(func=run)


def run(args) -> int:
    from ..models import prepare_alias

    path = prepare_alias(args.name, verify=True)  # a damaged conversion is made again
    print(f"{args.name}: ready at {path}")
    return 0
