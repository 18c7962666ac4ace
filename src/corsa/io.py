"""Atomic writes and the provenance saved beside every output.

Every file is written to a temporary name in the same folder and renamed into place, so a
kill at any moment leaves either the previous complete file or the new complete one.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import stat
import tempfile
import threading
from pathlib import Path


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
        from .errors import ConfigError as error
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
        from .errors import ConfigError as error
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
        from .errors import ConfigError as error
    data = read_bounded(path, max_bytes, what, error)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (bad byte at offset {e.start})") from None


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


def _make_tmp_dir(path: Path) -> Path:
    """A temporary folder beside `path`, on the same file system so a rename can publish it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


# ---------------------------------------------------------------------------------------------
# Publishing: several finished files and folders appear together, or none of them does
#
# Each is written complete under a temporary name beside its final one (`.NAME.xxxxxxxx.tmp`,
# as tempfile names them), then a journal listing the renames is written atomically, then the
# renames run, then the journal goes. A kill before the journal leaves the old state (and
# temporaries that `recover` removes); a kill after it leaves a journal that `recover` replays.
# So a run folder always holds one run's adapter, record and log, never a mix, and never none.

JOURNAL = ".corsa-publish.{}.json"  # named by the first entry published: one per target, so the model
                                     # cache can convert two models side by side
PARTIAL_LOG = "log.partial.jsonl"  # an update's step log until the update is published as log.jsonl
_LEFTOVER = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|old)$")  # what tempfile.mkstemp/mkdtemp made for us


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


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(entry: Path) -> None:
    """Remove a temporary file or folder corsa made; one that is already gone is fine."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            entry.unlink()


def _aside(staged: str) -> str:
    """Where the entry a staged folder replaces waits until the renames are done."""
    return staged[: -len(".tmp")] + ".old"


def _redo(folder: Path, moves: list) -> None:
    """Run the journal's renames; each is skipped once done, so a replay after a kill is safe."""
    for name, staged in moves:
        src, dst = folder / staged, folder / name
        if not src.exists():
            continue  # renamed already
        if src.is_dir() and dst.exists():
            aside = folder / _aside(staged)
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(dst, aside)  # a folder cannot be renamed over a non-empty one
        os.replace(src, dst)
    _fsync_dir(folder)
    for _, staged in moves:
        shutil.rmtree(folder / _aside(staged), ignore_errors=True)


def _finish_pending(folder: Path, first: str | None = None) -> None:
    """Replay the interrupted publish of `first` in `folder` (every one when None)."""
    journals = [folder / JOURNAL.format(first)] if first else sorted(folder.glob(JOURNAL.format("*")))
    for journal in journals:
        if journal.is_file():
            _replay(folder, journal)


def _replay(folder: Path, journal: Path) -> None:
    if not _skip(journal):
        return  # written atomically, so never torn: one that is not ours is neither replayed nor removed
    try:
        moves = [(str(a), str(b)) for a, b in json.loads(journal.read_text())["moves"]]
    except (OSError, ValueError, KeyError, TypeError):
        return
    moves = [(a, b) for a, b in moves if "/" not in a + b and _LEFTOVER.match(b)]
    _redo(folder, moves)
    journal.unlink()


def publish(folder: str | os.PathLike, staged: dict[str, str | os.PathLike]) -> None:
    """Rename each complete staged file or folder in `folder` to its name there: all or none.

    staged: {final name: temporary path in `folder`} (from `stage_text` / `stage_dir`). A name
    that exists is replaced (a folder whole).
    """
    folder = Path(folder)
    if not staged:
        return
    journal = folder / JOURNAL.format(next(iter(staged)))
    _finish_pending(folder, next(iter(staged)))
    moves = []
    for name, tmp in staged.items():
        tmp = Path(tmp)
        if tmp.parent.resolve() != folder.resolve() or not _LEFTOVER.match(tmp.name):
            raise ValueError(f"{tmp} was not staged in {folder}")
        moves.append((name, tmp.name))
    atomic_write_json(journal, {"moves": moves})
    _fsync_dir(folder)
    _redo(folder, moves)
    journal.unlink()
    _fsync_dir(folder)


def recover(folder: str | os.PathLike, recursive: bool = True, _depth: int = 0) -> None:
    """Finish what a killed run left in `folder`: replay an interrupted publish, remove temporaries.

    Call it only while holding the folder (`output_lock`): a temporary there belongs to no live
    run. Recurses into subfolders (update-k, a bench's method folders), three levels at most.
    """
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return
    _finish_pending(folder)
    for entry in folder.iterdir():
        if _LEFTOVER.match(entry.name) or entry.name.startswith(".corsa-write-test-") or entry.name == PARTIAL_LOG:
            _remove(entry)
        elif recursive and _depth < 3 and entry.is_dir() and not entry.is_symlink() and not entry.name.startswith("."):
            recover(entry, recursive, _depth + 1)


def recover_entry(folder: str | os.PathLike, name: str) -> None:
    """`recover` for one entry of a shared folder (the model cache): hold that entry's lock first."""
    folder = Path(folder)
    _finish_pending(folder, name)
    for entry in folder.glob(f".{glob.escape(name)}.*"):
        if _LEFTOVER.match(entry.name) and entry.name[len(name) + 2:].count(".") == 1:
            _remove(entry)


@contextlib.contextmanager
def writing(folder: str | os.PathLike, staged: dict | None = None):
    """Report a failed write (disk full, quota, permissions) as an OutputError saying what to do.

    `staged` ({name: temporary path}) is removed on failure; what was published stays as it was.
    """
    from .errors import OutputError

    try:
        yield
    except OSError as e:
        pending = any(Path(folder).glob(JOURNAL.format("*")))  # renames under way: the next run replays them
        for tmp in () if pending else (staged or {}).values():
            _remove(Path(tmp))
        raise OutputError(f"could not write the results into {folder}: {e.strerror or e}. What was there "
                          f"before is unchanged; free some space (or fix the permissions) and rerun the same "
                          f"command") from None


@contextlib.contextmanager
def publish_contents(folder: str | os.PathLike, kind: str):
    """Yield an empty temporary folder inside `folder`; its files then replace `folder`'s, all together.

    For outputs whose file names are not known in advance (a saved model): each file is staged
    beside its final name and published in one journal; files of `kind` left from an earlier
    output and not written now (an old shard) are removed after. `folder` itself stays, so a
    lock held on it stays valid.
    """
    folder = Path(folder)
    old = _json_dict(folder / "corsa-export.json") if kind == "export" else None
    listed = set(old["files"]) if isinstance(old, dict) and isinstance(old.get("files"), dict) else None
    filled = _make_tmp_dir(folder / "contents")
    try:
        yield filled
        staged = {}
        for f in sorted(filled.iterdir()):
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{f.name}.", suffix=".tmp")
            os.close(fd)
            os.replace(f, tmp)
            staged[f.name] = tmp
        publish(folder, staged)
        for entry in folder.iterdir():
            if (entry.name not in staged and entry.is_file() and _ENTRIES[kind].match(entry.name)
                    and (listed is None or entry.name in listed)):
                entry.unlink()
    finally:
        shutil.rmtree(filled, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder; on success it replaces `path` whole (old content removed)."""
    path = Path(path)
    tmp = _make_tmp_dir(path)
    try:
        yield tmp
        publish(path.parent, {path.name: tmp})
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish_one(tmp: Path, path: Path) -> None:
    publish(path.parent, {path.name: tmp})


@contextlib.contextmanager
def atomic_dir_on_main(path: str | os.PathLike):
    """:func:`atomic_dir` for a run under a launcher; collective (every worker must enter it).

    The main process creates the temporary folder and, when the block succeeds, renames it into
    place; every worker gets that same path, which only the main process may write into (use
    `distributed.on_main`). The other workers create, rename and remove nothing. In one process
    this is exactly :func:`atomic_dir`.
    """
    from . import distributed as dist

    if dist.world_size() == 1:
        with atomic_dir(path) as tmp:
            yield tmp
        return
    path = Path(path)
    tmp = Path(dist.on_main(_make_tmp_dir, path))
    try:
        yield tmp
        dist.on_main(_publish_one, tmp, path)
    finally:
        if dist.is_main() and tmp.exists():  # no collective here: a failing worker must not wait
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def append_jsonl(path: str | os.PathLike, obj) -> None:
    """Append one JSON line (logs are append-only; a torn last line is skipped by readers)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(jsonl_line(obj))


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def library_versions() -> dict:
    """Versions of Python and of every library whose behaviour the results depend on."""
    from importlib import metadata

    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("corsa-edit", "torch", "transformers", "peft", "accelerate", "safetensors", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def check_writable(folder: str | os.PathLike, need_bytes: int = 50 * 2**20) -> None:
    """Fail before training, not after, when the output folder cannot take the results."""
    from .errors import ConfigError

    if not str(folder).strip():  # Path("") is the current folder, whose adapter/ a run would replace
        raise ConfigError("the output folder is empty (--out ''); name a folder for the run")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".corsa-write-test-{os.getpid()}"  # one per process: workers check side by side
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output folder {folder} is not writable: {e.strerror or e}") from None
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise ConfigError(f"output folder {folder} has {free // 2**20} MiB free; the run needs about "
                          f"{need_bytes // 2**20} MiB. Free some space or choose another --out")


# ---------------------------------------------------------------------------------------------
# Output folders: corsa writes only into folders that are new, empty, or its own


_ADAPTER_FILES = {"adapter_model.safetensors", "adapter_config.json", "corsa-adapter.json", "trained-edits.jsonl",
                  "README.md", "locate-keys.safetensors"}
_TEMP = re.compile(r"^\..+\.(tmp|old)$|^\.corsa-write-test|^\.corsa-lock$|^\.corsa-publish\..+\.json$")  # atomic_write_text/atomic_dir leftovers, probes
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


def _skip(entry: Path) -> bool:
    """Whether `entry` is one of corsa's own temporaries, which an ownership check passes over: a
    lock file holds a pid, a journal its renames, a write probe "ok"; a user's file of that name
    holds something else and is reported like any other."""
    name = entry.name
    if not _TEMP.match(name):
        return False
    if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
        return False
    if name == ".corsa-lock":
        return entry.is_file() and re.fullmatch(rb"\d{0,20}\s*", _head(entry)) is not None
    if name.startswith(".corsa-publish."):
        journal = _json_dict(entry)
        return isinstance(journal, dict) and set(journal) == {"moves"} and isinstance(journal["moves"], list)
    if name.startswith(".corsa-write-test"):
        return entry.is_file() and _head(entry) in (b"", b"ok")
    return True


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


def _unlisted(folder: Path, files, skip: str) -> list[str] | None:
    """The entries of `folder` (but `skip`, the marker) that the marker's `files` does not list as they are;
    None when `files` is not such a list."""
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        return None
    found = []
    for entry in sorted(folder.iterdir()):
        if _skip(entry) or entry.name == skip:
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


def _json_dict(path: Path) -> dict | None:
    """The JSON object in `path` (a regular file of bounded size), or None when it is anything else."""
    from .errors import CorsaError

    try:
        data = json.loads(read_bounded(path, MAX_SMALL_FILE, "marker"))
    except (CorsaError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


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
    return [f"{name}/{x.name}" for x in sorted(folder.iterdir()) if not _skip(x)] or [name]


def _foreign_adapter(folder: Path, record: dict | None, name: str) -> list[str]:
    """What of adapter folder `folder` is not corsa's: all of it without a marker that agrees with `record`."""
    if not folder.is_dir() or folder.is_symlink():
        return [name]
    every = _every(folder, name)
    mark = _json_dict(folder / "corsa-adapter.json")
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
        # resume trains that update again), not a user's file: a user's weights would be whole
        return [f"{name}/{x}" for x in listed
                if not (x in mark["files"] and x.endswith(".safetensors") and not _whole_safetensors(folder / x))]
    return [f"{name}/{x.name}" for x in sorted(folder.iterdir())  # an earlier version's: its names only
            if (x.name not in _ADAPTER_FILES or not x.is_file() or x.is_symlink()) and not _skip(x)]


def _whole_safetensors(path: Path) -> bool:
    """Whether `path` is a whole safetensors file: its header parses and its tensors end where the file does."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= min(size - 8, 100 * 2**20):
                return False
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return isinstance(header, dict) and 8 + n + max(ends, default=0) == size
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return False


def _is_step_log(path: Path) -> bool:
    """Whether `path` is a step log corsa was writing (one JSON object per line; the last may be torn)."""
    from .errors import CorsaError

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
    record = _json_dict(folder / "run.json") if (folder / "run.json").exists() else None
    ours = _is_run_record(record)
    found = []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if _skip(entry):
            continue
        if name == "run.json":
            if not ours or entry.is_symlink():
                found.append(name)
        elif name in ("edits.jsonl", "log.jsonl"):  # published together with run.json, never without it
            if not ours or not entry.is_file() or entry.is_symlink():
                found.append(name)
        elif name == "log.partial.jsonl":  # an update's step log until it is published (a kill leaves it)
            if entry.is_symlink() or ((entry.parent / "run.json").exists() and not ours) or not _is_step_log(entry):
                found.append(name)
        elif name == "progress.json":
            saved = _json_dict(entry)
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
            if not (_EVENTS.match(x.name) and x.is_file() and not x.is_symlink()) and not _skip(x)]


def _foreign_export(folder: Path) -> list[str]:
    entries = [x for x in sorted(folder.iterdir()) if not _skip(x)]
    mark = _json_dict(folder / "corsa-export.json") if (folder / "corsa-export.json").exists() else None
    if not (isinstance(mark, dict) and mark.get("corsa_export") == 1 and isinstance(mark.get("adapter_sha256"), str)):
        return [x.name for x in entries]
    if "files" in mark:
        listed = _unlisted(folder, mark["files"], "corsa-export.json")
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
    settings = _json_dict(folder / "bench.json") if (folder / "bench.json").exists() else None
    ours = isinstance(settings, dict) and "model_fingerprint" in settings and "n_updates" in settings
    found = []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if _skip(entry):
            continue
        if name in dirs and entry.is_dir() and not entry.is_symlink():
            config = _json_dict(entry / "config.json") if (entry / "config.json").exists() else None
            if (entry / "config.json").exists() and not (isinstance(config, dict) and "method" in config):
                found.append(f"{name}/config.json")
            for x in sorted(entry.iterdir()):
                if _skip(x) or x.name == "config.json":
                    continue
                if re.fullmatch(r"update-\d+", x.name) and x.is_dir() and not x.is_symlink():
                    # an update's run folder (Editor.update) and its eval.json: corsa's by the run's markers
                    found += [f"{name}/{x.name}/{y}" for y in _foreign_run(x, 1)
                              if y != "eval.json" or not isinstance(_json_dict(x / "eval.json"), dict)]
                else:
                    found.append(f"{name}/{x.name}")
        elif name == "tensorboard":
            found += [name] if not entry.is_dir() or entry.is_symlink() else []
        elif not _ENTRIES["bench"].match(name) or not ours or not entry.is_file() or entry.is_symlink():
            found.append(name)
    return found


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
    from .errors import ConfigError

    found = foreign_files(folder, kind, dirs)
    if found:
        shown = ", ".join(str(Path(folder) / f) for f in found[:5]) + \
            (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise ConfigError(f"output folder {folder} holds files corsa did not write, or cannot prove it wrote "
                          f"({shown}); corsa never replaces or deletes those. Choose a new or empty folder, or "
                          f"move them out")


def check_not_inside(inputs: dict[str, str | os.PathLike | None], out: str | os.PathLike) -> None:
    """Refuse inputs that lie inside the output folder (or are the output file): an output never overwrites an input."""
    from .errors import ConfigError

    out = Path(out).resolve()
    for flag, path in inputs.items():
        if path is None:
            continue
        p = Path(path).resolve()
        if p == out or out in p.parents:
            raise ConfigError(f"{flag} {path} is inside the output {out}, which corsa writes: copy it elsewhere "
                              f"or choose another --out")


_HELD: dict[Path, list] = {}  # output folders this process holds: folder -> [holding thread, depth]
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike):
    """Hold `folder` for one run: a second run on it, at the same time, is refused at once.

    An OS file lock (flock) on ``folder/.corsa-lock``: a killed run's lock goes with its process,
    so it never stays stuck. Within a process the lock is re-entrant for the thread that holds
    it and refused to any other thread (two Editors of one service writing one folder). Under
    a launcher only the main process (RANK 0) locks.
    """
    import fcntl

    from .errors import ConfigError

    folder = Path(folder).resolve()
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    me = threading.get_ident()
    with _HELD_GUARD:
        held = _HELD.get(folder)
        if held is not None and held[0] == me:
            held[1] += 1
            reentered = True
        elif held is not None:
            raise ConfigError(f"{folder} is in use by another corsa run in this process (thread {held[0]}); "
                              f"wait for it to finish, or choose another --out")
        else:
            _HELD[folder] = [me, 1]  # taken for this thread before the file lock: no other thread gets past here
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD[folder][1] -= 1
        return
    try:
        with _file_lock(folder, fcntl, ConfigError):
            yield
    finally:
        with _HELD_GUARD:
            _HELD.pop(folder, None)


@contextlib.contextmanager
def _file_lock(folder: Path, fcntl, ConfigError):
    path = folder / ".corsa-lock"
    if (path.exists() or path.is_symlink()) and not _skip(path):  # a file of the user's under corsa's lock name
        raise ConfigError(f"output folder {folder} holds {path}, which corsa did not write (its lock file holds a "
                          f"process id); corsa never replaces it. Choose another folder, or move it out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
    except OSError as e:
        raise ConfigError(f"output folder {folder} is not writable: {e.strerror or e}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read(64).strip()
        f.close()
        raise ConfigError(f"{folder} is in use by another corsa run{f' (process {holder})' if holder else ''}; "
                          f"wait for it to finish, or choose another --out") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    try:
        recover(folder)  # what a killed run left here: no other run can be writing it now
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        f.close()
