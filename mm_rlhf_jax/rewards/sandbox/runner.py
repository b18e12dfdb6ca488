"""Sandbox stage 2: run untrusted code and its tests, then report a verdict.

This file is executed as `python -I -B -u -c <this source> <config>`
by the supervisor (`supervisor.py`), already inside the isolation it built
(dropped uid, namespaces, rlimits, private working directory), or as
`python -I -S -B -u -c ...` by bubblewrap (`bwrap.py`), inside bwrap's
namespaces and seccomp filter. It uses the standard library only and never
imports the package. The config (hex) and the payload (stdin) are `marshal`
data written by the host: unlike json, marshal is built into the
interpreter, which saves the import of `json` and `re` at every start.

Steps:
  1. read the payload `{"nonce", "code", "tests"}` from stdin until EOF, then
     point stdin at /dev/null (the program sees an empty stdin);
     under bubblewrap (`contain` in the config, see `contain()`): add the
     site-packages directories, drop to the leased uid, fork; the parent
     waits for the child and reports `X <wait status> <cpu> <max rss>` as
     the supervisor does, the child sets the rlimits, checks that it holds
     no capability, reports the layers it verified (`L <json>`) and goes on;
  2. install the Python-level guard (an audit hook, `sys.addaudithook`, which
     cannot be removed once added) unless the host turned it off;
  3. write `S` on the result pipe (the host starts the timeout clock), run the
     code and then the tests in one `__main__` namespace;
  4. write `R <nonce> <status> <detail>` and leave with `os._exit(0)`.

The nonce arrives on stdin, so a program that ends early (`sys.exit(0)`,
`os._exit(0)`) or prints a fake verdict line cannot claim "passed": the host
accepts "passed" only with the nonce. The code and tests share one process,
so a program that deliberately inspects the interpreter's memory could find
the nonce; the kernel layers, not the verdict, are the security boundary.

The guard blocks, and reports as `V <event> <detail>` (status "forbidden"):
  network    sockets other than AF_UNIX, connect/bind/sendto outside the
             working directory, name resolution, urllib/http/ftp/smtp/...;
  processes  exec, posix_spawn, os.system, subprocess; os.fork only when the
             kernel cannot bound the number of processes (running as root
             without a uid drop);
  files      opening for write, creating, removing, renaming, linking,
             chmod/chown/utime/truncate outside the working directory (only
             /dev/null is allowed), reading other processes' /proc entries;
  signals    os.kill to a process outside the sandbox's session, to the
             supervisor or to pid 1; process-group signals (pid <= 0, killpg);
  escapes    ctypes symbol lookup / foreign calls / loading a library from
             the working directory, sys.settrace / sys.setprofile (a tracer
             can jump over failing asserts), resource.prlimit on other pids.
It is best effort: Python-level hooks can be bypassed by native code, which
is why the kernel layers (bubblewrap or the supervisor) hold on their own.
"""

import builtins
import marshal
import os
import sys

# Bound before any untrusted code runs, so that a program that rebinds
# `os._exit`, `os.write` or builtins cannot change how the verdict is sent.
_exit = os._exit
_write = os.write
_realpath = os.path.realpath
_isabs = os.path.isabs
_fstat = os.fstat
_getsid = os.getsid
_AssertionError = AssertionError
_MemoryError = MemoryError
_SystemExit = SystemExit
_BaseException = BaseException

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_MAX_REPORTED_VIOLATIONS = 16
_ALLOWED_WRITE_PATHS = ("/dev/null",)
_BLOCKED_EVENTS = {
    "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.startfile",
    "subprocess.Popen", "pty.spawn", "os.link",
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
    "socket.getnameinfo", "socket.sethostname",
    "urllib.Request", "http.client.connect", "ftplib.connect", "smtplib.connect",
    "poplib.connect", "imaplib.open", "nntplib.connect", "telnetlib.Telnet.open",
    "webbrowser.open", "sys.settrace", "sys.setprofile",
    "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function", "ctypes.cdata",
    "ctypes.cdata/buffer", "ctypes.set_errno", "ctypes.set_last_error",
}
# event -> (index of the path argument, index of the dir_fd argument or None)
_PATH_EVENTS = {
    "os.mkdir": (0, 2), "os.remove": (0, 1), "os.rmdir": (0, 1),
    "os.chmod": (0, 2), "os.chown": (0, 3), "os.utime": (0, 3),
    "os.mkfifo": (0, 2), "os.mknod": (0, 3), "os.truncate": (0, None),
    "os.setxattr": (0, None), "os.removexattr": (0, None),
    "os.chflags": (0, None), "os.lchflags": (0, None), "os.lchmod": (0, None),
    "shutil.rmtree": (0, 1),
}


class SandboxViolation(PermissionError):
    """Raised by the guard when untrusted code attempts a blocked operation."""


class Guard:
    """The audit hook: allows ordinary computation, blocks escapes."""

    def __init__(self, workdir, result_fd, block_fork, supervisor_pid,
                 private_workdir):
        self.workdir = _realpath(workdir)
        self.result_fd = result_fd
        self.block_fork = block_fork
        self.supervisor_pid = supervisor_pid
        self.sid = os.getsid(0)
        self.pid = os.getpid()
        # On a private tmpfs every directory on that device is inside the
        # working directory, which lets dir_fd-relative calls be checked.
        self.workdir_dev = os.stat(self.workdir).st_dev if private_workdir else None
        self.violations = 0

    # -- reporting -------------------------------------------------------
    def violation(self, event, detail):
        self.violations += 1
        if self.violations <= _MAX_REPORTED_VIOLATIONS:
            line = "V %s %s\n" % (event, repr(detail)[:200])
            try:
                _write(self.result_fd, line.encode("utf-8", "replace"))
            except OSError:
                pass
        raise SandboxViolation("sandbox: %s is not allowed (%r)" % (event, detail))

    # -- path policy -----------------------------------------------------
    def inside(self, path, dir_fd=None):
        if isinstance(path, int):  # an already-open descriptor
            return True
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        path = str(path)
        if dir_fd not in (None, -1) and not _isabs(path):
            if self.workdir_dev is None or "/" in path or path in (".", ".."):
                return False
            return _fstat(dir_fd).st_dev == self.workdir_dev
        real = _realpath(path)
        return (real == self.workdir or real.startswith(self.workdir + "/")
                or real in _ALLOWED_WRITE_PATHS)

    def foreign_proc(self, path):
        """True for /proc/<pid>/... of a process other than this one."""
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str) or "proc" not in path:
            return False
        path = _realpath(path)  # /proc/self/.. and relative spellings
        if not path.startswith("/proc/"):
            return False
        head = path[6:].split("/", 1)[0]
        return head.isdigit() and int(head) != os.getpid()

    # -- the hook ---------------------------------------------------------
    def __call__(self, event, args):
        if event == "open":
            path, _, flags = args
            flags = flags or 0
            if flags & _WRITE_FLAGS:
                if not self.inside(path):
                    self.violation(event, path)
            elif self.foreign_proc(path):
                self.violation(event, path)
            return
        if event in _BLOCKED_EVENTS:
            self.violation(event, args[:1])
        spec = _PATH_EVENTS.get(event)
        if spec is not None:
            path_i, fd_i = spec
            dir_fd = args[fd_i] if fd_i is not None and len(args) > fd_i else None
            if not self.inside(args[path_i], dir_fd):
                self.violation(event, args[path_i])
            return
        if event in ("os.rename", "os.symlink"):
            dst_fd = args[3] if event == "os.rename" else args[2]
            if not self.inside(args[1], dst_fd) or (
                    event == "os.rename" and not self.inside(args[0], args[2])):
                self.violation(event, args[:2])
            return
        if event == "socket.__new__":
            if args[1] != 1:  # only AF_UNIX (socketpair, local IPC)
                self.violation(event, "family=%r" % (args[1],))
            return
        if event in ("socket.connect", "socket.bind", "socket.sendto",
                     "socket.sendmsg"):
            address = args[1] if len(args) > 1 else None
            if not isinstance(address, (str, bytes)) or not address \
                    or address[:1] in ("\0", b"\0") or not self.inside(address):
                self.violation(event, address)
            return
        if event in ("os.fork", "os.forkpty"):
            if self.block_fork:
                self.violation(event, "fork is blocked: no kernel process limit")
            return
        if event == "os.kill":
            self.check_signal(event, args[0])
            return
        if event == "os.killpg":
            self.violation(event, args[0])
        if event == "resource.prlimit":
            if args[0] not in (0, self.pid):
                self.violation(event, args[0])
            return
        if event == "ctypes.dlopen":
            # Bare names are searched in the system library path; a path
            # into the working directory would load a library the program
            # wrote itself (native code past the guard).
            name = args[0]
            if isinstance(name, bytes):
                name = os.fsdecode(name)
            if isinstance(name, str) and "/" in name and self.inside(name):
                self.violation(event, name)
            return

    def check_signal(self, event, pid):
        if pid == self.pid:  # itself (pid 1 in its own pid namespace)
            return
        if pid <= 0 or pid in (1, self.supervisor_pid):
            self.violation(event, pid)
        try:
            same_session = _getsid(pid) == self.sid
        except OSError:
            same_session = False
        if not same_session:
            self.violation(event, pid)


def _read_payload():
    data = sys.stdin.buffer.read()
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return marshal.loads(data)


class _Quitter:
    """`exit()` / `quit()`, which `site` would have added (-S skips it)."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return "Use %s() to exit" % self.name

    def __call__(self, code=None):
        raise SystemExit(code)


def _add_site_dirs(dirs):
    """What `site` does for each directory, minus the `import` lines of .pth
    files (the host's hooks, e.g. editable installs, are not for the program)."""
    for sitedir in dirs:
        if sitedir in sys.path or not os.path.isdir(sitedir):
            continue
        sys.path.append(sitedir)
        try:
            names = sorted(n for n in os.listdir(sitedir) if n.endswith(".pth"))
        except OSError:
            continue
        for name in names:
            try:
                with open(os.path.join(sitedir, name), encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except (OSError, UnicodeDecodeError):
                continue
            for line in lines:
                line = line.strip()
                if not line or line.startswith(("#", "import ", "import\t")):
                    continue
                path = os.path.join(sitedir, line)
                if path not in sys.path and os.path.isdir(path):
                    sys.path.append(path)
    builtins.exit, builtins.quit = _Quitter("exit"), _Quitter("quit")


def _set_limits(limits, nproc):
    import resource
    cpu = int(limits["cpu_s"])
    for name, soft, hard in (("RLIMIT_CPU", cpu, cpu + 1),
                             ("RLIMIT_AS", limits["memory_bytes"], limits["memory_bytes"]),
                             ("RLIMIT_NPROC", nproc, nproc),
                             ("RLIMIT_FSIZE", limits["file_bytes"], limits["file_bytes"]),
                             ("RLIMIT_NOFILE", limits["open_files"], limits["open_files"]),
                             ("RLIMIT_CORE", 0, 0)):
        resource.setrlimit(getattr(resource, name), (int(soft), int(hard)))


def _drop_privileges(uid, gid):
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise OSError("uid drop did not take effect")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise OSError("could regain root after the uid drop")


def _own_status():
    with open("/proc/self/status") as f:
        return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)


def _readonly_tree(workdir):
    """True if every mount is read-only but the working directory, /dev/shm
    and the kernel's pseudo file systems (whose files carry permissions)."""
    with open("/proc/self/mountinfo") as f:
        rows = f.read().splitlines()
    for row in rows:
        fields, _, fs = row.partition(" - ")
        fields = fields.split()
        if fs.split()[:1] in (["proc"], ["devpts"], ["devtmpfs"], ["mqueue"]) \
                or fields[4] in (workdir, "/dev/shm"):
            continue
        if "ro" not in fields[5].split(","):
            return False
    return bool(rows)


def contain(config, payload):
    """Under bubblewrap: drop the uid, fork, and in the parent wait for the
    child and report its exit (never returns); the child sets the limits,
    verifies its isolation and returns to run the program."""
    result_fd = config["result_fd"]
    _add_site_dirs(config["site_dirs"])
    uid = config["uid"]
    if uid is not None:  # as root: bwrap left only CAP_SETUID/CAP_SETGID for this
        _drop_privileges(uid, uid)
    child = os.fork()
    if child:
        _, status, usage = os.wait4(child, 0)
        line = "X %d %.3f %d\n" % (status, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)
        _write(result_fd, line.encode())
        _exit(0)
    try:
        _set_limits(config["limits"], config["nproc"])
        status = _own_status()
        # The inheritable set (bwrap leaves CAP_SETUID/SETGID there) grants
        # nothing once permitted and ambient are empty under no_new_privs.
        caps = [int(status.get(k, "1"), 16) for k in ("CapPrm", "CapEff", "CapAmb")]
        if any(caps):
            raise OSError("capabilities left: %s" % caps)
        with open("/proc/self/uid_map") as f:
            userns = f.read().split() != ["0", "0", "4294967295"]
        layers = {"no_caps": True, "rlimits": True, "nproc_enforced": os.getuid() != 0,
                  "uid_drop": uid is not None, "seccomp": status.get("Seccomp") == "2",
                  "no_new_privs": status.get("NoNewPrivs") == "1", "userns": userns,
                  "readonly_fs": _readonly_tree(config["workdir"]),
                  "python_guard": bool(config["guard"])}
        report = ", ".join('"%s": %s' % (k, "true" if v else "false") for k, v in layers.items())
        _write(result_fd, ('L {"layers": {%s}, "notes": []}\n' % report).encode())
    except BaseException as e:  # noqa: BLE001 - report any setup failure
        _write(result_fd, ("E runner setup failed: %r\n" % (e,)).encode())
        _exit(127)


def _describe(exc):
    """A short, bounded description of an exception raised by untrusted code."""
    try:
        name = type.__dict__["__name__"].__get__(type(exc))
    except _BaseException:
        name = "exception"
    return "".join(c for c in str(name)[:80] if c.isalnum() or c in "._")


def _print_traceback(exc):
    try:
        import traceback
        traceback.print_exception(exc, file=sys.__stderr__)
    except _BaseException:
        pass


def _run(payload, guard, result_fd):
    """Runs code then tests; returns (status, detail)."""
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    phase = "code"
    _write(result_fd, b"S\n")
    try:
        code = compile(payload["code"], "<solution>", "exec")
        tests = compile(payload["tests"], "<tests>", "exec")
        exec(code, namespace)
        phase = "tests"
        exec(tests, namespace)
        status, detail = "passed", ""
    except _MemoryError:
        namespace.clear()
        status, detail = "memory", "MemoryError"
    except SandboxViolation as exc:
        status, detail = "forbidden", _describe(exc)
        _print_traceback(exc)
    except _AssertionError as exc:
        status = "failed" if phase == "tests" else "error"
        detail = "AssertionError in " + phase
        _print_traceback(exc)
    except _SystemExit as exc:
        status, detail = "error", "SystemExit before the tests finished"
        _print_traceback(exc)
    except _BaseException as exc:
        status, detail = "error", _describe(exc) + " in " + phase
        _print_traceback(exc)
    if guard is not None and guard.violations and status != "memory":
        status = "forbidden"
    return status, detail


def main():
    config = marshal.loads(bytes.fromhex(sys.argv[1]))
    result_fd = config["result_fd"]
    payload = _read_payload()
    if config.get("contain"):
        contain(config, payload)
    nonce = payload["nonce"]
    fallback = {s: ("R %s %s -\n" % (nonce, s)).encode()
                for s in ("passed", "failed", "error", "memory", "forbidden")}
    guard = None
    if config["guard"]:
        guard = Guard(config["workdir"], result_fd, config["block_fork"],
                      os.getppid(), config["private_workdir"])
        sys.addaudithook(guard)
    status, detail = "error", "internal"
    try:
        status, detail = _run(payload, guard, result_fd)
        line = ("R %s %s %s\n" % (nonce, status, detail or "-")).encode()
    except _BaseException:
        line = fallback.get(status, fallback["error"])
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except _BaseException:
            pass
    try:
        _write(result_fd, line)
    except _BaseException:
        pass
    _exit(0)


if __name__ == "__main__":
    main()
