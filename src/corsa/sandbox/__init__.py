"""Run a program a model wrote, and only that program: :func:`run_program`.

Each call runs the source in a separate interpreter, in a fresh temporary directory, through a
supervisor process (``_supervisor.py``, whose docstring lists every layer) that applies

- new mount, network, pid and IPC namespaces: every mount read-only except the program's directory, the
  invoking user's home covered by an empty tmpfs, and a network with only a loopback that is down;
- a user id of the program's own when corsa runs as root (CI and these machines do), since
  RLIMIT_NPROC does not hold for root and root could signal anything;
- CPU-time, address-space, file-size, open-file and process-count limits, a cleaned environment;
- a wall-clock timeout, after which the program and everything it started is killed, so that
  nothing it starts outlives the call;
- a seccomp filter, installed last: socket() of any family and io_uring_setup fail with EPERM
  (a path socket outside the directory is reachable through a read-only mount; AF_VSOCK is not
  covered by the network namespace), as does every call of another ABI (x32, i386);
- Landlock, where the kernel has it (``isolation["landlock"]``, the ABI): writes only beneath the
  program's directory and to /dev/null (a FIFO outside it is writable through a read-only mount),
  and from ABI 6 abstract unix sockets and signals scoped to the program's own processes;
- an audit hook in the program's interpreter that refuses sockets and writes outside its
  directory, a second layer where the kernel refuses namespaces.

A program's misbehaviour is always an :class:`Outcome` (``timeout``, ``memory``, ``failed``,
``error``), never an exception in corsa.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

STATUSES = ("passed", "failed", "timeout", "memory", "error")
_SUPERVISOR = Path(__file__).with_name("_supervisor.py")
# A user id of the program's own, outside any range a distribution hands out (no passwd entry):
# its processes are exactly the program's, which is what the process limit and the kill count.
_UID_BASE, _UID_SPAN = 1_500_000_000, 100_000_000
_MEMORY = re.compile(r"MemoryError|can't allocate memory|Cannot allocate memory|std::bad_alloc")
_NOT_STARTED = "corsa sandbox: could not start the program"
_LAST_EXCEPTION = re.compile(r"^(\w[\w.]*(?:Error|Exception|Exit|Interrupt)|AssertionError)\b", re.M)


@dataclass(frozen=True)
class Outcome:
    """What became of a program: ``status`` is one of :data:`STATUSES`."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    detail: str = ""
    isolation: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def classify(returncode: int | None, stderr: str, timed_out: bool, oom_killed: bool = False) -> tuple[str, str]:
    """The status of a finished program and a one-line reason, from its exit and its stderr.

    ``passed``: exit 0. ``timeout``: killed at the wall-clock limit, or by the CPU limit
    (SIGXCPU, -24). ``memory``: the program's last exception is a MemoryError or an allocator's
    failure (the address-space limit), or the run's memory cgroup killed it (``oom_killed``).
    ``failed``: its last exception is an AssertionError (a unit test), or a non-zero exit without
    a traceback. ``error``: any other exception or signal (the program is broken).
    """
    if timed_out or returncode == -24:
        return "timeout", "killed at the time limit"
    if returncode == 0:
        return "passed", ""
    if returncode == 127 and _NOT_STARTED in stderr:
        return "error", _last_line(stderr)
    exceptions = _LAST_EXCEPTION.findall(stderr)
    last = exceptions[-1] if exceptions else ""
    if last == "AssertionError":
        return "failed", _last_line(stderr)
    if oom_killed or (last and (_MEMORY.search(last) or _MEMORY.search(_last_line(stderr)))):
        return "memory", _last_line(stderr) or "killed: over the memory limit"
    if not last and returncode is not None and returncode > 0 and "Traceback" not in stderr:
        return "failed", f"exit status {returncode}"
    if returncode is not None and returncode < 0 and not last:
        return "error", f"killed by signal {-returncode}"
    return "error", _last_line(stderr) or f"exit status {returncode}"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _environment(workdir: str) -> dict:
    # Nothing of the caller's environment: no tokens, no proxies, no PYTHONPATH. One thread per
    # numerical library (threads count against the process limit and the address space).
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
           "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
           "MALLOC_ARENA_MAX": "2"}
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[name] = "1"
    return env


def _passwd_home() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError):
        return ""


@functools.lru_cache(maxsize=8)
def _interpreter_paths(python: str | None) -> tuple[str, ...]:
    """The directories the program's interpreter reads: kept visible when the home is covered.

    Asked of that interpreter itself (it may be another environment's), once per interpreter.
    """
    exe = python or sys.executable
    try:
        done = subprocess.run([exe, "-I", "-c", _PATHS_SCRIPT], capture_output=True, text=True, timeout=30)
        found = json.loads(done.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        found = []
    return tuple(sorted({os.path.realpath(p) for p in [*found, os.path.dirname(os.path.realpath(exe))] if p}))


_PATHS_SCRIPT = """
import json, site, sys, sysconfig
paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(),
         *(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))]
print(json.dumps(paths))
"""


class _Cgroups:
    """Memory and process limits for the program's processes together (cgroup v2, else v1).

    rlimits hold per process: 64 processes of 1 GiB each would be 64 GiB. Where corsa may create
    cgroups (as root, these machines), the run gets its own memory and pids cgroup, which the
    supervisor joins before it forks the program; removed after the run. Where it may not, the
    per-process limits are what is left (``isolation["cgroups"]`` says 0).
    """

    def __init__(self, memory_mb: int, processes: int):
        self.paths: list[Path] = []
        name = f"corsa-sandbox-{secrets.token_hex(6)}"
        memory = str((memory_mb + 128) << 20)  # the supervisor's own interpreter is in it too
        pids = str(processes + 8)
        v2 = Path("/sys/fs/cgroup/unified") if Path("/sys/fs/cgroup/unified/cgroup.controllers").exists() \
            else Path("/sys/fs/cgroup")
        wanted = {"memory": ("memory.max", memory), "pids": ("pids.max", pids)}
        try:
            enabled = set((v2 / "cgroup.subtree_control").read_text().split())
        except OSError:
            enabled = set()
        for controller, (limit, value) in wanted.items():
            v1 = Path("/sys/fs/cgroup") / controller
            if controller in enabled:
                target, limit_file = v2 / name, limit
            elif (v1 / "cgroup.procs").exists() and not (v1 / "cgroup.controllers").exists():
                target, limit_file = v1 / name, {"memory": "memory.limit_in_bytes", "pids": "pids.max"}[controller]
            else:
                continue
            try:
                target.mkdir(exist_ok=True)
                (target / limit_file).write_text(value)
                if controller == "memory" and (target / "memory.memsw.limit_in_bytes").exists():
                    (target / "memory.memsw.limit_in_bytes").write_text(value)  # no way around it through swap
                if target not in self.paths:
                    self.paths.append(target)
            except OSError:
                continue

    def oom_killed(self) -> bool:
        for path in self.paths:
            for name in ("memory.events", "memory.oom_control"):
                try:
                    text = (path / name).read_text()
                except OSError:
                    continue
                if any(line.split()[0] == "oom_kill" and int(line.split()[1]) > 0
                       for line in text.splitlines() if len(line.split()) == 2):
                    return True
        return False

    def remove(self) -> None:
        for path in self.paths:
            for _ in range(50):  # the supervisor has exited; its cgroup empties a moment later
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)


def check() -> None:
    """Raise :class:`corsa.errors.ConfigError` with the reason when programs cannot run here.

    One trivial program through :func:`run_program`: before a benchmark runs hundreds, so that a
    kernel without namespaces or an unreadable interpreter is one clear message, not a column of
    failed tasks.
    """
    from ..errors import ConfigError

    outcome = run_program("print('ok')", timeout_s=30)
    if outcome.status != "passed" or outcome.stdout.strip() != "ok":
        raise ConfigError(f"the sandbox cannot run programs here: {outcome.detail or outcome.status}. "
                          f"Generated code is only ever run in it, so code benchmarks cannot run")


def run_program(source: str, timeout_s: float = 10, memory_mb: int = 1024, *,
                file_mb: int = 64, disk_mb: int = 256, processes: int = 64, python: str | None = None,
                require_isolation: bool = True) -> Outcome:
    """Run ``source`` as ``main.py`` in a sandbox and return its :class:`Outcome`.

    ``timeout_s`` is wall-clock (the CPU limit is one second more); ``memory_mb`` bounds the
    address space, ``file_mb`` every file written, ``disk_mb`` all of them together (the directory
    is a tmpfs of that size where namespaces are available), ``processes`` the processes and threads of the
    program's user (as root, where it has one of its own). ``python`` is the interpreter
    (default: this one, so the program sees the packages corsa's environment has).

    Where the kernel refuses the namespaces, the program is not run (status ``error``, the
    reason in ``detail``) unless ``require_isolation=False``: then only the limits, the user id
    and the interpreter's audit hook (no sockets, no writes outside its directory from Python)
    stand between it and the machine, which a program calling libc directly gets past.
    """
    import math

    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (
            math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive, finite number of seconds, not {timeout_s!r}")
    for name, value in (("memory_mb", memory_mb), ("file_mb", file_mb), ("disk_mb", disk_mb),
                        ("processes", processes)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive whole number, not {value!r}")
    root = os.getuid() == 0
    uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if root else None
    workdir = tempfile.mkdtemp(prefix="corsa-sandbox-")
    try:
        (Path(workdir) / "main.py").write_text(source, encoding="utf-8")
        if uid is not None:
            os.chown(workdir, uid, uid)
            os.chown(Path(workdir) / "main.py", uid, uid)
            os.chmod(workdir, 0o700)
        homes = sorted({str(Path.home()), os.environ.get("HOME", str(Path.home())), _passwd_home()} - {"", "/"})
        config = {"workdir": workdir, "python": python or sys.executable, "timeout_s": timeout_s,
                  "memory_mb": memory_mb, "file_mb": file_mb, "disk_mb": disk_mb, "processes": processes, "uid": uid,
                  "homes": homes, "keep": _interpreter_paths(python), "env": _environment(workdir),
                  "require_isolation": require_isolation}
        cgroups = _Cgroups(memory_mb, processes) if root else None
        config["cgroups"] = [str(p) for p in cgroups.paths] if cgroups else []
        try:
            done = subprocess.run([sys.executable, "-I", str(_SUPERVISOR), json.dumps(config)],
                                  capture_output=True, text=True, timeout=timeout_s + 30,
                                  start_new_session=True, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Outcome("error", None, "", "", timeout_s + 30, "the sandbox's supervisor did not finish")
        finally:
            oom = cgroups.oom_killed() if cgroups else False
            if cgroups:
                cgroups.remove()
        try:
            result = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return Outcome("error", None, "", done.stderr[-2000:], 0.0,
                           f"the sandbox's supervisor failed: {_last_line(done.stderr)}")
        if "refused" in result:
            return Outcome("error", None, "", "", 0.0, f"sandbox unavailable: {result['refused']}",
                           result["isolation"])
        status, detail = classify(result["returncode"], result["stderr"], result["timed_out"], oom)
        if result["survivors"]:
            detail = f"{detail}; {result['survivors']} of its processes could not be killed".lstrip("; ")
        return Outcome(status, result["returncode"], result["stdout"], result["stderr"], result["seconds"],
                       detail, result["isolation"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_programs(sources: list[str], timeout_s: float = 10, memory_mb: int = 1024, *,
                 workers: int | None = None, **options) -> list[Outcome]:
    """:func:`run_program` on each source, ``workers`` at a time (default: the CPU count), in order.

    Threads are enough: each program is a process of its own and the threads only wait on it.
    """
    from concurrent.futures import ThreadPoolExecutor

    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: run_program(s, timeout_s, memory_mb, **options), sources))
