"""A folder's files published together: several finished files and folders appear at once, or none does.

Each is written complete under a temporary name beside its final one (`.NAME.xxxxxxxx.tmp`,
as tempfile names them), then a journal listing the renames is written atomically, then the
renames run, then the journal goes. A kill before the journal leaves the old state (and
temporaries that `recover` removes); a kill after it leaves a journal that `recover` replays.
So a run folder always holds one run's adapter, record and log, never a mix, and never none.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import ConfigError, OutputError
from .files import atomic_write_json, json_object, stage_dir
from .ownership import foreign_files, is_corsa_name, is_own_temporary, is_staged, is_step_log

JOURNAL = ".corsa-publish.{}.json"  # named by the first entry published: one per target, so the model
                                     # cache can convert two models side by side
PARTIAL_LOG = "log.partial.jsonl"  # an update's step log until the update is published as log.jsonl
_LEFTOVER = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|old)$")  # what tempfile.mkstemp/mkdtemp made for us


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
    if not is_own_temporary(journal):
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


def _pending_targets(folder: Path, kind: str) -> set[str]:
    """The names an interrupted publish in `folder` replaces (its journals' moves): each a name corsa
    writes in a folder of `kind`, from a temporary staged for that name (or renamed already)."""
    names = set()
    for journal in folder.glob(JOURNAL.format("*")):
        if is_own_temporary(journal):
            for move in json_object(journal)["moves"]:
                if (isinstance(move, list) and len(move) == 2 and all(isinstance(x, str) for x in move)
                        and is_corsa_name(kind, move[0]) and move[1].startswith(f".{move[0]}.")
                        and (is_staged(folder / move[1], kind) or not os.path.lexists(folder / move[1]))):
                    names.add(move[0])
    return names


def recover(folder: str | os.PathLike, kind: str = "run", dirs: tuple[str, ...] = ()) -> None:
    """Finish what a killed run left in `folder`: replay an interrupted publish, remove temporaries.

    Only in a folder proved corsa's (`ownership.foreign_files` of `kind` finds nothing there but
    the entries an interrupted publish replaces): in any other folder nothing is touched, and the
    run's `check_ours` refuses it. Only what corsa stages there (`ownership.is_staged`) and step
    logs are removed, in corsa's own subfolders (update-k, a bench's method folders in `dirs`).
    Call it only while holding the folder (`output_lock`): a temporary there belongs to no live run.
    """
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return
    pending = _pending_targets(folder, kind)
    if any(f.split("/")[0] not in pending for f in foreign_files(folder, kind, dirs)):
        return
    _clean(folder, kind, dirs, 0)


def _clean(folder: Path, kind: str, dirs: tuple[str, ...], depth: int) -> None:
    _finish_pending(folder)
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if is_staged(entry, kind) or (name.startswith(".corsa-write-test-") and is_own_temporary(entry)):
            _remove(entry)
        elif name == PARTIAL_LOG and kind == "run" and entry.is_file() and not entry.is_symlink() and is_step_log(entry):
            _remove(entry)
        elif entry.is_dir() and not entry.is_symlink():
            if kind == "run" and depth == 0 and re.fullmatch(r"update-\d+", name):
                _clean(entry, "run", (), 1)
            elif kind == "bench" and name in dirs:
                _clean(entry, "method", (), 1)
            elif kind == "method" and re.fullmatch(r"update-\d+", name):
                _clean(entry, "run", (), 2)


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
    old = json_object(folder / "corsa-export.json") if kind == "export" else None
    listed = set(old["files"]) if isinstance(old, dict) and isinstance(old.get("files"), dict) else None
    filled = stage_dir(folder, "contents")
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
            if (entry.name not in staged and entry.is_file() and is_corsa_name(kind, entry.name)
                    and (listed is None or entry.name in listed)):
                entry.unlink()
    finally:
        shutil.rmtree(filled, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder; on success it replaces `path` whole (old content removed)."""
    path = Path(path)
    tmp = stage_dir(path.parent, path.name)
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
    from . import distributed as dist  # imports torch: here, so that `corsa --help` stays free of it

    if dist.world_size() == 1:
        with atomic_dir(path) as tmp:
            yield tmp
        return
    path = Path(path)
    tmp = Path(dist.on_main(stage_dir, path.parent, path.name))
    try:
        yield tmp
        dist.on_main(_publish_one, tmp, path)
    finally:
        if dist.is_main() and tmp.exists():  # no collective here: a failing worker must not wait
            shutil.rmtree(tmp, ignore_errors=True)


def check_writable(folder: str | os.PathLike, need_bytes: int = 50 * 2**20) -> None:
    """Fail before training, not after, when the output folder cannot take the results."""
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

