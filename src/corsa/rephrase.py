"""Other wordings of an edit's prompt, from a bank of relation templates (EditConfig.rephrase).

An adapter trained on one prompt learns that prompt; the fact should also answer the relation
asked in other words ("X is a citizen of" → "X, who holds a citizenship from"). MEMIT optimises
its target over many contexts of the subject for the same reason (Meng et al. 2023, §3.2,
Eq. 15's prefixes). Here the other contexts are the relation's other *templates*: a template is
a prompt with its subject replaced by ``{}``, and a relation is a set of templates that ask the
same thing.

The bundled bank (`data/relation_templates.json`) is built by this module's command from
CounterFact's **train** split (EasyEdit's `counterfact-train.json`), never from the records
being edited or evaluated: a record's prompt gives one template of its relation, and its
neighbourhood prompt (another subject, the same relation) a second one, matched against the
known templates; templates seen together are one relation (connected components). A template
that begins another one ("{} is located in" / "{} is located in the continent") could belong
to either relation and links nothing.

    python -m corsa.rephrase --from ../shared/data/counterfact/easyedit/counterfact-train.json \\
        --out src/corsa/data/relation_templates.json

An edit whose prompt is none of the bank's templates, or that has no subject, gets no other
wordings (`wordings` returns nothing), so the option is harmless on other data.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from collections import Counter
from importlib import resources
from pathlib import Path

from .errors import DataError
from .files import atomic_write_json, read_text_bounded
from .metrics import normalise

SLOT = "{}"
BUNDLED = "relation_templates.json"
MAX_BYTES = 16 * 2**20


def template_of(prompt: str, subject: str | None) -> str | None:
    """The prompt with its subject replaced by `{}`; None when the subject is not in it exactly once."""
    if not subject or prompt.count(subject) != 1 or SLOT in prompt:
        return None
    return " ".join(prompt.replace(subject, SLOT).split())


def _words(template: str) -> list[str]:
    return re.findall(r"[A-Za-z']+", template.replace(SLOT, ""))


def _matches(prompt: str, template: str) -> bool:
    """Whether `prompt` is `template` with a non-empty subject in its slot."""
    head, tail = template.split(SLOT)
    return prompt.startswith(head) and prompt.endswith(tail) and len(prompt) > len(head) + len(tail)


def build_bank(records: list[dict], min_count: int = 2, min_words: int = 2) -> list[list[str]]:
    """Relations as lists of templates, from records with `prompt`, `subject` and `locality_prompt`.

    A template is kept when at least `min_count` records use it as their prompt and it has at
    least `min_words` words besides the slot ("{}, the" is too loose to be a wording of one
    relation). Two templates are linked when a record's prompt has one and its neighbourhood
    prompt exactly one (the neighbourhood prompt's subject is not given, so it is matched against
    the kept templates); a relation is a connected set of linked templates. Two kinds of template
    could belong to two relations and link nothing: one that begins another kept template
    ("{} is located in" / "{} is located in the continent"), and a *bridge*, whose removal splits
    its set into two or more parts of at least two templates each ("{} is in" asks both the
    continent and the place: "{} belongs to the continent of" and "{} is within" meet only
    through it). Relations of one template are left out: they have no other wording.
    """
    counts = Counter(t for r in records if (t := template_of(r.get("prompt", ""), r.get("subject"))))
    kept = sorted(t for t, c in counts.items() if c >= min_count and len(_words(t)) >= min_words)
    loose = {t for t in kept if any(u != t and u.startswith(t) for u in kept)}
    links: dict[str, set[str]] = {t: set() for t in kept}
    for r in records:
        t = template_of(r.get("prompt", ""), r.get("subject"))
        other = " ".join(str(r.get("locality_prompt") or "").split())
        if t not in links or t in loose or not other:
            continue
        found = [u for u in kept if _matches(other, u)]
        if len(found) == 1 and found[0] != t and found[0] not in loose:
            links[t].add(found[0])
            links[found[0]].add(t)
    bridges = {t for group in _components(links, set()) for t in group
               if sum(len(part) >= 2 for part in _components(links, {t}, within=group)) >= 2}
    return sorted((sorted(g) for g in _components(links, bridges) if len(g) > 1), key=lambda g: g[0])


def _components(links: dict[str, set[str]], without: set[str], within: set[str] | None = None) -> list[set[str]]:
    """The connected sets of templates (of `within`, default all) once the templates `without` are cut out,
    each of which then stands alone."""
    nodes = set(links if within is None else within)
    seen: set[str] = set()
    out = []
    for start in sorted(nodes):
        if start in seen:
            continue
        group, todo = set(), [start]
        while todo:
            t = todo.pop()
            if t in group:
                continue
            group.add(t)
            if t not in without:
                todo.extend(u for u in links[t] if u in nodes and u not in without and u not in group)
        seen |= group
        out.append(group)
    return out


def probe_tails(probes: set[str]) -> set[str]:
    """Every word-aligned ending of the normalised probes (preserve.probe_prompts), built once per update.

    CounterFact's paraphrases are mostly another template of the relation behind a sentence of
    noise ("… . Ann Lee, who holds a citizenship from"); a wording that is such a paraphrase
    without its noise is that paraphrase, and is not trained.
    """
    return {" ".join(words[k:]) for p in probes if (words := p.split()) for k in range(len(words))}


class Bank:
    """Relation templates: for a prompt and its subject, the relation's other wordings."""

    def __init__(self, relations: list[list[str]], source: str = "<bank>"):
        self.relation: dict[str, tuple[str, ...]] = {}
        for k, group in enumerate(relations):
            if not isinstance(group, list) or not all(isinstance(t, str) and t.count(SLOT) == 1 for t in group):
                raise DataError("each relation must be a list of templates with exactly one '{}'",
                                path=source, record=k)
            for t in group:
                key = " ".join(t.split())
                if key in self.relation:
                    raise DataError(f"template {t!r} is in two relations", path=source, record=k)
                self.relation[key] = tuple(" ".join(u.split()) for u in group)

    def wordings(self, prompt: str, subject: str | None) -> list[str]:
        """The other templates of `prompt`'s relation, filled with `subject` (none if the prompt is no template)."""
        t = template_of(prompt, subject)
        if t is None or t not in self.relation:
            return []
        return [u.replace(SLOT, subject) for u in self.relation[t] if u != t]

    def unprobed(self, prompt: str, subject: str | None, tails: set[str]) -> list[str]:
        """`wordings` without those that an evaluation probe is or ends with (`tails`: `probe_tails`)."""
        return [w for w in self.wordings(prompt, subject) if normalise(w) not in tails]

    @classmethod
    def read(cls, path: str | Path | None = None) -> "Bank":
        """A bank file (JSON: {"relations": [[template, …], …]}); None: the bundled one."""
        if path is None:
            return _bundled()
        text = read_text_bounded(path, MAX_BYTES, "relation templates", DataError)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"not JSON: {e}", path=str(path)) from None
        if not isinstance(data, dict) or not isinstance(data.get("relations"), list):
            raise DataError("expected a JSON object with a list 'relations'", path=str(path))
        return cls(data["relations"], str(path))


@functools.lru_cache(maxsize=1)
def _bundled() -> Bank:
    text = resources.files("corsa").joinpath("data", BUNDLED).read_text(encoding="utf-8")
    return Bank(json.loads(text)["relations"], BUNDLED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corsa.rephrase",
                                     description="build a relation-template bank from CounterFact-style records")
    parser.add_argument("--from", dest="source", required=True,
                        help="JSON list of records with prompt, subject and locality_prompt (CounterFact's train split)")
    parser.add_argument("--out", required=True, help="the bank to write (JSON); an existing file is refused")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"error: {out} exists; corsa does not overwrite it (remove it first)")
    try:
        records = json.loads(read_text_bounded(args.source, 1 << 30, "records", DataError))
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise DataError("expected a JSON list of records (objects)", path=args.source)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: file {args.source}: not JSON: {e}") from None
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    relations = build_bank(records)
    atomic_write_json(out, {"source": Path(args.source).name, "records": len(records), "relations": relations})
    print(f"{out}: {len(relations)} relations, {sum(map(len, relations))} templates from {len(records)} records")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
