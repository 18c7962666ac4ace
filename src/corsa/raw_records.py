"""One raw record of an edit file, read field by field: every error names the file, the record and the field.

:class:`RawRecord` is what each format's converter in :mod:`corsa.loaders` reads a record through:
a value under a path of keys (``requested_rewrite[2].target_new.str``), non-empty visible text,
lists of text, identifiers, each refused with a :class:`~corsa.errors.DataError` that says where.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

from .errors import DataError


def kind(value: Any) -> str:
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


def field_name(keys: tuple[str | int, ...]) -> str:
    """``("requested_rewrite", 2, "target_new", "str")`` -> ``requested_rewrite[2].target_new.str``."""
    name = ""
    for key in keys:
        name += f"[{key}]" if isinstance(key, int) else (f".{key}" if name else key)
    return name




def visible(text: str) -> bool:
    """Whether `text` holds a character one can see (not only spaces, zero-width marks or a BOM)."""
    # a combining mark (Mn, Me) is drawn on the character before it: alone it shows nothing to read
    return any(not c.isspace() and unicodedata.category(c) not in ("Cf", "Cc", "Zs", "Zl", "Zp", "Mn", "Me")
               for c in text)


def no_duplicate_keys(pairs: list) -> dict:
    """A JSON object, refused when it names one key twice (json would keep the last silently)."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice in one object")
        seen[key] = value
    return seen


class RawRecord:
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
                where = field_name(keys[:depth]) or None
                raise self.error(f"expected {container[1]}, found {kind(node)}", where)
            present = key in node if isinstance(key, str) else key < len(node)
            if not present or node[key] is None:
                if optional:
                    return None
                raise self.error("is missing" if not present else "is null", field_name(keys[:depth + 1]))
            node = node[key]
        return node

    def text(self, *keys: str | int, optional: bool = False) -> str | None:
        """A non-empty string with its outer whitespace stripped."""
        value = self.value(*keys, optional=optional)
        if value is None:
            return None
        field = field_name(keys)
        if not isinstance(value, str):
            raise self.error(f"expected text, found {kind(value)}", field)
        value = value.strip()
        if not value:
            raise self.error("is empty", field)
        if not visible(value):
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
            raise self.error(f"expected a list of text, found {kind(value)}", field_name(keys))
        return tuple(self.text(*keys, i) for i in range(len(value)))

    def ident(self, *keys: str | int) -> str:
        """An identifier given as text or as a whole number (benchmarks number their cases)."""
        value = self.value(*keys)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise self.error(f"expected text or a whole number, found {kind(value)}", field_name(keys))
        return self.text(*keys)
