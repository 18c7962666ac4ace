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
import tempfile
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
    try:
        moves = [(str(a), str(b)) for a, b in json.loads(journal.read_text())["moves"]]
    except (OSError, ValueError, KeyError, TypeError):
        moves = []  # written atomically, so never torn; one that is not ours is not replayed
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
            if entry.name not in staged and entry.is_file() and _ENTRIES[kind].match(entry.name):
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
        f.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")


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
                  "README.md"}
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


def foreign_files(folder: str | os.PathLike, kind: str, dirs: tuple[str, ...] = ()) -> list[str]:
    """The entries of `folder` that corsa did not write (relative paths); [] for a new or empty folder.

    kind: "run" or "bench" (what corsa writes there); `dirs` are further folder names that are
    its own (a bench's method folders). Inside an adapter folder only the adapter's files count.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.iterdir()):
        if _TEMP.match(entry.name):
            continue
        if entry.name in dirs and entry.is_dir():
            found += [f"{entry.name}/{x}" for x in foreign_files(entry, "method")]
        elif not _ENTRIES[kind].match(entry.name) or (entry.name == "tensorboard" and not entry.is_dir()):
            found.append(entry.name)
        elif entry.name in ("adapter", "adapter-last-good") and entry.is_dir():
            found += [f"{entry.name}/{x.name}" for x in sorted(entry.iterdir())
                      if x.name not in _ADAPTER_FILES and not _TEMP.match(x.name)]
    return found


def check_ours(folder: str | os.PathLike, kind: str, dirs: tuple[str, ...] = ()) -> None:
    """Refuse an output folder that holds files corsa did not write: it would replace or delete them."""
    from .errors import ConfigError

    found = foreign_files(folder, kind, dirs)
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise ConfigError(f"output folder {folder} holds files corsa did not write ({shown}); corsa never "
                          f"replaces or deletes those. Choose a new or empty folder, or move them out")


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


_HELD: set[Path] = set()  # output folders this process has locked (the lock is re-entrant within it)


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike):
    """Hold `folder` for one run: a second run on it, at the same time, is refused at once.

    An OS file lock (flock) on ``folder/.corsa-lock``: a killed run's lock goes with its process,
    so it never stays stuck. Under a launcher only the main process (RANK 0) locks.
    """
    import fcntl

    from .errors import ConfigError

    folder = Path(folder).resolve()
    if folder in _HELD or int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    path = folder / ".corsa-lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
    except OSError as e:
        raise ConfigError(f"output folder {folder} is not writable: {e.strerror or e}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise ConfigError(f"{folder} is in use by another corsa run{f' (process {holder})' if holder else ''}; "
                          f"wait for it to finish, or choose another --out") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _HELD.add(folder)
    try:
        recover(folder)  # what a killed run left here: no other run can be writing it now
        yield
    finally:
        _HELD.discard(folder)
        with contextlib.suppress(OSError):
            path.unlink()
        f.close()
