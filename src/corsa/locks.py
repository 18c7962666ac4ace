"""One run per output folder: a lock that holds across threads and processes.

An OS file lock (flock) on ``folder/.corsa-lock``, with a per-process table so that a second
thread of one process is refused too; the run that takes the lock first finishes what a killed
run left in the folder (`corsa.publish.recover`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from .errors import ConfigError
from .ownership import is_own_temporary
from .publish import recover

_HELD: dict[Path, list] = {}  # output folders this process holds: folder -> [holding thread, depth]
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, kind: str = "run", dirs: tuple[str, ...] = ()):
    """Hold `folder` for one run: a second run on it, at the same time, is refused at once.

    An OS file lock (flock) on ``folder/.corsa-lock``: a killed run's lock goes with its process,
    so it never stays stuck. Within a process the lock is re-entrant for the thread that holds
    it and refused to any other thread (two Editors of one service writing one folder). Under
    a launcher only the main process (RANK 0) locks. `kind` and `dirs` say what the folder is
    (`ownership.foreign_files`): a killed run's leftovers are removed only where it is proved corsa's.
    """
    import fcntl  # POSIX only: imported where it is used

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
        with _file_lock(folder, fcntl, kind, dirs):
            yield
    finally:
        with _HELD_GUARD:
            _HELD.pop(folder, None)


@contextlib.contextmanager
def _file_lock(folder: Path, fcntl, kind: str = "run", dirs: tuple[str, ...] = ()):
    path = folder / ".corsa-lock"
    while True:
        f = _open_lock(folder, path)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read(64).strip()
            f.close()
            raise ConfigError(f"{folder} is in use by another corsa run{f' (process {holder})' if holder else ''}; "
                              f"wait for it to finish, or choose another --out") from None
        # the holder before us unlinks the lock file as it lets go: a lock on that unlinked file
        # holds nothing (a third run creates a new file and locks it). Locked the file the name
        # names now, or try again.
        try:
            same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if same:
            break
        f.close()
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    try:
        recover(folder, kind, dirs)  # what a killed run left here: no other run can be writing it now
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        f.close()


def _open_lock(folder: Path, path: Path):
    if (path.exists() or path.is_symlink()) and not is_own_temporary(path):  # a file of the user's under corsa's lock name
        raise ConfigError(f"output folder {folder} holds {path}, which corsa did not write (its lock file holds a "
                          f"process id); corsa never replaces it. Choose another folder, or move it out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return open(path, "a+")
    except OSError as e:
        raise ConfigError(f"output folder {folder} is not writable: {e.strerror or e}") from None
