"""Sandbox stage 1 of the fallback backend: the trusted supervisor that
builds the isolation where bubblewrap is not usable (see backends.py).

The host (host.py) starts this file as `python -I -B -c <source>
<config json>` in a new session with a scrubbed environment. It uses the
standard library only (ctypes for unshare/mount/prctl) and never imports the
package. In order, it:

  1. enters new namespaces: network + mount + pid (as root), or user +
     network + mount + pid (unprivileged, when user namespaces are allowed);
     a failure leaves the layer off and is reported, never half-applied. The
     runner is pid 1 of the new pid namespace: it cannot name any host
     process, and when it exits the kernel kills everything it left behind;
  2. in the new mount namespace (checked to differ from the host's before
     any mount call): makes every mount private, exposes the interpreter's
     directories if a parent such as /root is closed to other users,
     remounts the whole tree read-only (mount_setattr, AT_RECURSIVE), covers
     /tmp, /var/tmp and /run with empty read-only tmpfs (other users' files,
     X11/D-Bus sockets), mounts size-limited tmpfs on the working directory
     (noexec) and a private /dev/shm; the
     runner mounts a procfs of its pid namespace on /proc (or, without a pid
     namespace, an empty read-only tmpfs hides /proc);
  3. becomes a child subreaper and forks the runner: the child sets rlimits
     (CPU, address space, processes, file size, open files, core 0), drops
     to the host-allocated unprivileged uid/gid when running as root, sets
     no_new_privs and execs stage 2 (`runner.py`);
  4. reports the active layers (`L <json>`), reaps every descendant that is
     re-parented to it, and reports the runner's exit (`X <wait status>
     <cpu seconds> <max rss KiB>`) as soon as it ends. The host then kills
     what is left and this process exits once it has reaped everything
     (orphans would otherwise become zombies of pid 1, which may not reap).

Setup failures are reported as `E <message>`.
"""

import ctypes
import json
import marshal
import os
import resource
import signal
import stat
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
SYS_MOUNT_SETATTR = 442  # same number on every architecture that has it
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


_LIBC = ctypes.CDLL(None, use_errno=True)


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def _mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(_LIBC.mount(enc(source), enc(target), enc(fstype),
                       ctypes.c_ulong(flags), enc(data)), "mount %s" % target)


def _prctl(option, value):
    _check(_LIBC.prctl(option, ctypes.c_ulong(value), 0, 0, 0), "prctl %d" % option)


def _ns(kind):
    return os.readlink("/proc/self/ns/" + kind)


# -- namespaces ----------------------------------------------------------------
def enter_namespaces(layers, notes):
    """unshare(2) the network, mount and pid namespaces (plus a user
    namespace when not root). Returns True when a new mount namespace is in
    place. The pid namespace applies to children: the runner is its pid 1."""
    root = os.geteuid() == 0
    before = {"mnt": _ns("mnt"), "net": _ns("net"), "pid": _ns("pid_for_children")}
    uid, gid = os.getuid(), os.getgid()
    base = CLONE_NEWNS | CLONE_NEWNET | (0 if root else CLONE_NEWUSER)
    for flags in (base | CLONE_NEWPID, base):
        try:
            _check(_LIBC.unshare(ctypes.c_int(flags)), "unshare")
            break
        except OSError as e:
            error = e.strerror
    else:
        notes.append("namespaces unavailable (%s)" % error)
        return False
    if not root:
        # Map our own ids (not root) so files and signals keep our identity.
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write("%d %d 1" % (uid, uid))
        with open("/proc/self/gid_map", "w") as f:
            f.write("%d %d 1" % (gid, gid))
        layers["userns"] = True
    layers["netns"] = _ns("net") != before["net"]
    layers["netns_id"] = _ns("net")
    try:
        layers["pidns"] = _ns("pid_for_children") != before["pid"]
    except FileNotFoundError:  # a new pid namespace without its first child yet
        layers["pidns"] = True
    mountns = _ns("mnt") != before["mnt"]
    layers["mountns"] = mountns
    return mountns


def _closed_ancestor(path):
    """The first directory on `path` that other users cannot traverse."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        mode = os.stat(current).st_mode
        if not mode & stat.S_IXOTH:
            return current
    return None


def interpreter_paths():
    exe = os.path.realpath(sys.executable)
    paths = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix),
             os.path.dirname(exe)}
    # Keep outermost paths only: binding a parent also exposes its children.
    return sorted(p for p in paths
                  if not any(p != q and p.startswith(q + "/") for q in paths))


def interpreter_reachable():
    return all(_closed_ancestor(p) is None for p in interpreter_paths())


def expose_interpreter(notes):
    """Bind the interpreter's directories under a fresh 0755 tmpfs placed
    over each closed ancestor (e.g. /root), so a dropped uid can run it."""
    by_ancestor = {}
    for path in interpreter_paths():
        ancestor = _closed_ancestor(path)
        if ancestor is not None:
            by_ancestor.setdefault(ancestor, []).append(path)
    for ancestor, paths in sorted(by_ancestor.items()):
        fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in paths]
        try:
            _mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
            for path, fd in zip(paths, fds):
                target = os.path.join(ancestor, os.path.relpath(path, ancestor))
                os.makedirs(target, mode=0o755, exist_ok=True)
                _mount("/proc/self/fd/%d" % fd, target, None, MS_BIND | MS_REC)
        finally:
            for fd in fds:
                os.close(fd)
        notes.append("exposed %s under a tmpfs on %s" % (paths, ancestor))


def _inside(path, directory):
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def empty_dir(path, workdir, keep, writable=False):
    """Covers `path` with an empty tmpfs (read-only unless `writable`). The
    working directory's mount point is recreated inside it; a directory that
    holds the interpreter (`keep`) is left alone. Returns True if covered."""
    if os.path.islink(path) or not os.path.isdir(path) or any(_inside(k, path) for k in keep):
        return False
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    _mount("tmpfs", path, "tmpfs", flags, "size=16m,mode=%s" % ("1777" if writable else "0755"))
    if _inside(workdir, path):
        os.makedirs(workdir, mode=0o700, exist_ok=True)
    if not writable:
        _mount(None, path, None, MS_REMOUNT | MS_RDONLY | flags)
    return True


def build_mounts(config, layers, notes, expose, pidns):
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates to the host
    if expose:
        expose_interpreter(notes)
    workdir = config["workdir"]
    os.makedirs(workdir, exist_ok=True)
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    ret = _LIBC.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE,
                        ctypes.byref(attr), ctypes.sizeof(attr))
    if ret == 0:
        layers["readonly_fs"] = True
    else:  # kernels before 5.12: the dropped uid can still write little else
        notes.append("mount_setattr failed (%s)" % os.strerror(ctypes.get_errno()))
    # Other users' temporary files and the sockets under /tmp and /run (X11,
    # D-Bus) are neither readable nor reachable; /dev/shm is private and
    # writable (POSIX semaphores for multiprocessing).
    keep = interpreter_paths()
    covered = {path: empty_dir(path, workdir, keep) for path in ("/tmp", "/var/tmp", "/run")}
    # The layer means "/tmp is private"; it stays uncovered when the interpreter
    # itself lives under it (e.g. a virtualenv in /tmp), and then the layer is off.
    layers["private_tmp"] = covered["/tmp"]
    notes.extend("%s left visible: it holds the interpreter" % p for p, done in covered.items() if not done)
    empty_dir("/dev/shm", workdir, keep, writable=True)
    owner = "uid=%d,gid=%d" % (config["uid"], config["gid"]) if config["uid"] is not None \
        else "uid=%d,gid=%d" % (os.getuid(), os.getgid())
    _mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           "size=%dm,mode=0700,%s" % (config["workdir_mb"], owner))
    layers["private_workdir"] = True
    if not pidns:  # else the runner mounts a /proc of its own pid namespace
        hide_proc()
        layers["hidden_proc"] = True


def hide_proc():
    _mount("tmpfs", "/proc", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
           "size=4k,mode=0555")


def private_proc(result_fd):
    """In the runner (pid 1 of the new pid namespace): a /proc that shows only
    the sandbox's processes; an empty one if procfs cannot be mounted."""
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        layer = "private_proc"
    except OSError:
        hide_proc()
        layer = "hidden_proc"
    os.write(result_fd, ("P %s\n" % layer).encode())


# -- the runner child ------------------------------------------------------------
def _own_task_count():
    """Threads owned by our real uid (RLIMIT_NPROC counts them per user)."""
    uid, count = str(os.getuid()), 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/status" % name) as f:
                text = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [uid]:
            count += int(fields.get("Threads", "1"))
    return count


def set_limits(config, nproc):
    limits = config["limits"]
    cpu = int(limits["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    mem = int(limits["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    fsize = int(limits["file_bytes"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    nofile = int(limits["open_files"])
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def drop_privileges(uid, gid):
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


def exec_runner(config, drop, nproc, pidns):
    """In the forked child: /proc, limits, uid drop, no_new_privs, exec stage 2."""
    if pidns:
        private_proc(config["result_fd"])
    os.chdir(config["workdir"])
    set_limits(config, nproc)
    if drop:
        drop_privileges(config["uid"], config["gid"])
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    runner_config = {
        "result_fd": config["result_fd"], "workdir": config["workdir"],
        "guard": config["guard"], "block_fork": config["block_fork"],
        "private_workdir": config["private_workdir"],
    }
    argv = [sys.executable, "-I", "-B", "-u", "-c", config["runner_source"],
            marshal.dumps(runner_config).hex()]
    os.execve(sys.executable, argv, config["env"])


def supervise(config, child, result_fd):
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    while True:
        try:
            pid, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if pid == child:
            cpu = usage.ru_utime + usage.ru_stime
            line = "X %d %.3f %d\n" % (status, cpu, usage.ru_maxrss)
            os.write(result_fd, line.encode())


def main(config):
    result_fd = config["result_fd"]
    report = lambda line: os.write(result_fd, line.encode() + b"\n")  # noqa: E731
    layers, notes = {"rlimits": True, "subreaper": True}, []
    root = os.geteuid() == 0
    want_drop = root and config["uid"] is not None
    host_ppid = os.getppid()
    mountns = enter_namespaces(layers, notes) if config["namespaces"] else False
    expose = want_drop and not interpreter_reachable()
    pidns = bool(layers.get("pidns")) and mountns
    if mountns:
        try:
            build_mounts(config, layers, notes, expose, pidns)
        except OSError as e:
            report("E mount setup failed: %s" % e)
            return 1
    if want_drop and not interpreter_reachable():
        notes.append("no uid drop: the interpreter is not readable by other users")
        want_drop = False
    if not want_drop and root:
        notes.append("running as root without a uid drop")
    layers["uid_drop"] = want_drop
    layers["no_new_privs"] = True
    layers["python_guard"] = bool(config["guard"])
    # RLIMIT_NPROC is not enforced for root; unprivileged, it counts every
    # thread of the user (fresh inside a new user namespace).
    nproc_enforced = want_drop or not root
    if nproc_enforced:
        nproc = config["limits"]["processes"]
        if not root and not layers.get("userns"):
            nproc += _own_task_count()
    else:
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        if not config["guard"]:
            report("E refusing to run: no kernel process limit and no guard")
            return 1
    layers["nproc_enforced"] = nproc_enforced
    config["block_fork"] = not nproc_enforced
    config["private_workdir"] = bool(layers.get("private_workdir"))
    if not mountns:
        os.chdir(config["workdir"])
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != host_ppid:  # the host died before PDEATHSIG was armed
        return 1
    report("L " + json.dumps({"layers": layers, "notes": notes}))
    child = os.fork()
    if child == 0:
        try:
            exec_runner(config, want_drop, nproc, pidns)
        except BaseException as e:  # noqa: BLE001 - report any setup failure
            report("E runner setup failed: %r" % (e,))
        os._exit(127)
    supervise(config, child, result_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
