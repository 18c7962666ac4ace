"""Read edit files of every supported benchmark into :class:`~corsa.records.Edit` records.

One function per format turns a raw record into edits (method.md §7 gives the mappings); the
``_FORMATS`` table registers each with the keys that identify it:

- ``mquake``: MQuAKE and MQuAKE-Remastered; each of a case's rewrites is an edit;
- ``counterfact-rome``: ROME's CounterFact (``requested_rewrite``, ``paraphrase_prompts``, ...);
- ``codeupdatearena``, ``codeupdatearena-ungrouped``: CodeUpdateArena, one edit per program-synthesis
  task (see its function; :mod:`corsa.code` runs the programs);
- ``zsre``: MEND's zsRE (``src``, ``alt``, ``answers``, ``rephrase``, ``loc``);
- ``counterfact-easyedit``: EasyEdit's flat CounterFact (``prompt``, ``ground_truth``, ...);
- ``plain`` (also called ``json`` and ``jsonl``): corsa's own records, as ``Edit.to_dict`` writes them.

:func:`load_edits` reads the file (a JSON list, one JSON object, or JSON Lines), detects the
format, converts the records in order and checks each against the ones before it. Every problem
raises :class:`~corsa.errors.DataError` naming the file, the record and the field, so a user
never sees a traceback from in here.

Published benchmarks hold records that cannot be trained as they stand:

- a new answer equal to the old one (17 zsRE records) or empty (2 more): with y⁺ = y⁻ DPO's
  margin log p(y⁺) − log p(y⁻) is 0 whatever the adapter does, so the edit can never hold;
- a prompt an earlier record gave another new answer (79 records of CounterFact's edit split,
  2 MQuAKE-hard cases): trained together, only one answer can hold.

By default these raise like any other error; ``on_invalid="skip"`` drops such records whole
(the first answer a prompt is given wins) and logs how many were dropped.
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .code.arena import edit_id, tasks_of
from .code.programs import fence, task_prompt
from .errors import ConfigError, DataError
from .files import atomic_write_text, jsonl_lines, jsonl_text, read_bounded
from .metrics import normalise
from .records import Edit, Probe

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 2**30  # an edit file larger than this is refused before it is read
ON_INVALID = ("error", "skip")  # what load_edits does with a bad record: raise, or drop it and log


def _kind(value: Any) -> str:
    """How a JSON value reads in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"true/false ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _field_name(keys: tuple[str | int, ...]) -> str:
    """``("requested_rewrite", 2, "target_new", "str")`` -> ``requested_rewrite[2].target_new.str``."""
    name = ""
    for key in keys:
        name += f"[{key}]" if isinstance(key, int) else (f".{key}" if name else key)
    return name


def _norm(text: str) -> str:
    """The form two answers or prompts are compared in: the answer matcher's (corsa.metrics.normalise).

    NFKC, case folded, whitespace collapsed, sentence punctuation stripped from the ends, so
    "Paris", "PARIS." and the full-width "Ｐａｒｉｓ" are one answer here as they are when scored.
    """
    return normalise(text)


def _visible(text: str) -> bool:
    """Whether `text` holds a character one can see (not only spaces, zero-width marks or a BOM)."""
    # a combining mark (Mn, Me) is drawn on the character before it: alone it shows nothing to read
    return any(not c.isspace() and unicodedata.category(c) not in ("Cf", "Cc", "Zs", "Zl", "Zp", "Mn", "Me")
               for c in text)


def _no_duplicate_keys(pairs: list) -> dict:
    """A JSON object, refused when it names one key twice (json would keep the last silently)."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice in one object")
        seen[key] = value
    return seen


class _Record:
    """One raw record and where it sits in its file, so that every error can say where."""

    def __init__(self, data: Any, path: Path, index: int, line: int | None, hint: str = ""):
        self.data, self.path, self.index, self.line = data, path, index, line
        self.hint = hint  # appended to every message: how to get past a bad record


    def name(self, edit_id: str | None = None) -> str:
        """The record as error messages name it: its index, its line in JSONL, the edit id."""
        if edit_id is None and isinstance(self.data, dict) and isinstance(self.data.get("id"), (str, int)):
            edit_id = str(self.data["id"])
        extra = [f"line {self.line}"] if self.line is not None else []
        extra += [f"id {edit_id}"] if edit_id is not None else []
        return f"{self.index} ({', '.join(extra)})" if extra else str(self.index)

    def error(self, message: str, field: str | None = None, edit_id: str | None = None) -> DataError:
        return DataError(message + self.hint, path=str(self.path), record=self.name(edit_id), field=field)

    def value(self, *keys: str | int, optional: bool = False) -> Any:
        """The value under ``keys`` (object keys and list indices); None if optional and absent.

        A null value counts as absent: several published files write ``null`` for "not given".
        """
        node = self.data
        for depth, key in enumerate(keys):
            container = (dict, "an object") if isinstance(key, str) else (list, "a list")
            if not isinstance(node, container[0]):
                where = _field_name(keys[:depth]) or None
                raise self.error(f"expected {container[1]}, found {_kind(node)}", where)
            present = key in node if isinstance(key, str) else key < len(node)
            if not present or node[key] is None:
                if optional:
                    return None
                raise self.error("is missing" if not present else "is null", _field_name(keys[:depth + 1]))
            node = node[key]
        return node

    def text(self, *keys: str | int, optional: bool = False) -> str | None:
        """A non-empty string with its outer whitespace stripped."""
        value = self.value(*keys, optional=optional)
        if value is None:
            return None
        field = _field_name(keys)
        if not isinstance(value, str):
            raise self.error(f"expected text, found {_kind(value)}", field)
        value = value.strip()
        if not value:
            raise self.error("is empty", field)
        if not _visible(value):
            raise self.error("holds no visible character (only zero-width or control characters)", field)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a "\udxxx" escape: not text at all
            raise self.error("is not valid Unicode text (it holds a lone surrogate)", field) from None
        return value

    def texts(self, *keys: str | int) -> tuple[str, ...]:
        """A list of non-empty strings; an absent list is empty."""
        value = self.value(*keys, optional=True)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(f"expected a list of text, found {_kind(value)}", _field_name(keys))
        return tuple(self.text(*keys, i) for i in range(len(value)))

    def ident(self, *keys: str | int) -> str:
        """An identifier given as text or as a whole number (benchmarks number their cases)."""
        value = self.value(*keys)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise self.error(f"expected text or a whole number, found {_kind(value)}", _field_name(keys))
        return self.text(*keys)


class _Candidate(NamedTuple):
    """A converted edit and the file's names for its fields, for the checks across edits."""

    edit: Edit
    prompt_field: str
    new_field: str
    old_field: str | None


@dataclass(frozen=True)
class _Format:
    name: str
    keys: frozenset[str]  # detection: a record of this format has all of these keys
    convert: Callable[[_Record, str], list[_Candidate]]  # (record, source) -> edits
    id_field: str | None  # the field the edit ids are made from, for the duplicate-id error


def _fill(rec: _Record, *template_keys: str | int, subject: str) -> str:
    """A cloze prompt with ``{}`` standing for the subject (ROME and MQuAKE), filled in.

    ``str.replace`` rather than ``str.format``: a template with other braces must not crash.
    """
    template = rec.text(*template_keys)
    if "{}" not in template:
        raise rec.error(f"has no '{{}}' to put the subject {subject!r} in: {template!r}",
                        _field_name(template_keys))
    return template.replace("{}", subject)


def _counterfact_easyedit(rec: _Record, source: str) -> list[_Candidate]:
    """EasyEdit's flat CounterFact: one edit, one paraphrase, one locality probe."""
    edit_id = f"cf-{rec.ident('case_id')}"
    loc_prompt = rec.text("locality_prompt", optional=True)
    locality = (Probe(loc_prompt, rec.text("locality_ground_truth", optional=True)),) if loc_prompt else ()
    paraphrase = rec.text("rephrase_prompt", optional=True)
    edit = Edit(id=edit_id, prompt=rec.text("prompt"), target_new=rec.text("target_new"),
                target_old=rec.text("ground_truth"), subject=rec.text("subject", optional=True),
                paraphrases=(paraphrase,) if paraphrase else (), locality=locality, source=source)
    return [_Candidate(edit, "prompt", "target_new", "ground_truth")]


def _counterfact_rome(rec: _Record, source: str) -> list[_Candidate]:
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
    return [_Candidate(edit, "requested_rewrite.prompt", "requested_rewrite.target_new.str",
                       "requested_rewrite.target_true.str")]


def _zsre(rec: _Record, source: str) -> list[_Candidate]:
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
    return [_Candidate(edit, "src", "alt", "answers[0]")]


def _mquake(rec: _Record, source: str) -> list[_Candidate]:
    """MQuAKE: every requested rewrite of a case is its own edit.

    The case's multi-hop questions, answered by ``new_answer``, follow from all of its edits
    together, so each edit of the case carries them as portability probes. MQuAKE-Remastered
    spells the targets ``target_new_str``/``target_true_str``; both spellings are read.
    """
    case_id = rec.ident("case_id")
    rewrites = rec.value("requested_rewrite")
    if not isinstance(rewrites, list) or not rewrites:
        raise rec.error(f"expected a non-empty list of rewrites, found {_kind(rewrites)}", "requested_rewrite")
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
        out.append(_Candidate(edit, _field_name((*rw, "prompt")), _field_name(new_keys), _field_name(old_keys)))
    return out


def _codeupdatearena(rec: _Record, source: str) -> list[_Candidate]:
    """CodeUpdateArena: one edit per program-synthesis task, as :mod:`corsa.code` defines it.

    x = the task's problem and solution signature, never the update's documentation
    (:func:`corsa.code.programs.task_prompt`); y⁺ = the reference solution, which uses the
    updated API, in a ```python block; y⁻ is not in the file: the one filler
    (:func:`corsa.old_answers.fill`) takes the program the unedited model writes. Both layouts
    (grouped, and the final ungrouped release) are read. `corsa bench` and `corsa eval` on such
    a file run the programs instead (Pass@k, :mod:`corsa.code.bench`).
    """
    return [_Candidate(Edit(id=edit_id(task), prompt=task_prompt(task), target_new=fence(task.reference),
                            subject=task.update.function_path, source=source),
                       f"{where}problem", f"{where}ref_solution", None)
            for where, task in tasks_of(rec)]


_PLAIN_KEYS = ("id", "prompt", "target_new", "target_old", "subject", "paraphrases", "locality",
               "portability", "source")
_PROBE_KEYS = ("prompt", "answer", "aliases")


def _probes(rec: _Record, key: str) -> tuple[Probe, ...]:
    items = rec.value(key, optional=True)
    if items is None:
        return ()
    if not isinstance(items, list):
        raise rec.error(f"expected a list of {{prompt, answer}} objects, found {_kind(items)}", key)
    probes = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise rec.error(f"expected a {{prompt, answer}} object, found {_kind(item)}", f"{key}[{i}]")
        unknown = sorted(set(item) - set(_PROBE_KEYS))
        if unknown:
            raise rec.error(f"unknown key; a probe has {', '.join(_PROBE_KEYS)}", f"{key}[{i}].{unknown[0]}")
        probes.append(Probe(rec.text(key, i, "prompt"), rec.text(key, i, "answer", optional=True),
                            rec.texts(key, i, "aliases")))
    return tuple(probes)


def _plain(rec: _Record, source: str) -> list[_Candidate]:
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
    return [_Candidate(edit, "prompt", "target_new", "target_old")]


# Detection tries the formats in this order and takes the first whose keys a record has, so a
# format whose keys include another's comes first (MQuAKE before ROME; plain edits, whose
# keys every flat format has, last).
_FORMATS: dict[str, _Format] = {f.name: f for f in (
    _Format("mquake", frozenset({"case_id", "requested_rewrite", "questions", "new_answer"}), _mquake, "case_id"),
    _Format("counterfact-rome", frozenset({"case_id", "requested_rewrite"}), _counterfact_rome, "case_id"),
    _Format("codeupdatearena", frozenset({"update"}), _codeupdatearena, "prog_syn_examples.prog_syn_id"),
    _Format("codeupdatearena-ungrouped", frozenset({"prog_syn_id", "update_id"}), _codeupdatearena, "prog_syn_id"),
    _Format("zsre", frozenset({"src", "alt"}), _zsre, None),  # ids are positions: never repeated
    _Format("counterfact-easyedit", frozenset({"case_id", "prompt", "target_new", "ground_truth"}),
            _counterfact_easyedit, "case_id"),
    _Format("plain", frozenset({"prompt", "target_new"}), _plain, "id"),
)}
FORMATS: tuple[str, ...] = tuple(_FORMATS)
# The plain format is the one to write by hand, in either container; users call it by either name.
_ALIASES = {"json": "plain", "jsonl": "plain"}


def records_of(path: str | os.PathLike) -> list[_Record]:
    """The raw records of a JSON or JSON Lines file, each knowing where it sits in the file (for
    readers of other record kinds: corsa.code.arena_file)."""
    path = Path(path)
    records, lines = _read_records(path)
    return [_Record(data, path, i, lines[i] if lines else None) for i, data in enumerate(records)]


def _read_records(path: Path) -> tuple[list, list[int] | None]:
    """The file's records and, for JSON Lines, the line each came from.

    A file that parses as one JSON document is a list of records (or a single record); any
    other file is read as JSON Lines, so that an error can point at the bad line.
    """
    if not path.exists():
        raise DataError("the file does not exist", path=str(path))
    if path.is_dir():
        raise DataError("is a folder; give the edit file inside it", path=str(path))
    if not path.is_file():  # a device (/dev/zero), a pipe without a writer, a socket: never read
        raise DataError("is not a regular file (a device, pipe or socket); give an edit file", path=str(path))
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DataError(f"is {path.stat().st_size / 2**30:.1f} GiB, more than the {MAX_FILE_BYTES // 2**30} GiB an "
                        f"edit file may be; split it", path=str(path))
    class _Unreadable(Exception):  # read_bounded's message, carried into a DataError naming the file
        pass

    try:  # checked again on the open descriptor: the file may have been swapped (a FIFO) since
        raw = read_bounded(path, MAX_FILE_BYTES, "the edit file", _Unreadable)
    except _Unreadable as e:
        raise DataError(str(e).replace(f"the edit file {path} ", "", 1), path=str(path)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"is not UTF-8 text (bad byte at offset {e.start})", path=str(path)) from None
    if not text.strip():
        raise DataError("the file is empty", path=str(path))
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise DataError("the JSON is nested too deeply to be edit records", path=str(path)) from None
    except ValueError as whole:
        if text.lstrip().startswith("["):  # meant as one JSON list: report where it breaks
            raise DataError(_json_problem(whole), path=str(path)) from None
        return _read_jsonl(path, text)
    if isinstance(data, dict):
        return [data], None
    if not isinstance(data, list):
        raise DataError(f"the file holds {_kind(data)}; expected a JSON list of edit records or one "
                        f"JSON object per line", path=str(path))
    return data, None


def _read_jsonl(path: Path, text: str) -> tuple[list, list[int]]:
    records, lines = [], []
    # corsa's one JSONL reader (split at "\n" only: str.splitlines would also split at U+2028 and
    # friends, which JSON allows unescaped inside strings)
    for number, line in jsonl_lines(text):
        try:
            records.append(json.loads(line, object_pairs_hook=_no_duplicate_keys))
        except RecursionError:
            raise DataError(f"line {number}: the JSON is nested too deeply", path=str(path)) from None
        except ValueError as e:
            raise DataError(f"line {number}: {_json_problem(e)}", path=str(path)) from None
        lines.append(number)
    return records, lines


def _json_problem(e: ValueError) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
    return f"invalid JSON: {e}"  # e.g. an integer with more digits than Python will parse


def _format_problem(first: Any, path: str | None, wanted: str | None = None) -> DataError | None:
    """Why the first record does not fit the format asked for (None if it fits)."""
    if not isinstance(first, dict):
        return DataError(f"expected an object (an edit record), found {_kind(first)}", path=path, record=0)
    keys = ", ".join(sorted(map(str, first))[:20]) or "none"
    if wanted is None:
        known = "; ".join(f"{f.name} ({', '.join(sorted(f.keys))})" for f in _FORMATS.values())
        return DataError(f"no known format has these keys: {keys}. Known formats and the keys "
                         f"that identify them: {known}", path=path, record=0)
    missing = sorted(_FORMATS[wanted].keys - set(first))
    if not missing:
        return None
    guess = next((f.name for f in _FORMATS.values() if f.keys <= set(first)), None)
    hint = f"; the records look like format '{guess}'" if guess else ""
    return DataError(f"is not in format '{wanted}', which needs the keys "
                     f"{', '.join(sorted(_FORMATS[wanted].keys))}; the record has: {keys}{hint}",
                     path=path, record=0, field=missing[0])


def detect_format(records: list, *, path: str | None = None) -> str:
    """The name of the format the records are in, from the keys of the first record.

    The formats are tried in the order of :data:`FORMATS`; the first whose identifying keys
    the record has wins. ``path`` only names the file in the error raised when none fits.
    """
    if not records:
        raise DataError("holds no records", path=path)
    first = records[0]
    if isinstance(first, dict):
        for fmt in _FORMATS.values():
            if fmt.keys <= set(first):
                return fmt.name
        # a user's own record that lacks prompt or target_new: read it as plain, so the error
        # names the missing field instead of listing every format
        if {"prompt", "target_new"} & set(first) and not {"case_id", "src", "update"} & set(first):
            return "plain"
    raise _format_problem(first, path)


def check_trained_edit(record, where: str = "trained edits") -> Edit:
    """The checks of one plain record (a dict as Edit.to_dict writes it), for an edit read back from an
    adapter's record; returns the Edit. Not the checks across edits: a continued adapter may hold two
    edits of one id, and a filled y⁻ may equal y⁺."""
    rec = _Record(record, Path(where), 0, None)
    if not isinstance(record, dict):
        raise rec.error(f"expected an object (an edit record), found {_kind(record)}")
    if not isinstance(record.get("id"), str):
        raise rec.error("expected text", "id")
    _plain(rec, "")
    return Edit.from_dict(record)  # as written: the checks strip nothing from what replay trains


def _probe_conflicts(rec: _Record, edit: Edit, answers: dict, probes: dict) -> None:
    """Refuse a paraphrase or locality probe that is another edit's prompt asked for something else.

    answers: normalised edit prompt -> (normalised y⁺, y⁺, record); probes: normalised probe prompt ->
    (field, normalised expected answer or None, record, the edit's normalised y⁺).
    """
    mine = [(f"paraphrases[{i}]", _norm(p), _norm(edit.target_new)) for i, p in enumerate(edit.paraphrases)]
    mine += [(f"locality[{i}].prompt", _norm(p.prompt), _norm(p.answer) if p.answer else None)
             for i, p in enumerate(edit.locality)]
    for field, prompt, want in mine:
        earlier = answers.get(prompt)
        if earlier is not None and (field.startswith("locality") or earlier[0] != want):
            raise rec.error(f"is the prompt of the edit in record {earlier[2]}, which answers {earlier[1]!r}; a "
                            f"{'locality probe must keep its answer' if field.startswith('locality') else 'paraphrase must give this edit answer'}"
                            f", so one set of edits cannot hold both", field, edit.id)
    clash = probes.get(_norm(edit.prompt))
    if clash is not None and (clash[0].startswith("locality") or clash[3] != _norm(edit.target_new)):
        raise rec.error(f"is the {clash[0].split('[')[0]} probe of record {clash[2]}, which expects "
                        f"{'its answer to stay unchanged' if clash[0].startswith('locality') else 'another answer'}; "
                        f"one set of edits cannot hold both", "prompt", edit.id)


def _take(rec: _Record, fmt: str, source: str, ids: dict[str, str],
          answers: dict[str, tuple[str, str, str]], probes: dict | None = None) -> list[Edit]:
    """Convert one record and check its edits against the ones taken before it.

    ``ids`` maps each id taken to its record; ``answers`` maps each normalised prompt taken to
    (normalised new answer, new answer, record). Both grow only when the whole record passes,
    so a skipped record leaves no trace.
    """
    if not isinstance(rec.data, dict):
        raise rec.error(f"expected an object (an edit record), found {_kind(rec.data)}")
    candidates = _FORMATS[fmt].convert(rec, source)
    new_ids: dict[str, str] = {}
    new_answers: dict[str, tuple[str, str, str]] = {}
    for cand in candidates:
        edit = cand.edit
        if edit.id in ids or edit.id in new_ids:  # results are keyed by id: two edits cannot share one
            raise rec.error(f"the id {edit.id!r} is already used by record {ids.get(edit.id) or new_ids[edit.id]}",
                            _FORMATS[fmt].id_field, edit.id)
        if edit.target_old is not None and _norm(edit.target_new) == _norm(edit.target_old):
            raise rec.error(f"the new answer {edit.target_new!r} is the old answer ({cand.old_field}), so there "
                            f"is nothing to edit", cand.new_field, edit.id)
        prompt, answer = _norm(edit.prompt), _norm(edit.target_new)
        earlier = answers.get(prompt) or new_answers.get(prompt)
        if earlier is not None and earlier[0] != answer:
            raise rec.error(f"the prompt {edit.prompt!r} is asked to answer {edit.target_new!r} here but "
                            f"{earlier[1]!r} in record {earlier[2]}; one set of edits cannot hold both",
                            cand.prompt_field, edit.id)
        if probes is not None:
            _probe_conflicts(rec, edit, {**answers, **new_answers}, probes)
        new_ids[edit.id] = rec.name()
        new_answers.setdefault(prompt, (answer, edit.target_new, rec.name(edit.id)))
    ids.update(new_ids)
    if probes is not None:
        for cand in candidates:
            e = cand.edit
            for i, p in enumerate(e.paraphrases):
                probes.setdefault(_norm(p), (f"paraphrases[{i}]", None, rec.name(e.id), _norm(e.target_new)))
            for i, p in enumerate(e.locality):
                probes.setdefault(_norm(p.prompt), (f"locality[{i}]", None, rec.name(e.id), _norm(e.target_new)))
    for prompt, first in new_answers.items():
        answers.setdefault(prompt, first)
    return [cand.edit for cand in candidates]


def load_edits(path: str | os.PathLike, format: str = "auto", limit: int | None = None, *,
               on_invalid: str = "error") -> list[Edit]:
    """Read an edit file into :class:`~corsa.records.Edit` records (method.md §7).

    path: a JSON list of records, a single JSON record, or JSON Lines (one record per line).
    format: one of :data:`FORMATS` (``json`` and ``jsonl`` name the plain format), or ``auto``
    to detect it from the first record's keys (:func:`detect_format`).
    limit: return the first ``limit`` edits after conversion (an MQuAKE case gives several).
    Records are read in order until the limit is reached; those after it are not checked, so
    a clean head of a file with problems further on can be used.
    on_invalid: ``error`` raises :class:`DataError` at the first bad record; ``skip`` drops bad
    records whole (an MQuAKE case with all its edits) and logs how many. Problems with the file
    itself (missing, not JSON, unknown format) always raise.

    A record is bad when a field is missing, empty or not text where text is expected; when an
    edit's new answer equals its old one, or its prompt was already given a different new
    answer (compared with whitespace collapsed and case folded); or when its id is taken.
    Strings are stripped of outer whitespace. ``Edit.source`` is ``"<format>:<file name>"``, except
    that a plain record keeps the ``source`` it was saved with.
    """
    fmt = _ALIASES.get(format, format)
    if fmt != "auto" and fmt not in _FORMATS:
        raise ConfigError(f"unknown edit format {format!r}; choose auto, json, jsonl or one of {', '.join(FORMATS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive whole number of edits or None, not {limit!r}")
    if on_invalid not in ON_INVALID:
        raise ConfigError(f"on_invalid must be one of {', '.join(ON_INVALID)}, not {on_invalid!r}")
    path = Path(path)
    records, lines = _read_records(path)
    return _edits(records, lines, path, fmt, limit, on_invalid)


def edits_from_records(records: list, limit: int | None = None, *, on_invalid: str = "error",
                       where: str = "<edits given in Python>") -> list[Edit]:
    """Edits from records already in memory (dicts in any format :func:`load_edits` reads).

    The same checks and messages as a file's, each naming `where` and the record's index, so
    the Python API refuses what `corsa edit` refuses: an empty prompt, new == old, one prompt
    with two answers, a repeated id, an unknown (misspelt) key.
    """
    if on_invalid not in ON_INVALID:
        raise ConfigError(f"on_invalid must be one of {', '.join(ON_INVALID)}, not {on_invalid!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive whole number of edits or None, not {limit!r}")
    if not isinstance(records, list) or not records:
        raise DataError("no edits: give a non-empty list of edit records", path=where)
    return _edits(records, None, Path(where), "auto", limit, on_invalid)


def _edits(records: list, lines, path: Path, fmt: str, limit, on_invalid) -> list[Edit]:
    """The checked edits of `records` read from `path` (see :func:`load_edits`)."""
    if fmt == "auto":
        fmt = detect_format(records, path=str(path))
    elif not records:
        raise DataError("holds no records", path=str(path))
    elif (problem := _format_problem(records[0], str(path), fmt)) is not None:
        raise problem
    source = f"{fmt}:{path.name}"
    hint = " (or drop such records with --skip-invalid, on_invalid='skip' in Python)" if on_invalid == "error" else ""
    edits: list[Edit] = []
    ids: dict[str, str] = {}
    answers: dict[str, tuple[str, str, str]] = {}
    probes: dict = {}
    dropped: list[DataError] = []
    read = 0
    for index, data in enumerate(records):
        if limit is not None and len(edits) >= limit:
            break
        read += 1
        rec = _Record(data, path, index, lines[index] if lines else None, hint)
        try:
            edits += _take(rec, fmt, source, ids, answers, probes if fmt == "plain" else None)
        except DataError as e:
            if on_invalid == "error":
                raise
            dropped.append(e)
    if dropped:
        log.warning("%s: skipped %d of %d records; the first: %s", path, len(dropped), read, dropped[0])
    return edits[:limit]


def save_edits_jsonl(edits: Iterable[Edit], path: str | os.PathLike) -> None:
    """Write edits in the plain format, one JSON object per line, atomically.

    :func:`load_edits` reads the file back into equal edits, ``source`` included. An empty list
    writes an empty file, which :func:`load_edits` refuses like any empty edit file.
    """
    atomic_write_text(path, jsonl_text(e.to_dict() for e in edits))


def check_edit_objects(edits: list[Edit], where: str = "<edits given in Python>") -> list[Edit]:
    """Edit objects built in Python, checked as a file's plain records are (each record's fields, one id
    per edit, one answer per prompt, probes that are no other edit's prompt); y⁻ = y⁺ is let through
    (a y⁻ filled by the model may equal y⁺). Returns them unchanged."""
    ids: dict[str, str] = {}
    answers: dict[str, tuple[str, str, str]] = {}
    probes: dict = {}
    for index, edit in enumerate(edits):
        try:
            data = edit.to_dict()
        except (TypeError, ValueError, AttributeError) as e:
            raise DataError(f"is not a whole Edit ({e}); paraphrases is a tuple of text, locality and "
                            f"portability tuples of Probe", path=where, record=str(index)) from None
        rec = _Record(data, Path(where), index, None)
        if not isinstance(edit.id, str) or not edit.id.strip():
            raise rec.error(f"expected non-empty text, found {_kind(edit.id)}", "id")
        _plain(rec, "")
        if edit.id in ids:
            raise rec.error(f"the id {edit.id!r} is already used by record {ids[edit.id]}", "id", edit.id)
        prompt, answer = _norm(edit.prompt), _norm(edit.target_new)
        earlier = answers.get(prompt)
        if earlier is not None and earlier[0] != answer:
            raise rec.error(f"the prompt {edit.prompt!r} is asked to answer {edit.target_new!r} here but "
                            f"{earlier[1]!r} in record {earlier[2]}; one set of edits cannot hold both", "prompt", edit.id)
        _probe_conflicts(rec, edit, answers, probes)
        ids[edit.id] = rec.name()
        answers.setdefault(prompt, (answer, edit.target_new, rec.name(edit.id)))
        for i, p in enumerate(edit.paraphrases):
            probes.setdefault(_norm(p), (f"paraphrases[{i}]", None, rec.name(edit.id), answer))
        for i, p in enumerate(edit.locality):
            probes.setdefault(_norm(p.prompt), (f"locality[{i}]", None, rec.name(edit.id), answer))
    return edits
