"""The two ways a run is isolated, and which one this machine gets.

  bwrap       bubblewrap builds the namespaces and mounts (bwrap.py), with the
              seccomp filter of seccomp.py; the runner drops to the leased uid,
              forks and reports like the supervisor would.
  supervisor  the own ctypes layers of supervisor.py (the fallback where bwrap
              is missing, too old, or cannot create its namespaces).

`choose(backend, namespaces)` picks bwrap when it is usable, else the
supervisor; `bwrap_status()` says whether bwrap is usable and if not why
(checked once per process with a trivial run).
"""

import functools
import marshal
import math
import os
import secrets
import shutil
import sys
import tempfile
import threading

from mm_rlhf_jax.rewards.sandbox import bwrap, host as sandbox_host, ids as sandbox_ids, seccomp

BACKENDS = ("bwrap", "supervisor")
FILE_BYTES = 16 << 20       # RLIMIT_FSIZE: largest file the program may write
OPEN_FILES = 64             # RLIMIT_NOFILE
WORKDIR_MB = 64             # size of the private tmpfs working directory
STARTUP_TIMEOUT_S = 30.0    # interpreter start-up before the clock starts
# Layers that bwrap's command line sets up; bwrap aborts the run if any
# mount fails, so they hold whenever the runner ran in a new mount namespace.
_BWRAP_MOUNT_LAYERS = ("minimal_fs", "private_tmp", "private_workdir")

_HERE = os.path.dirname(os.path.abspath(__file__))
_probe_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def source(name):
    with open(os.path.join(_HERE, name), encoding="utf-8") as f:
        return f.read()


# The bwrap runner arrives compiled (marshal of the code object, same
# interpreter) on a pipe: compiling runner.py at every start costs ~4 ms.
_BOOTSTRAP = """\
import marshal, os, sys
def _load(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            os.close(fd)
            return marshal.loads(b"".join(chunks))
        chunks.append(chunk)
exec(_load(int(sys.argv.pop(1))))
"""


@functools.lru_cache(maxsize=None)
def _runner_code():
    return marshal.dumps(compile(source("runner.py"), "<runner>", "exec"))


def _env(workdir):
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "HOME": workdir, "TMPDIR": workdir, "PYTHONIOENCODING": "utf-8",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def limits_for(timeout_s, memory_mb, max_processes):
    return {"cpu_s": math.ceil(timeout_s) + 1, "memory_bytes": memory_mb << 20,
            "processes": max_processes, "file_bytes": FILE_BYTES, "open_files": OPEN_FILES}


def _plan_kwargs(payload, timeout_s, max_output_bytes, uid):
    return dict(payload=payload, timeout_s=float(timeout_s),
                startup_timeout_s=STARTUP_TIMEOUT_S, max_output_bytes=max_output_bytes,
                output_kill_bytes=max(16 << 20, 4 * max_output_bytes), uid=uid)


def run_supervisor(payload, uid, limits, timeout_s, max_output_bytes, python_guard,
                   namespaces):
    """One run under supervisor.py in a fresh host directory; (Outcome, layers)."""
    workdir = tempfile.mkdtemp(prefix="mm_rlhf_sandbox_")
    try:
        os.chmod(workdir, 0o700)
        if uid is not None:
            os.chown(workdir, uid, uid)  # for the no-mount-namespace fallback
        env = _env(workdir)
        config = {
            "workdir": workdir, "uid": uid, "gid": uid, "namespaces": bool(namespaces),
            "guard": bool(python_guard), "workdir_mb": WORKDIR_MB, "env": env,
            "runner_source": source("runner.py"), "limits": limits,
        }
        plan = sandbox_host.Plan(
            argv=[sys.executable, "-I", "-B", "-c", source("supervisor.py")],
            env={"PATH": env["PATH"], "LANG": "C.UTF-8"}, workdir=workdir, config=config,
            **_plan_kwargs(payload, timeout_s, max_output_bytes, uid))
        outcome = sandbox_host.execute(plan)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    layers = {"session", "scrubbed_env", "wall_clock_kill"}
    layers.update(k for k, v in outcome.layers.items() if v is True)
    return outcome, layers


def run_bwrap(payload, uid, limits, timeout_s, max_output_bytes, python_guard):
    """One run under bubblewrap; (Outcome, layers)."""
    path, _ = bwrap.find()
    root = os.geteuid() == 0
    workdir = "/tmp/mm_rlhf_sandbox_" + secrets.token_hex(6)  # exists only inside
    # RLIMIT_NPROC counts the runner's waiting parent too, and not as root
    # also bwrap's pid 1 (same uid inside the user namespace).
    nproc = limits["processes"] + (1 if root else 2)
    config = {"contain": True, "uid": uid, "site_dirs": list(bwrap.site_dirs()),
              "limits": limits, "nproc": nproc, "workdir": workdir,
              "guard": bool(python_guard), "block_fork": False, "private_workdir": True}
    filter_bytes = seccomp.program()
    fds = []  # closed here unless execute() took them over
    try:
        seccomp_fd = None
        if filter_bytes is not None:
            seccomp_fd, w = os.pipe()
            fds.append(seccomp_fd)
            with os.fdopen(w, "wb") as f:  # < 1 KiB: fits the pipe buffer
                f.write(filter_bytes)
        info_r, info_w = os.pipe()
        fds += [info_r, info_w]
        code_fd, w = os.pipe()
        fds.append(code_fd)
        with os.fdopen(w, "wb") as f:  # ~30 KiB: fits the 64 KiB pipe buffer
            f.write(_runner_code())
        command = [sys.executable, "-I", "-S", "-B", "-u", "-c", _BOOTSTRAP, str(code_fd)]
        argv = bwrap.argv(path, root=root, workdir=workdir, workdir_mb=WORKDIR_MB,
                          env=_env(workdir), seccomp_fd=seccomp_fd, info_fd=info_w,
                          command=command)
        plan = sandbox_host.Plan(
            argv=argv, env={"PATH": bwrap.SEARCH_PATH, "LANG": "C.UTF-8"}, workdir="/",
            config=config, backend="bwrap", pass_fds=tuple(fd for fd in fds if fd != info_r),
            info_fd=info_r, encode=lambda c: marshal.dumps(c).hex(),
            **_plan_kwargs(payload, timeout_s, max_output_bytes, uid))
        fds = []  # execute() owns and closes them now
        outcome = sandbox_host.execute(plan)
    finally:
        for fd in fds:
            os.close(fd)
    return outcome, _bwrap_layers(outcome, root)


def _bwrap_layers(outcome, root):
    layers = {"bwrap", "session", "scrubbed_env", "wall_clock_kill"}
    layers.update(k for k, v in outcome.layers.items() if v is True)
    for kind, layer in bwrap.NAMESPACE_LAYERS.items():
        inode = outcome.namespaces.get(kind)
        if inode and inode != os.stat("/proc/self/ns/" + kind).st_ino:
            layers.add(layer)
    if "mountns" in layers:
        layers.update(_BWRAP_MOUNT_LAYERS)
        if "pidns" in layers:
            layers.add("private_proc")
    if "pidns" in layers:
        layers.add("subreaper")  # bwrap's pid 1 reaps every orphan
    if root and "uid_drop" not in layers:
        layers.discard("nproc_enforced")
    return layers


def bwrap_status():
    """(usable, reason), cached after the first call."""
    with _probe_lock:
        return _probe()


@functools.lru_cache(maxsize=None)
def _probe():
    path, detail = bwrap.find()
    if path is None:
        return False, detail
    nonce = secrets.token_hex(16)
    payload = marshal.dumps({"nonce": nonce, "code": "", "tests": ""})
    with sandbox_ids.lease() as lease:
        if os.geteuid() == 0 and lease.uid is None:
            return False, "root without a leasable uid (the id range is not mapped)"
        outcome, layers = run_bwrap(payload, lease.uid, limits_for(5, 256, 4), 10.0,
                                    1 << 12, True)
        lease.clean = outcome.clean
    good = any(line.startswith("R %s passed" % nonce) for line in outcome.lines)
    missing = {"pidns", "netns", "mountns", "no_caps"} - layers
    if not good or missing:
        tail = outcome.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        return False, "bwrap %s trial run failed (missing %s) %s" % (
            ".".join(map(str, detail)), sorted(missing), tail)
    return True, "bwrap %s at %s" % (".".join(map(str, detail)), path)


def choose(backend, namespaces):
    """The backend a run uses: `backend` if given (an error if unusable),
    else bwrap when usable, else the supervisor."""
    if backend is None:
        return "bwrap" if namespaces and bwrap_status()[0] else "supervisor"
    if backend not in BACKENDS:
        raise ValueError(f"run_python: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "bwrap":
        if not namespaces:
            raise ValueError("run_python: the bwrap backend always uses namespaces")
        usable, reason = bwrap_status()
        if not usable:
            raise RuntimeError("run_python: bwrap is not usable here: " + reason)
    return backend
