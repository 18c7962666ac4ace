"""The edit-file formats corsa reads: one converter per format, and the table that detects them.

Each converter turns one raw record (:class:`corsa.raw_records.RawRecord`) into edits, with the
file's names for the fields the checks across edits talk about (method.md §7 gives the mappings);
:data:`BY_NAME` registers each with the keys that identify it. :mod:`corsa.loaders` reads the
file, detects the format and checks the edits against each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from .code.arena import edit_id, tasks_of
from .code.programs import fence, task_prompt
from .raw_records import RawRecord, field_name, kind
from .records import Edit, Probe


class Candidate(NamedTuple):
    """A converted edit and the file's names for its fields, for the checks across edits."""

    edit: Edit
    prompt_field: str
    new_field: str
    old_field: str | None


@dataclass(frozen=True)
class Format:
    name: str
    keys: frozenset[str]  # detection: a record of this format has all of these keys
    convert: Callable[[RawRecord, str], list[Candidate]]  # (record, source) -> edits
    id_field: str | None  # the field the edit ids are made from, for the duplicate-id error


def _fill(rec: RawRecord, *template_keys: str | int, subject: str) -> str:
    """A cloze prompt with ``{}`` standing for the subject (ROME and MQuAKE), filled in.

    ``str.replace`` rather than ``str.format``: a template with other braces must not crash.
    """
    template = rec.text(*template_keys)
    if "{}" not in template:
        raise rec.error(f"has no '{{}}' to put the subject {subject!r} in: {template!r}",
                        field_name(template_keys))
    return template.replace("{}", subject)


def _counterfact_easyedit(rec: RawRecord, source: str) -> list[Candidate]:
    """EasyEdit's flat CounterFact: one edit, one paraphrase, one locality probe."""
    edit_id = f"cf-{rec.ident('case_id')}"
    loc_prompt = rec.text("locality_prompt", optional=True)
    locality = (Probe(loc_prompt, rec.text("locality_ground_truth", optional=True)),) if loc_prompt else ()
    paraphrase = rec.text("rephrase_prompt", optional=True)
    edit = Edit(id=edit_id, prompt=rec.text("prompt"), target_new=rec.text("target_new"),
                target_old=rec.text("ground_truth"), subject=rec.text("subject", optional=True),
                paraphrases=(paraphrase,) if paraphrase else (), locality=locality, source=source)
    return [Candidate(edit, "prompt", "target_new", "ground_truth")]


def _counterfact_rome(rec: RawRecord, source: str) -> list[Candidate]:
    """ROME's CounterFact: the rewrite is a cloze template plus subject.

    In ROME a neighbourhood prompt's true answer is the edit's original object, so each one
    becomes a locality probe answered by ``target_true``. ``attribute_prompts`` and
    ``generation_prompts`` serve ROME's fluency and consistency scores and are not read.
    """
    subject = rec.text("requested_rewrite", "subject")
    target_old = rec.text("requested_rewrite", "target_true", "str")
    edit = Edit(id=f"cf-{rec.ident('case_id')}", prompt=_fill(rec, "requested_rewrite", "prompt", subject=subject),
                target_new=rec.text("requested_rewrite", "target_new", "str"), target_old=target_old,
                subject=subject, paraphrases=rec.texts("paraphrase_prompts"),
                locality=tuple(Probe(p, target_old) for p in rec.texts("neighborhood_prompts")), source=source)
    return [Candidate(edit, "requested_rewrite.prompt", "requested_rewrite.target_new.str",
                       "requested_rewrite.target_true.str")]


def _zsre(rec: RawRecord, source: str) -> list[Candidate]:
    """MEND's zsRE: a question, its true answers and a new one; an NQ question for locality."""
    loc = rec.text("loc", optional=True)
    locality = ()
    if loc:
        question = loc.removeprefix("nq question:").strip()
        if not question:
            raise rec.error("holds no question", "loc")
        question = question[0].upper() + question[1:]  # NQ writes its questions lower-case, without "?"
        question += "" if question.endswith("?") else "?"
        locality = (Probe(question, rec.text("loc_ans", optional=True)),)
    rephrase = rec.text("rephrase", optional=True)
    edit = Edit(id=f"zsre-{rec.index}", prompt=rec.text("src"), target_new=rec.text("alt"),
                target_old=rec.text("answers", 0, optional=True), subject=rec.text("subject", optional=True),
                paraphrases=(rephrase,) if rephrase else (), locality=locality, source=source)
    return [Candidate(edit, "src", "alt", "answers[0]")]


def _mquake(rec: RawRecord, source: str) -> list[Candidate]:
    """MQuAKE: every requested rewrite of a case is its own edit.

    The case's multi-hop questions, answered by ``new_answer``, follow from all of its edits
    together, so each edit of the case carries them as portability probes. MQuAKE-Remastered
    spells the targets ``target_new_str``/``target_true_str``; both spellings are read.
    """
    case_id = rec.ident("case_id")
    rewrites = rec.value("requested_rewrite")
    if not isinstance(rewrites, list) or not rewrites:
        raise rec.error(f"expected a non-empty list of rewrites, found {kind(rewrites)}", "requested_rewrite")
    answer, aliases = rec.text("new_answer"), rec.texts("new_answer_alias")
    portability = tuple(Probe(q, answer, aliases) for q in rec.texts("questions"))
    out = []
    for k in range(len(rewrites)):
        rw = ("requested_rewrite", k)
        remastered = isinstance(rewrites[k], dict) and "target_new_str" in rewrites[k]
        new_keys = (*rw, "target_new_str") if remastered else (*rw, "target_new", "str")
        old_keys = (*rw, "target_true_str") if remastered else (*rw, "target_true", "str")
        subject = rec.text(*rw, "subject")
        question = rec.text(*rw, "question", optional=True)
        edit = Edit(id=f"mquake-{case_id}-{k}", prompt=_fill(rec, *rw, "prompt", subject=subject),
                    target_new=rec.text(*new_keys), target_old=rec.text(*old_keys), subject=subject,
                    paraphrases=(question,) if question else (), portability=portability, source=source)
        out.append(Candidate(edit, field_name((*rw, "prompt")), field_name(new_keys), field_name(old_keys)))
    return out


def _codeupdatearena(rec: RawRecord, source: str) -> list[Candidate]:
    """CodeUpdateArena: one edit per program-synthesis task, as :mod:`corsa.code` defines it.

    x = the task's problem and solution signature, never the update's documentation
    (:func:`corsa.code.programs.task_prompt`); y⁺ = the reference solution, which uses the
    updated API, in a ```python block; y⁻ is not in the file: the one filler
    (:func:`corsa.old_answers.fill`) takes the program the unedited model writes. Both layouts
    (grouped, and the final ungrouped release) are read. `corsa bench` and `corsa eval` on such
    a file run the programs instead (Pass@k, :mod:`corsa.code.bench`).
    """
    return [Candidate(Edit(id=edit_id(task), prompt=task_prompt(task), target_new=fence(task.reference),
                            subject=task.update.function_path, source=source),
                       f"{where}problem", f"{where}ref_solution", None)
            for where, task in tasks_of(rec)]


_PLAIN_KEYS = ("id", "prompt", "target_new", "target_old", "subject", "paraphrases", "locality",
               "portability", "source")
_PROBE_KEYS = ("prompt", "answer", "aliases")


def _probes(rec: RawRecord, key: str) -> tuple[Probe, ...]:
    items = rec.value(key, optional=True)
    if items is None:
        return ()
    if not isinstance(items, list):
        raise rec.error(f"expected a list of {{prompt, answer}} objects, found {kind(items)}", key)
    probes = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise rec.error(f"expected a {{prompt, answer}} object, found {kind(item)}", f"{key}[{i}]")
        unknown = sorted(set(item) - set(_PROBE_KEYS))
        if unknown:
            raise rec.error(f"unknown key; a probe has {', '.join(_PROBE_KEYS)}", f"{key}[{i}].{unknown[0]}")
        probes.append(Probe(rec.text(key, i, "prompt"), rec.text(key, i, "answer", optional=True),
                            rec.texts(key, i, "aliases")))
    return tuple(probes)


def _plain(rec: RawRecord, source: str) -> list[Candidate]:
    """corsa's own format, the one :func:`save_edits_jsonl` writes (``Edit.to_dict``).

    Unknown keys are refused: a misspelt ``paraphrase`` or ``target-old`` would otherwise be
    ignored without a word and quietly change what is trained and measured.
    """
    unknown = sorted(set(rec.data) - set(_PLAIN_KEYS))
    if unknown:
        raise rec.error(f"unknown key; an edit has {', '.join(_PLAIN_KEYS)}", unknown[0])
    edit_id = rec.ident("id") if rec.value("id", optional=True) is not None else f"edit-{rec.index}"
    edit = Edit(id=edit_id, prompt=rec.text("prompt"),
                target_new=rec.text("target_new"), target_old=rec.text("target_old", optional=True),
                subject=rec.text("subject", optional=True), paraphrases=rec.texts("paraphrases"),
                locality=_probes(rec, "locality"), portability=_probes(rec, "portability"),
                source=rec.text("source", optional=True) or source)
    return [Candidate(edit, "prompt", "target_new", "target_old")]


# Detection tries the formats in this order and takes the first whose keys a record has, so a
# format whose keys include another's comes first (MQuAKE before ROME; plain edits, whose
# keys every flat format has, last).
BY_NAME: dict[str, Format] = {f.name: f for f in (
    Format("mquake", frozenset({"case_id", "requested_rewrite", "questions", "new_answer"}), _mquake, "case_id"),
    Format("counterfact-rome", frozenset({"case_id", "requested_rewrite"}), _counterfact_rome, "case_id"),
    Format("codeupdatearena", frozenset({"update"}), _codeupdatearena, "prog_syn_examples.prog_syn_id"),
    Format("codeupdatearena-ungrouped", frozenset({"prog_syn_id", "update_id"}), _codeupdatearena, "prog_syn_id"),
    Format("zsre", frozenset({"src", "alt"}), _zsre, None),  # ids are positions: never repeated
    Format("counterfact-easyedit", frozenset({"case_id", "prompt", "target_new", "ground_truth"}),
            _counterfact_easyedit, "case_id"),
    Format("plain", frozenset({"prompt", "target_new"}), _plain, "id"),
)}
FORMATS: tuple[str, ...] = tuple(BY_NAME)
# The plain format is the one to write by hand, in either container; users call it by either name.
ALIASES = {"json": "plain", "jsonl": "plain"}
