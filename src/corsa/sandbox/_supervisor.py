"""The sandbox's supervisor: the process between corsa and a program it runs.

Started by :func:`corsa.sandbox.run_program` as ``python -I _supervisor.py CONFIG``. It imports
nothing from corsa (``-I`` ignores PYTHONPATH, and a program's limits must not depend on which
corsa is importable), so it is a plain script. It

1. becomes a *child subreaper*, so that whatever the program starts and orphans is re-parented to
   it rather than to init, where it could not be found again;
2. enters new mount, network, pid and IPC namespaces (as root directly; otherwise inside a new user
   namespace, where the kernel allows one): the network holds only a loopback that is down, every
   mount is made read-only except the program's own temporary directory, and the invoking user's
   home is covered by an empty, read-only tmpfs;
3. forks the program with a cleaned environment, Landlock (writes only beneath its directory and
   to /dev/null), a seccomp filter (no socket(), no io_uring, no foreign ABI), CPU-time,
   address-space, file-size, open-file and process-count limits, and, as root, under a user id of its own (no passwd entry, no groups), so
   that the process-count limit counts only the program's processes (RLIMIT_NPROC is not enforced
   for root) and the program can signal nothing but itself;
4. waits for the program, at most the wall-clock timeout, reading its output through pipes;
5. kills everything the program started: as root, every process of its user id (by a helper
   that takes that id and calls ``kill(-1, SIGKILL)``, which reaches exactly the processes of
   that user), otherwise its process group and every descendant re-parented to the supervisor;
   then reaps them, and writes one JSON line on stdout.

Each isolation step that the kernel refuses is reported (``isolation`` in the JSON) and the
remaining ones still apply; the interpreter-level guard in :data:`BOOTSTRAP` (an audit hook that
refuses sockets and writes outside the directory) is a second layer, not the first.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import resource
import selectors
import signal
import struct
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_NEWIPC = 0x08000000  # System V message queues, semaphores and shared memory, POSIX message queues
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
OUTPUT_LIMIT = 1 << 20  # bytes of stdout and of stderr kept (the last ones: a traceback ends its output)

_libc = ctypes.CDLL(None, use_errno=True)

# Runs the program inside the sandboxed interpreter. The audit hook is the second layer (the
# namespaces are the first): it refuses every socket operation and every open for writing
# outside the working directory, so a kernel without namespaces still blocks the common cases.
BOOTSTRAP = r"""
import os, runpy, sys
_root = os.path.realpath(os.getcwd())
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _guard(event, args):
    if event.startswith("socket.") and event not in ("socket.gethostname", "socket.__new__"):
        raise PermissionError("the corsa sandbox allows no network access")
    if event == "open" and isinstance(args[0], (str, bytes)):
        mode, flags = args[1], args[2] or 0
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or flags & _WRITE:
            path = os.path.realpath(os.fsdecode(args[0]))
            if path != "/dev/null" and not (path + "/").startswith(_root + "/"):
                raise PermissionError(f"the corsa sandbox allows writes only under {_root}: {path}")
sys.addaudithook(_guard)
sys.argv = ["main.py"]
runpy.run_path("main.py", run_name="__main__")
"""


# The system calls no program needs and some use to get out: socket() of any family (a path
# socket outside the directory stays connectable through a read-only mount, and AF_VSOCK is not
# covered by the network namespace) and io_uring_setup (io_uring makes and connects sockets
# without calling socket()). socketpair() stays: an unnamed connected pair reaches nothing. A
# call of another ABI (x32, or i386 through int 0x80, whose socketcall multiplexes socket()) is
# refused whole. The filter is installed after PR_SET_NO_NEW_PRIVS, just before the program
# starts, and is inherited by everything it starts; nothing can remove it.
_FILTERED = {"x86_64": (0xC000003E, (41, 425)), "aarch64": (0xC00000B7, (198, 425))}
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
_SECCOMP_ALLOW, _SECCOMP_EPERM = 0x7FFF0000, 0x00050000 | errno.EPERM


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def syscall_filter() -> list[tuple[int, int, int, int]]:
    """The seccomp BPF program (code, jt, jf, k) for this machine; [] where none is known."""
    arch_calls = _FILTERED.get(os.uname().machine)  # no import: after isolation the stdlib may be hidden
    if arch_calls is None:
        return []
    arch, calls = arch_calls
    ld_w_abs, jeq_k, jge_k, ret_k = 0x20, 0x15, 0x35, 0x06
    denied = len(calls) + 6  # the index of the final "refuse"
    prog = [(ld_w_abs, 0, 0, 4),  # A = seccomp_data.arch
            (jeq_k, 1, 0, arch),  # this machine's ABI: go on; another: refuse
            (ret_k, 0, 0, _SECCOMP_EPERM),
            (ld_w_abs, 0, 0, 0),  # A = seccomp_data.nr
            (jge_k, denied - 5, 0, 0x40000000)]  # x32 system calls carry this bit
    for i, nr in enumerate(calls):
        prog.append((jeq_k, denied - (6 + i), 0, nr))
    prog += [(ret_k, 0, 0, _SECCOMP_ALLOW), (ret_k, 0, 0, _SECCOMP_EPERM)]
    return prog


def install_syscall_filter() -> None:
    """Install :func:`syscall_filter` on this process (needs PR_SET_NO_NEW_PRIVS first); OSError if refused."""
    prog = syscall_filter()
    if not prog:
        raise OSError(errno.ENOSYS, "no system call filter is known for this machine")
    raw = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in prog))  # struct: imported at start
    fprog = _SockFprog(len(prog), ctypes.cast(raw, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


# Landlock (Linux 5.13+): a read-only mount does not stop a program from writing into a FIFO (or a
# device) outside its directory, since that writes no file system; Landlock's WRITE_FILE right,
# granted only beneath the program's directory and on /dev/null, refuses those opens. Newer ABIs
# also scope abstract unix sockets and signals to the program's own processes.
_SYS_LANDLOCK = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
_FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR, _TRUNCATE = 1, 2, 4, 8, 1 << 14


def landlock_abi() -> int:
    """The Landlock ABI version the kernel offers; 0 without Landlock."""
    calls = _SYS_LANDLOCK.get(os.uname().machine)
    if calls is None:
        return 0
    version = _libc.syscall(calls[0], None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # ..._VERSION
    return max(int(version), 0)


def install_landlock(workdir: str) -> int:
    """Restrict this process to reading and executing everywhere, writing beneath `workdir` (and to
    /dev/null); from ABI 6, abstract unix sockets and signals to its own domain. Returns the ABI."""
    abi = landlock_abi()
    if abi < 1:
        return 0
    create, add_rule, restrict = _SYS_LANDLOCK[os.uname().machine]
    fs = _FS_RIGHTS_BY_ABI.get(abi, (1 << 16) - 1)
    attr = (ctypes.c_uint64 * 3)(fs, 0, 3 if abi >= 6 else 0)  # handled fs, net (none), scoped
    ruleset = _libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(24 if abi >= 6 else 8), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")

    def allow(path: str, rights: int) -> None:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            rule = struct.pack("=Qi", rights, fd)  # struct landlock_path_beneath_attr, packed
            buf = ctypes.create_string_buffer(rule, len(rule))
            _check(_libc.syscall(add_rule, ruleset, 1, buf, ctypes.c_uint32(0)), f"landlock rule {path}")
        finally:
            os.close(fd)

    try:
        allow("/", _EXECUTE | _READ_FILE | _READ_DIR)
        allow(workdir, fs)
        allow("/dev/null", (_WRITE_FILE | _READ_FILE | (_TRUNCATE if abi >= 3 else 0)) & fs)
        _check(_libc.syscall(restrict, ruleset, ctypes.c_uint32(0)), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _mount_points() -> list[tuple[str, int, bool]]:
    """Every mount point of this namespace: its path, the per-mount flags a read-only remount must
    keep, and whether it is writable now. Paths are read as bytes and their octal escapes (``\\040``
    for a space) undone, so a name in any encoding is found as it is."""
    points = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
            options = fields[5].decode().split(",")
            keep = (MS_NOSUID if "nosuid" in options else 0) | (MS_NODEV if "nodev" in options else 0) \
                | (MS_NOEXEC if "noexec" in options else 0)
            points.append((os.fsdecode(raw), keep, "rw" in options))
    return points


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _cover(home: str, keep: list[str]) -> None:
    """Cover ``home`` with an empty tmpfs, except the directories in ``keep`` under it.

    The interpreter itself may live in the home (pyenv, uv: ``/root/.pyenv/...``), so its
    prefix and site-packages are bound back, read-only, at the same paths; nothing else is.
    """
    inside = [p for p in keep if (p + "/").startswith(home.rstrip("/") + "/") and os.path.isdir(p)]
    handles = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in inside]  # reachable after covering
    _mount("none", home, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
    for path, fd in handles:
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)


def isolate(workdir: str, homes: list[str], keep: list[str], disk_mb: int = 256) -> dict:
    """Enter new mount and network namespaces; everything read-only but ``workdir``; homes covered."""
    state = {"namespaces": False, "filesystem": False, "network": False, "home_hidden": False}
    uid, gid = os.getuid(), os.getgid()
    # a new pid namespace too: the program (its first process) sees and signals no process outside
    # it, and when it ends the kernel kills whatever it left behind
    # and a new IPC namespace: a System V message queue or shared memory segment made by any process
    # of the host is otherwise reachable by its key (nothing on the file system to make read-only)
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
    if uid != 0:
        flags |= CLONE_NEWUSER
    try:
        _check(_libc.unshare(flags), "unshare")
    except OSError as e:
        state["error"] = str(e)
        return state
    state["namespaces"] = state["network"] = True
    try:
        if uid != 0:  # map ourselves to ourselves: the same files stay ours, nothing else becomes so
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here reaches the host
        # the directory becomes a tmpfs of its own, kept writable, of bounded size (a program writing
        # many files cannot fill the host's disk) and gone with the namespace; the program is copied in
        files = {name: open(os.path.join(workdir, name), "rb").read() for name in os.listdir(workdir)}
        owner = os.stat(workdir)
        _mount("none", workdir, "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={int(disk_mb)}m,mode=700,uid={owner.st_uid},gid={owner.st_gid}")
        for name, content in files.items():
            with open(os.path.join(workdir, name), "wb") as f:
                f.write(content)
            os.chown(os.path.join(workdir, name), owner.st_uid, owner.st_gid)
        state["directory_mb"] = int(disk_mb)
        for home in homes:
            if not (workdir + "/").startswith(home.rstrip("/") + "/") and os.path.isdir(home):
                _cover(home, keep)
                state["home_hidden"] = True
        failed = []
        for point, keep, writable in _mount_points():
            if point == workdir or not writable:
                continue
            try:
                _mount(None, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | keep)
            except OSError as e:
                failed.append(f"{point}: {e.strerror}")
        # a writable mount left writable is a way out: the filesystem is isolated only if none is
        state["filesystem"] = not failed
        if failed:
            state["read_only_failed"] = failed[:8]
    except OSError as e:
        state["error"] = str(e)
    return state


def _processes_of(uid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status") as f:
                    for line in f:
                        if line.startswith("Uid:"):
                            if int(line.split()[1]) == uid:
                                pids.append(int(name))
                            break
            except OSError:
                continue
    return pids


def _descendants() -> list[int]:
    """The processes below this one (children of children…), found through /proc."""
    found, frontier = [], [os.getpid()]
    while frontier:
        pid = frontier.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found += kids
            frontier += kids
    return found


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _fork_or_none() -> int | None:
    try:
        return os.fork()
    except OSError:
        return None


def kill_all(pid: int, uid: int | None) -> int:
    """Kill the program and everything it started; return how many processes remained after 5 s."""
    deadline = time.monotonic() + 5.0
    while True:
        # (in a pid namespace whose first process has ended, fork fails with ENOMEM: the kernel
        # has killed its every process already)
        killer = _fork_or_none() if uid is not None else None
        if killer is not None:
            if killer == 0:  # as the program's user, kill(-1) reaches all of its processes and no other
                try:
                    os.setgid(uid)
                    os.setuid(uid)
                    os.kill(-1, signal.SIGKILL)
                finally:
                    os._exit(0)
            os.waitpid(killer, 0)
        for target in [pid, *_descendants()]:
            for kill in (os.killpg, os.kill):
                try:
                    kill(target, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        _reap()
        left = (_processes_of(uid) if uid is not None else []) + _descendants()
        if not left or time.monotonic() > deadline:
            return len(left)
        time.sleep(0.02)


def _keep_tail(kept: bytearray, chunk: bytes) -> None:
    kept += chunk
    if len(kept) > OUTPUT_LIMIT:
        del kept[:len(kept) - OUTPUT_LIMIT]


def _join_cgroups(paths: list[str]) -> list[str]:
    """Move this process (and so the program it forks) into the cgroups corsa made for the run.

    Their memory and process limits hold for all of the program's processes together, which the
    per-process rlimits do not. Done before the mounts turn read-only. Returns those joined.
    """
    joined = []
    for path in paths:
        try:
            _write(os.path.join(path, "cgroup.procs"), str(os.getpid()))
            joined.append(path)
        except OSError:
            pass
    return joined


def _fresh_proc() -> None:
    """In the program's own pid namespace, a /proc that shows only its processes (best effort).

    A mount namespace of its own first, so that the supervisor keeps seeing the host's /proc.
    """
    try:
        _check(_libc.unshare(CLONE_NEWNS), "unshare")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        _mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        pass


def _limits(config: dict) -> None:
    timeout = float(config["timeout_s"])
    cpu = int(timeout) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = int(config["memory_mb"]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(config["file_mb"]) << 20,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    processes = int(config["processes"])
    if config.get("uid") is None or os.getuid() != 0:  # the same user as others: count them too
        processes += len(_processes_of(os.getuid()))
    resource.setrlimit(resource.RLIMIT_NPROC, (processes,) * 2)


def run(config: dict) -> dict:
    workdir = os.path.realpath(config["workdir"])
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    cgroups = _join_cgroups(config.get("cgroups", []))
    isolation = isolate(workdir, config["homes"], config["keep"], config.get("disk_mb", 256)) if config.get("isolate", True) else {"namespaces": False}
    uid = config.get("uid") if os.getuid() == 0 else None
    isolation["own_user"] = uid is not None
    isolation["cgroups"] = len(cgroups)
    isolation["syscall_filter"] = bool(syscall_filter())
    landlock = landlock_abi() if isolation.get("namespaces") else 0
    isolation["landlock"] = landlock  # the ABI version; 0 where the kernel has no Landlock
    if config.get("require_isolation", True) and not (isolation["namespaces"] and isolation.get("filesystem")):
        # without them the program could write anywhere its user may: refuse rather than pretend
        return {"refused": "the kernel refused the namespaces the sandbox needs "
                           f"({isolation.get('error') or isolation.get('read_only_failed')})", "isolation": isolation}
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the program
        try:
            os.setpgid(0, 0)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for fd in (null, out_r, out_w, err_r, err_w):
                os.close(fd)
            os.chdir(workdir)
            _limits(config)
            if isolation["namespaces"]:
                _fresh_proc()
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            # after setuid, which clears it: the program dies with the supervisor
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
            if landlock:
                install_landlock(workdir)  # writes only beneath the directory, whatever a mount lets through
            if config.get("require_isolation", True) or syscall_filter():
                install_syscall_filter()  # the last step: from here no socket can be made
            os.execve(config["python"], [config["python"], "-I", "-c", BOOTSTRAP], config["env"])
        except BaseException as e:  # noqa: BLE001 - anything here is reported as the program's error
            os.write(2, f"corsa sandbox: could not start the program: {e!r}\n".encode())
        os._exit(127)
    os.close(out_w)
    os.close(err_w)
    output = {out_r: bytearray(), err_r: bytearray()}
    selector = selectors.DefaultSelector()
    for fd in output:
        selector.register(fd, selectors.EVENT_READ)
    deadline = started + float(config["timeout_s"])
    status, timed_out = None, False
    while status is None:
        for key, _ in selector.select(timeout=0.05):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fd)
                continue
            _keep_tail(output[key.fd], chunk)
        done, status_word = os.waitpid(pid, os.WNOHANG)
        if done:
            status = status_word
        elif time.monotonic() > deadline:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            status = os.waitpid(pid, 0)[1]
    seconds = time.monotonic() - started
    survivors = kill_all(pid, uid)
    for fd in list(output):  # what the program wrote before it ended
        os.set_blocking(fd, False)  # a survivor holding the pipe must not hang the supervisor
        try:
            while chunk := os.read(fd, 65536):
                _keep_tail(output[fd], chunk)
        except OSError:
            pass
        os.close(fd)
    return {
        "returncode": os.waitstatus_to_exitcode(status),
        "timed_out": timed_out,
        "seconds": round(seconds, 3),
        "stdout": output[out_r].decode("utf-8", "replace"),
        "stderr": output[err_r].decode("utf-8", "replace"),
        "survivors": survivors,
        "isolation": isolation,
    }


def main() -> None:
    config = json.loads(sys.argv[1])
    result = run(config)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        if e.errno == errno.EPIPE:
            sys.exit(1)
        raise
