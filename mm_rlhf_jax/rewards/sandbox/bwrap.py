"""The bubblewrap backend: the `bwrap` command line of one sandbox.

bubblewrap (Debian/Ubuntu package `bubblewrap`, the sandbox under Flatpak)
builds the namespaces and mounts that `supervisor.py` otherwise builds with
its own ctypes code. One run is

    host ── bwrap (launcher, host pid namespace)
             └─ bwrap (pid 1 of a new pid namespace: reaps, and when it dies
                 │     the kernel kills every process in the namespace)
                 └─ runner.py (pid 2), which forks the program's process

Namespaces: pid, network (only a loopback of its own), ipc, uts, cgroup,
mount; as root no user namespace (bwrap would map the sandbox to host uid 0)
but a uid leased from ids.py that the runner drops to; not root, a user
namespace mapping only the caller's own ids.

File tree (read-only, built from an empty root): /usr and the /bin, /lib...
links or directories, the few /etc files the dynamic loader and `time` read,
the interpreter's directories (sys.prefix, sys.base_prefix), a fresh /proc
of the pid namespace, a minimal /dev, an empty read-only /tmp holding the
size-limited working directory (the only writable place besides a small
/dev/shm for multiprocessing). The host's home directories, projects, other
jobs' temporary files and sockets are not in the sandbox at all.

Also: `--die-with-parent` (the sandbox dies with the host), `--new-session`
(no terminal to type into), `--clearenv` plus a fixed environment, the
seccomp filter of seccomp.py, and as root every capability dropped except
CAP_SETUID/CAP_SETGID, which the runner uses to drop to the leased uid (and
so loses with every other capability) before any untrusted code runs.

bubblewrap 0.7.0 or newer is required (`--size` bounds the tmpfs; without it
a program could fill the machine's memory through the working directory).
"""

import functools
import os
import re
import shutil
import subprocess
import sys

MIN_VERSION = (0, 7, 0)
SEARCH_PATH = "/usr/bin:/bin:/usr/local/bin"  # never the caller's PATH
SHM_BYTES = 16 << 20
_TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
        "/etc/alternatives")
# Namespaces bwrap reports in --info-fd (inode numbers) and the layer each is.
NAMESPACE_LAYERS = {"pid": "pidns", "net": "netns", "mnt": "mountns", "ipc": "ipcns",
                    "uts": "utsns"}


@functools.lru_cache(maxsize=None)
def find():
    """(path, version tuple) of a usable bwrap, or (None, reason)."""
    path = shutil.which("bwrap", path=SEARCH_PATH)
    if path is None:
        return None, "bwrap not found in " + SEARCH_PATH
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True,
                             timeout=10, env={"PATH": SEARCH_PATH}).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return None, "bwrap --version failed: %s" % e
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        return None, "unrecognised bwrap version %r" % out.strip()
    version = tuple(int(x) for x in match.groups())
    if version < MIN_VERSION:
        return None, "bwrap %s is older than %s (no --size for tmpfs)" % (
            ".".join(map(str, version)), ".".join(map(str, MIN_VERSION)))
    return path, version


def _outermost(paths):
    return sorted(p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths))


@functools.lru_cache(maxsize=None)
def interpreter_dirs():
    """Directories the interpreter and its packages live in, outside /usr,
    as (source, destination) pairs: a symlinked prefix is bound at both its
    own and its resolved path, so either spelling works inside."""
    pairs = set()
    for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
              os.path.dirname(sys.executable)}:
        real = os.path.realpath(p)
        for dest in {os.path.abspath(p), real}:
            if not (dest == "/usr" or dest.startswith("/usr/")):
                pairs.add((real, dest))
    dests = _outermost({d for _, d in pairs})
    return tuple(sorted((src, dest) for src, dest in pairs if dest in dests))


@functools.lru_cache(maxsize=None)
def site_dirs():
    """The host interpreter's site-packages directories, added to sys.path by
    the runner (which starts with -S: `site` and its .pth hooks cost ~20 ms)."""
    import site
    return tuple(p for p in site.getsitepackages() if os.path.isdir(p))


def _mounts(workdir, workdir_mb, workdir_mode):
    args = ["--ro-bind", "/usr", "/usr"]
    for top in _TOP_LEVEL:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for path in _ETC:
        args += ["--ro-bind-try", path, path]
    args += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",
             "--remount-ro", "/dev",
             "--tmpfs", "/tmp",
             "--perms", workdir_mode, "--size", str(workdir_mb << 20), "--tmpfs", workdir]
    # After /tmp, so an interpreter that lives under /tmp is bound over it.
    # bwrap would create the missing parents (e.g. /root) with mode 0700,
    # closed to the leased uid; they get 0755 (they hold nothing else).
    made = {"/", "/tmp"}
    for src, dest in interpreter_dirs():
        parts = dest.strip("/").split("/")[:-1]
        for k in range(1, len(parts) + 1):
            parent = "/" + "/".join(parts[:k])
            if parent not in made:
                made.add(parent)
                args += ["--perms", "0755", "--dir", parent]
        args += ["--ro-bind", src, dest]
    return args + ["--remount-ro", "/tmp", "--remount-ro", "/"]


def argv(bwrap_path, *, root, workdir, workdir_mb, env, seccomp_fd, info_fd, command):
    """The bwrap command line for one run (see the module docstring)."""
    args = [bwrap_path, "--die-with-parent", "--new-session", "--unshare-pid",
            "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if root:
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user"]
    # As root the leased uid needs write access to its tmpfs (owned by root);
    # only the sandbox's own processes exist in its mount namespace.
    args += _mounts(workdir, workdir_mb, "0777" if root else "0700")
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    args += ["--info-fd", str(info_fd), "--clearenv"]
    for key, value in sorted(env.items()):
        args += ["--setenv", key, value]
    return args + ["--chdir", workdir, "--"] + list(command)
