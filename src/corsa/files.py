"""One file, safely: written whole or not at all, and read only when it is a bounded regular file.

Every file is written to a temporary name in the same folder and renamed into place, so a
kill at any moment leaves either the previous complete file or the new complete one. Several
files that must appear together are published by `corsa.publish`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path

from .errors import ConfigError, CorsaError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` whole: staged complete beside it, then renamed over it."""
    path = Path(path)
    tmp = stage_text(path.parent, path.name, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


# ---------------------------------------------------------------------------------------------
# Staging: a file or folder written complete under a temporary name beside its final one
# (`.NAME.xxxxxxxx.tmp`, as tempfile names them), then renamed into place, alone
# (`atomic_write_text`) or with others (`corsa.publish.publish`)


def stage_text(folder: str | os.PathLike, name: str, text: str) -> Path:
    """Write `text` complete (flushed to disk) under a temporary name in `folder`, for `publish`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def stage_dir(folder: str | os.PathLike, name: str) -> Path:
    """An empty temporary folder in `folder`, to fill and then `publish` as `name`."""
    return _make_tmp_dir(Path(folder) / name)


def _make_tmp_dir(path: Path) -> Path:
    """A temporary folder beside `path`, on the same file system so a rename can publish it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


# ---------------------------------------------------------------------------------------------
# Reading files corsa did not make: a regular file, of a bounded size, never a device or a pipe

MAX_SMALL_FILE = 64 * 2**20  # a marker, a run record, a config file, an adapter_config.json


def read_bounded(path: str | os.PathLike, max_bytes: int, what: str, error: type | None = None) -> bytes:
    """The bytes of `path`, refused unread unless it is a regular file of at most `max_bytes`.

    Opened without blocking (a FIFO with no writer would hang a plain open), checked on the open
    descriptor (no swap between check and read), and read to `max_bytes` + 1 at most, so a file
    that grows while it is read is refused too. `error` (a CorsaError class, ConfigError by
    default) carries a message naming `what` and the path.
    """
    if error is None:
        error = ConfigError
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"{what} {path} cannot be read: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is not a regular file (a folder, device, pipe or socket); corsa reads "
                        f"only files")
        if info.st_size > max_bytes:
            raise error(f"{what} {path} is {info.st_size:,} bytes, more than the {max_bytes:,} corsa reads "
                        f"for it")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(f"{what} {path} grew past {max_bytes:,} bytes while it was read")
    return data


def check_input_file(path: str | os.PathLike, max_bytes: int, what: str, error: type | None = None) -> None:
    """`read_bounded`'s checks (it exists, is a regular file, of at most `max_bytes`) without reading it."""
    if error is None:
        error = ConfigError
    try:
        info = os.stat(path)
    except OSError as e:
        raise error(f"{what} {path} cannot be read: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is not a regular file (a folder, device, pipe or socket); corsa reads only files")
    if info.st_size > max_bytes:
        raise error(f"{what} {path} is {info.st_size:,} bytes, more than the {max_bytes:,} corsa reads for it")


def read_text_bounded(path: str | os.PathLike, max_bytes: int, what: str, error: type | None = None) -> str:
    """`read_bounded` decoded as UTF-8 (a BOM is dropped); text that is not UTF-8 is refused by byte offset."""
    if error is None:
        error = ConfigError
    data = read_bounded(path, max_bytes, what, error)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (bad byte at offset {e.start})") from None


def json_object(path: Path) -> dict | None:
    """The JSON object in `path` (a regular file of bounded size), or None when it is anything else."""
    try:
        data = json.loads(read_bounded(path, MAX_SMALL_FILE, "marker"))
    except (CorsaError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------
# JSON Lines: the one writer and the one reader of every .jsonl corsa writes and reads
#
# A record ends at "\n" only. json.dumps(ensure_ascii=False) keeps U+2028, U+2029 and U+0085 raw
# inside strings, where str.splitlines (and some other readers) see a line break; the writer
# escapes them, and the reader splits on "\n" alone, so text from a hostile prompt comes back
# exactly as it went in.

_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


def jsonl_line(obj) -> str:
    """One record as one line of JSON Lines, "\n" included."""
    text = json.dumps(obj, ensure_ascii=False, default=str)
    for raw, escaped in _LINE_BREAKS.items():
        if raw in text:
            text = text.replace(raw, escaped)
    return text + "\n"


def jsonl_text(objs) -> str:
    """Records as a JSON Lines text (empty for none)."""
    return "".join(jsonl_line(o) for o in objs)


def jsonl_lines(text: str):
    """(line number, line) of each non-blank line, split at "\n" only (a "\r" before it is dropped)."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield number, line.removesuffix("\r")


def append_jsonl(path: str | os.PathLike, obj) -> None:
    """Append one JSON line (logs are append-only; a torn last line is skipped by readers)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(jsonl_line(obj))


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
