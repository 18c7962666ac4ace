"""What corsa wrote, by proof: an output folder is written only when it is new, empty, or corsa's own.

corsa never replaces or deletes a file it cannot prove it wrote (`check_ours`), and never writes
an output over one of its inputs (`check_not_inside`).
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from .errors import ConfigError, CorsaError
from .files import MAX_SMALL_FILE, json_object, jsonl_lines, read_bounded, sha256_file



_ADAPTER_FILES = {"adapter_model.safetensors", "adapter_config.json", "corsa-adapter.json", "trained-edits.jsonl",
                  "README.md", "locate-keys.safetensors"}
_TEMP = re.compile(r"^\.corsa-write-test|^\.corsa-lock$|^\.corsa-publish\..+\.json$")  # the lock, a journal, a write probe
# what tempfile.mkstemp/mkdtemp make for `files.stage_text` / `stage_dir` / `atomic_write_text` and
# `publish.atomic_dir` (".NAME.xxxxxxxx.tmp"; a replaced folder waits as ".NAME.xxxxxxxx.old")
_STAGED = re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}\.(?P<end>tmp|old)$")
# names staged in a folder of a kind beside those it holds (_ENTRIES): an update's eval.json (written
# into the staged update-k folder), the folder `publish_contents` fills
_STAGED_TOO = {"run": ("eval.json",), "export": ("contents",)}
_ENTRIES = {
    # a `corsa edit` run folder (one update, or --updates K)
    "run": re.compile(r"^(adapter|adapter-last-good|run\.json|edits\.jsonl|log\.jsonl|log\.partial\.jsonl|progress\.json|"
                      r"update-\d+|tensorboard)$"),
    # a `corsa bench` folder; each method's folder holds config.json and update-k
    "bench": re.compile(r"^(bench\.json|base\.json|edits\.jsonl|tasks\.json|results\.json|results\.csv|report\.md|.+\.png|"
                        r"tensorboard)$"),
    "method": re.compile(r"^(config\.json|update-\d+)$"),
    # a `corsa export` folder: a saved model, its tokenizer, the model card and corsa's record
    "export": re.compile(r"^(config\.json|generation_config\.json|model(-\d+-of-\d+)?\.safetensors|"
                         r"model\.safetensors\.index\.json|tokenizer(_config)?\.json|tokenizer\.model|"
                         r"special_tokens_map\.json|added_tokens\.json|chat_template\.(jinja|json)|vocab\.json|"
                         r"merges\.txt|README\.md|corsa-export\.json)$"),
}
_EVENTS = re.compile(r"^events\.out\.tfevents\.")  # what tensorboardX names its files
MANIFEST_HASHED = 16 * 2**20  # files up to this size are listed with their sha256, larger ones by size


# Ownership is proved, never guessed from a name. corsa writes a marker into every folder it
# fills: run.json ("corsa_run": 1) in a run folder, corsa-adapter.json in an adapter folder,
# corsa-export.json in an export folder, bench.json in a bench folder. The markers of this
# version carry the run's identity (run_id: run.json and its adapter's marker name the same one)
# and list the files written beside them with their size and sha256 ("files"); a folder is
# corsa's only when its marker is one corsa writes and every file it holds is listed there
# unchanged. Folders written by earlier versions (markers without "files") are accepted when
# their markers are whole and agree with each other (the adapter's base fingerprint is the run
# record's) and every name is one corsa writes there.


def _head(path: Path, n: int = 64) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b"\0"


def is_staged(entry: Path, kind: str | None) -> bool:
    """Whether `entry` is a temporary corsa stages in a folder of `kind`: ".NAME.xxxxxxxx.tmp" (a
    file or folder) or ".NAME.xxxxxxxx.old" (a replaced folder) where NAME is one corsa writes
    there. Any other name, ".thesis.20261207.tmp" or ".photos.backup12.old", is the user's."""
    m = _STAGED.match(entry.name)
    if m is None or kind not in _ENTRIES or entry.is_symlink():
        return False
    stem = m["stem"]
    if not (is_corsa_name(kind, stem) or stem in _STAGED_TOO.get(kind, ())):
        return False
    return entry.is_dir() if m["end"] == "old" else (entry.is_file() or entry.is_dir())


def is_own_temporary(entry: Path, kind: str | None = None) -> bool:
    """Whether `entry` is one of corsa's own temporaries, which an ownership check passes over: a
    lock file holds a pid, a journal its renames, a write probe "ok", a staged file or folder is
    named for what corsa writes in a folder of `kind` (`is_staged`; None: no staged names); a
    user's file of that name holds something else and is reported like any other."""
    name = entry.name
    if is_staged(entry, kind):
        return True
    if not _TEMP.match(name):
        return False
    if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
        return False
    if name == ".corsa-lock":
        return entry.is_file() and re.fullmatch(rb"\d{0,20}\s*", _head(entry)) is not None
    if name.startswith(".corsa-publish."):
        journal = json_object(entry)
        return isinstance(journal, dict) and set(journal) == {"moves"} and isinstance(journal["moves"], list)
    return entry.is_file() and _head(entry) in (b"", b"ok")  # a write probe


def is_corsa_name(kind: str, name: str) -> bool:
    """Whether `name` is one corsa writes in a folder of `kind` ("run", "bench", "method", "export")."""
    return _ENTRIES[kind].match(name) is not None


def manifest(folder: str | os.PathLike, names, hashed: int | None = MANIFEST_HASHED) -> dict:
    """{name: {"bytes": size, "sha256": digest}} of `names` in `folder`: what a marker lists.

    Files over `hashed` bytes are listed by size only (an export's multi-GB shards, which every
    rerun would otherwise hash again); None hashes every file (an adapter).
    """
    folder = Path(folder)
    out = {}
    for name in sorted(names):
        size = (folder / name).stat().st_size
        digest = hashed is None or size <= hashed
        out[name] = {"bytes": size, **({"sha256": sha256_file(folder / name)} if digest else {})}
    return out


def _unlisted(folder: Path, files, skip: str, kind: str | None = None) -> list[str] | None:
    """The entries of `folder` (but `skip`, the marker) that the marker's `files` does not list as they are;
    None when `files` is not such a list."""
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        return None
    found = []
    for entry in sorted(folder.iterdir()):
        if is_own_temporary(entry, kind) or entry.name == skip:
            continue
        want = files.get(entry.name)
        try:
            ok = (want is not None and entry.is_file() and not entry.is_symlink()
                  and entry.stat().st_size == want.get("bytes")
                  and ("sha256" not in want or sha256_file(entry) == want["sha256"]))
        except OSError:
            ok = False
        if not ok:
            found.append(entry.name)
    return found


def _is_run_record(d: dict | None) -> bool:
    return (isinstance(d, dict) and d.get("corsa_run") == 1 and isinstance(d.get("config"), dict)
            and isinstance(d.get("updates"), list) and isinstance(d.get("base_fingerprint", ""), (str, type(None))))


def _is_adapter_marker(d: dict | None) -> bool:
    return (isinstance(d, dict) and "base_fingerprint" in d and isinstance(d["base_fingerprint"], (str, type(None)))
            and isinstance(d.get("method", ""), str) and isinstance(d.get("model", ""), str))


def _every(folder: Path, name: str) -> list[str]:
    """Every entry of `folder` as name/entry (the folder itself when it is empty or not a folder)."""
    if not folder.is_dir() or folder.is_symlink():
        return [name]
    return [f"{name}/{x.name}" for x in sorted(folder.iterdir()) if not is_own_temporary(x)] or [name]


def _foreign_adapter(folder: Path, record: dict | None, name: str) -> list[str]:
    """What of adapter folder `folder` is not corsa's: all of it without a marker that agrees with `record`."""
    if not folder.is_dir() or folder.is_symlink():
        return [name]
    every = _every(folder, name)
    mark = json_object(folder / "corsa-adapter.json")
    if not _is_adapter_marker(mark) or (folder / "corsa-adapter.json").is_symlink():
        return every
    if record is not None:
        same = (mark["run_id"] == record["run_id"] if "run_id" in mark and "run_id" in record
                else mark.get("base_fingerprint") == record.get("base_fingerprint"))
        if not same:
            return every
    if "files" in mark:  # this version's marker: exactly the files it lists, unchanged
        listed = _unlisted(folder, mark["files"], "corsa-adapter.json")
        if listed is None:
            return every
        # a listed weights file that is no longer whole safetensors is corsa's own file damaged (a
        # resume trains that update again), not a user's file: a user's weights would be whole. Only a
        # regular file: a FIFO or a device under that name is no file of corsa's, and is never opened
        return [f"{name}/{x}" for x in listed
                if not (x in mark["files"] and x.endswith(".safetensors") and (folder / x).is_file()
                        and not (folder / x).is_symlink() and not _whole_safetensors(folder / x))]
    return [f"{name}/{x.name}" for x in sorted(folder.iterdir())  # an earlier version's: its names only
            if (x.name not in _ADAPTER_FILES or not x.is_file() or x.is_symlink()) and not is_own_temporary(x)]


def _whole_safetensors(path: Path) -> bool:
    """Whether `path` is a whole safetensors file: its header parses and its tensors end where the file does."""
    try:
        # opened without blocking and checked on the descriptor: a FIFO under the name would hang a plain open
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return False
            size = info.st_size
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= min(size - 8, 100 * 2**20):
                return False
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return isinstance(header, dict) and 8 + n + max(ends, default=0) == size
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return False


def is_step_log(path: Path) -> bool:
    """Whether `path` is a step log corsa was writing (one JSON object per line; the last may be torn)."""
    try:
        lines = list(jsonl_lines(read_bounded(path, 1 << 30, "step log").decode("utf-8")))
    except (CorsaError, ValueError):
        return False
    for i, (_, line) in enumerate(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            if i == len(lines) - 1 and line.startswith('{"'):  # the last line, torn by a kill
                continue
            return False
        if not isinstance(entry, dict):
            return False
    return True


def _foreign_run(folder: Path, depth: int = 0) -> list[str]:
    record = json_object(folder / "run.json") if (folder / "run.json").exists() else None
    ours = _is_run_record(record)
    found = []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if is_own_temporary(entry, "run"):
            continue
        if name == "run.json":
            if not ours or entry.is_symlink():
                found.append(name)
        elif name in ("edits.jsonl", "log.jsonl"):  # published together with run.json, never without it
            if not ours or not entry.is_file() or entry.is_symlink():
                found.append(name)
        elif name == "log.partial.jsonl":  # an update's step log until it is published (a kill leaves it)
            if entry.is_symlink() or ((entry.parent / "run.json").exists() and not ours) or not is_step_log(entry):
                found.append(name)
        elif name == "progress.json":
            saved = json_object(entry)
            if not (isinstance(saved, dict) and isinstance(saved.get("settings"), dict)
                    and isinstance(saved.get("completed"), int)) or entry.is_symlink():
                found.append(name)
        elif name == "adapter":
            found += _foreign_adapter(entry, record, name) if ours else _every(entry, name)
        elif name == "adapter-last-good":  # saved alone when a step fails, even in a new folder
            found += _foreign_adapter(entry, None, name)
        elif re.fullmatch(r"update-\d+", name) and depth == 0:
            found += [f"{name}/{x}" for x in _foreign_run(entry, 1)] if entry.is_dir() and not entry.is_symlink() \
                else [name]
        elif name == "tensorboard":
            found += _foreign_events(entry)
        else:
            found.append(name)
    return found


def _foreign_events(folder: Path) -> list[str]:
    if not folder.is_dir() or folder.is_symlink():
        return [folder.name]
    return [f"{folder.name}/{x.name}" for x in sorted(folder.iterdir())
            if not (_EVENTS.match(x.name) and x.is_file() and not x.is_symlink()) and not is_own_temporary(x)]


def _foreign_export(folder: Path) -> list[str]:
    entries = [x for x in sorted(folder.iterdir()) if not is_own_temporary(x, "export")]
    mark = json_object(folder / "corsa-export.json") if (folder / "corsa-export.json").exists() else None
    if not (isinstance(mark, dict) and mark.get("corsa_export") == 1 and isinstance(mark.get("adapter_sha256"), str)):
        return [x.name for x in entries]
    if "files" in mark:
        listed = _unlisted(folder, mark["files"], "corsa-export.json", "export")
        return [x.name for x in entries] if listed is None else listed
    # an export of an earlier version: corsa's names only, and its own model card
    found = [x.name for x in entries if not _ENTRIES["export"].match(x.name) or not x.is_file() or x.is_symlink()]
    card = folder / "README.md"
    if card.exists() and "README.md" not in found:
        try:
            text = read_bounded(card, MAX_SMALL_FILE, "model card").decode("utf-8")
        except (ValueError, Exception):  # noqa: BLE001 — anything unreadable is not our card
            text = ""
        if "# An edited model made with corsa" not in text:
            found.append("README.md")
    return found


def _foreign_bench(folder: Path, dirs: tuple[str, ...]) -> list[str]:
    settings = json_object(folder / "bench.json") if (folder / "bench.json").exists() else None
    ours = isinstance(settings, dict) and "model_fingerprint" in settings and "n_updates" in settings
    # this version's bench.json lists the files written beside it (size, sha256), unless a run was
    # killed while writing them; an earlier version's has no run_id, and its names are corsa's
    listed = settings.get("files") if ours and "run_id" in settings and settings.get("writing") is not True else None
    if listed is not None and not (isinstance(listed, dict) and all(isinstance(v, dict) for v in listed.values())):
        ours = False
    found = []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if is_own_temporary(entry, "bench"):
            continue
        if name in dirs and entry.is_dir() and not entry.is_symlink():
            config = json_object(entry / "config.json") if (entry / "config.json").exists() else None
            if (entry / "config.json").exists() and not (isinstance(config, dict) and "method" in config):
                found.append(f"{name}/config.json")
            for x in sorted(entry.iterdir()):
                if is_own_temporary(x, "method") or x.name == "config.json":
                    continue
                if re.fullmatch(r"update-\d+", x.name) and x.is_dir() and not x.is_symlink():
                    # an update's run folder (Editor.update) and its eval.json: corsa's by the run's markers
                    found += [f"{name}/{x.name}/{y}" for y in _foreign_run(x, 1)
                              if y != "eval.json" or not isinstance(json_object(x / "eval.json"), dict)]
                else:
                    found.append(f"{name}/{x.name}")
        elif name == "tensorboard":
            found += [name] if not entry.is_dir() or entry.is_symlink() else []
        elif not _ENTRIES["bench"].match(name) or not ours or not entry.is_file() or entry.is_symlink():
            found.append(name)
        elif listed is not None and name != "bench.json" and not _same(entry, listed.get(name)):
            found.append(name)
    return found


def _same(entry: Path, want: dict | None) -> bool:
    """Whether regular file `entry` is as a marker lists it (size, and sha256 where listed)."""
    try:
        return (isinstance(want, dict) and entry.stat().st_size == want.get("bytes")
                and ("sha256" not in want or sha256_file(entry) == want["sha256"]))
    except OSError:
        return False


def foreign_files(folder: str | os.PathLike, kind: str, dirs: tuple[str, ...] = ()) -> list[str]:
    """The entries of `folder` that corsa cannot prove it wrote (relative paths); [] for a new or empty folder.

    kind: "run", "bench" or "export" (what corsa writes there); `dirs` are further folder names
    that are its own (a bench's method folders).
    """
    folder = Path(folder)
    if folder.is_symlink() and not folder.is_dir():
        return [str(folder)]
    if not folder.is_dir():
        return []
    if kind == "run":
        return _foreign_run(folder)
    if kind == "export":
        return _foreign_export(folder)
    return _foreign_bench(folder, dirs)


def check_ours(folder: str | os.PathLike, kind: str, dirs: tuple[str, ...] = ()) -> None:
    """Refuse an output folder that holds files corsa cannot prove it wrote: it would replace or delete them."""
    found = foreign_files(folder, kind, dirs)
    if found:
        shown = ", ".join(str(Path(folder) / f) for f in found[:5]) + \
            (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise ConfigError(f"output folder {folder} holds files corsa did not write, or cannot prove it wrote "
                          f"({shown}); corsa never replaces or deletes those. Choose a new or empty folder, or "
                          f"move them out")


def check_not_inside(inputs: dict[str, str | os.PathLike | None], out: str | os.PathLike) -> None:
    """Refuse inputs that lie inside the output folder (or are the output file): an output never overwrites an input."""
    out = Path(out).resolve()
    for flag, path in inputs.items():
        if path is None:
            continue
        p = Path(path).resolve()
        if p == out or out in p.parents:
            raise ConfigError(f"{flag} {path} is inside the output {out}, which corsa writes: copy it elsewhere "
                              f"or choose another --out")

