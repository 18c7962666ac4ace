"""Read edit files of every supported benchmark into :class:`~corsa.records.Edit` records.

One function per format (:mod:`corsa.formats`) turns a raw record (:mod:`corsa.raw_records`)
into edits (method.md §7 gives the mappings); its ``BY_NAME`` table registers each with the keys
that identify it:

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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError
from .files import atomic_write_text, jsonl_lines, jsonl_text, read_bounded
from .metrics import normalise
from .formats import ALIASES, BY_NAME, FORMATS
from .raw_records import RawRecord, kind, no_duplicate_keys
from .records import Edit

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 2**30  # an edit file larger than this is refused before it is read
ON_INVALID = ("error", "skip")  # what load_edits does with a bad record: raise, or drop it and log



def _norm(text: str) -> str:
    """The form two answers or prompts are compared in: the answer matcher's (corsa.metrics.normalise).

    NFKC, case folded, whitespace collapsed, sentence punctuation stripped from the ends, so
    "Paris", "PARIS." and the full-width "Ｐａｒｉｓ" are one answer here as they are when scored.
    """
    return normalise(text)


def records_of(path: str | os.PathLike) -> list[RawRecord]:
    """The raw records of a JSON or JSON Lines file, each knowing where it sits in the file (for
    readers of other record kinds: corsa.code.arena_file)."""
    path = Path(path)
    records, lines = _read_records(path)
    return [RawRecord(data, path, i, lines[i] if lines else None) for i, data in enumerate(records)]


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
        data = json.loads(text, object_pairs_hook=no_duplicate_keys)
    except RecursionError:
        raise DataError("the JSON is nested too deeply to be edit records", path=str(path)) from None
    except ValueError as whole:
        if text.lstrip().startswith("["):  # meant as one JSON list: report where it breaks
            raise DataError(_json_problem(whole), path=str(path)) from None
        return _read_jsonl(path, text)
    if isinstance(data, dict):
        return [data], None
    if not isinstance(data, list):
        raise DataError(f"the file holds {kind(data)}; expected a JSON list of edit records or one "
                        f"JSON object per line", path=str(path))
    return data, None


def _read_jsonl(path: Path, text: str) -> tuple[list, list[int]]:
    records, lines = [], []
    # corsa's one JSONL reader (split at "\n" only: str.splitlines would also split at U+2028 and
    # friends, which JSON allows unescaped inside strings)
    for number, line in jsonl_lines(text):
        try:
            records.append(json.loads(line, object_pairs_hook=no_duplicate_keys))
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
        return DataError(f"expected an object (an edit record), found {kind(first)}", path=path, record=0)
    keys = ", ".join(sorted(map(str, first))[:20]) or "none"
    if wanted is None:
        known = "; ".join(f"{f.name} ({', '.join(sorted(f.keys))})" for f in BY_NAME.values())
        return DataError(f"no known format has these keys: {keys}. Known formats and the keys "
                         f"that identify them: {known}", path=path, record=0)
    missing = sorted(BY_NAME[wanted].keys - set(first))
    if not missing:
        return None
    guess = next((f.name for f in BY_NAME.values() if f.keys <= set(first)), None)
    hint = f"; the records look like format '{guess}'" if guess else ""
    return DataError(f"is not in format '{wanted}', which needs the keys "
                     f"{', '.join(sorted(BY_NAME[wanted].keys))}; the record has: {keys}{hint}",
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
        for fmt in BY_NAME.values():
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
    rec = RawRecord(record, Path(where), 0, None)
    if not isinstance(record, dict):
        raise rec.error(f"expected an object (an edit record), found {kind(record)}")
    if not isinstance(record.get("id"), str):
        raise rec.error("expected text", "id")
    BY_NAME["plain"].convert(rec, "")
    return Edit.from_dict(record)  # as written: the checks strip nothing from what replay trains


def _probe_conflicts(rec: RawRecord, edit: Edit, answers: dict, probes: dict) -> None:
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


def _take(rec: RawRecord, fmt: str, source: str, ids: dict[str, str],
          answers: dict[str, tuple[str, str, str]], probes: dict | None = None) -> list[Edit]:
    """Convert one record and check its edits against the ones taken before it.

    ``ids`` maps each id taken to its record; ``answers`` maps each normalised prompt taken to
    (normalised new answer, new answer, record). Both grow only when the whole record passes,
    so a skipped record leaves no trace.
    """
    if not isinstance(rec.data, dict):
        raise rec.error(f"expected an object (an edit record), found {kind(rec.data)}")
    candidates = BY_NAME[fmt].convert(rec, source)
    new_ids: dict[str, str] = {}
    new_answers: dict[str, tuple[str, str, str]] = {}
    for cand in candidates:
        edit = cand.edit
        if edit.id in ids or edit.id in new_ids:  # results are keyed by id: two edits cannot share one
            raise rec.error(f"the id {edit.id!r} is already used by record {ids.get(edit.id) or new_ids[edit.id]}",
                            BY_NAME[fmt].id_field, edit.id)
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
    fmt = ALIASES.get(format, format)
    if fmt != "auto" and fmt not in BY_NAME:
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
        rec = RawRecord(data, path, index, lines[index] if lines else None, hint)
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
        rec = RawRecord(data, Path(where), index, None)
        if not isinstance(edit.id, str) or not edit.id.strip():
            raise rec.error(f"expected non-empty text, found {kind(edit.id)}", "id")
        BY_NAME["plain"].convert(rec, "")
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
