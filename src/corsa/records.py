"""The one edit record every loader produces and every part of corsa consumes."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Probe:
    """A prompt with an expected answer (a locality probe or a multi-hop question)."""

    prompt: str
    answer: str | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Edit:
    """One fact to write into the model: prompt x, new answer y⁺, old answer y⁻ (method.md §1).

    ``target_old`` may be ``None`` when the file does not give it; :meth:`corsa.Editor.fill_old_targets`
    then takes the model's own greedy answer. ``paraphrases`` are rephrasings of ``prompt`` that
    should also give y⁺ (generality); ``locality`` are probes whose answers must not change;
    ``portability`` are multi-hop questions whose answer follows from the edit (MQuAKE).
    """

    id: str
    prompt: str
    target_new: str
    target_old: str | None = None
    subject: str | None = None
    paraphrases: tuple[str, ...] = ()
    locality: tuple[Probe, ...] = ()
    portability: tuple[Probe, ...] = ()
    source: str | None = None  # the file (and format) the record came from

    def to_dict(self) -> dict:
        d = asdict(self)
        d["paraphrases"] = list(self.paraphrases)
        d["locality"] = [asdict(p) | {"aliases": list(p.aliases)} for p in self.locality]
        d["portability"] = [asdict(p) | {"aliases": list(p.aliases)} for p in self.portability]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Edit":
        def probes(items):
            return tuple(Probe(p["prompt"], p.get("answer"), tuple(p.get("aliases", ()))) for p in items or ())

        return cls(
            id=str(d["id"]), prompt=d["prompt"], target_new=d["target_new"],
            target_old=d.get("target_old"), subject=d.get("subject"),
            paraphrases=tuple(d.get("paraphrases", ())), locality=probes(d.get("locality")),
            portability=probes(d.get("portability")), source=d.get("source"),
        )
