"""Run untrusted generated Python against unit tests: `run_python`, `code_reward`.

Process layout (one run):

    host (this process)
     └─ supervisor   supervisor.py: namespaces, mounts, subreaper (trusted)
         └─ runner   runner.py: rlimits, unprivileged uid, audit-hook
                     guard, then exec of the code and the tests (untrusted)

Isolation layers, each reported in `SandboxResult.layers` when active:
  session          own session/process group, so nothing reaches the host's
  scrubbed_env     a minimal fixed environment; nothing of the host's leaks
  wall_clock_kill  at the deadline every sandbox process is SIGKILLed (found by
                   session, parent, the leased uid and the network namespace)
  rlimits          CPU seconds, address space (memory_mb), processes, file
                   size, open files, no core dumps
  nproc_enforced   the process limit binds (not root, or after the uid drop)
  uid_drop         as root: a uid/gid leased for this run only (ids.py;
                   no supplementary groups), so the program cannot signal,
                   trace or read other processes and RLIMIT_NPROC counts only
                   its own processes
  userns           not root: a user namespace (needed for the next layers)
  netns            an empty network namespace: no interface but a down loopback
  pidns            the runner is pid 1 of a new pid namespace: host processes
                   cannot even be named, and whatever the program leaves
                   behind dies with it
  mountns          private mounts, and within them:
  readonly_fs      the whole file tree read-only,
  private_tmp      empty read-only /tmp, /var/tmp and /run (no other users'
                   temporary files, no X11 or D-Bus sockets),
  private_workdir  a size-limited noexec tmpfs as the working directory (the
                   only writable place, plus a small private /dev/shm),
  private_proc     /proc of the sandbox's own pid namespace, or
  hidden_proc      an empty /proc (no other process's environ or cmdline)
  no_new_privs     exec can never gain privileges
  subreaper        the supervisor reaps every orphan (pid 1 may not)
  python_guard     the audit hook of `runner.py` (reports "forbidden")

What applies where (`isolation_layers()` tells for this machine):
  root (this machine, CI)   everything above except userns.
  root without namespaces   (e.g. a container without CAP_SYS_ADMIN): uid_drop
                            if the interpreter is readable by other users,
                            rlimits, guard; without the uid drop the guard
                            also blocks fork, since RLIMIT_NPROC does not bind
                            for root, and python_guard=False is refused.
  not root, user namespaces everything except uid_drop (the program runs as
                            the same user, but cannot name host processes,
                            reach the network or write outside its tmpfs).
  not root, no namespaces   session, scrubbed_env, wall_clock_kill, subreaper,
                            rlimits (RLIMIT_NPROC is set to the user's current
                            thread count plus `max_processes`), python_guard:
                            the guard alone keeps files and signals in bounds.

Code and tests run in one interpreter: the verdict carries a nonce the
program never sees on purpose, which defeats early exits and printed fake
verdicts, but not a program that deliberately searches the interpreter's
memory; objects with a rigged __eq__ are a reward hack this layer does not
judge.

Statuses: passed (tests ran to the end), failed (an AssertionError while
the tests ran), timeout (wall clock, or the CPU limit: SIGXCPU / SIGKILL at
the hard limit), memory (MemoryError, or killed near the address-space
limit), forbidden (the guard blocked something, even if the program caught
the exception), error (anything else: syntax errors, other exceptions,
sys.exit before the tests finished, output over the limit, setup failure).
"""

import dataclasses
import functools
import hmac
import json
import math
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile

from mm_rlhf_jax.rewards.sandbox import host as sandbox_host, ids as sandbox_ids

STATUSES = ("passed", "failed", "timeout", "memory", "error", "forbidden")
_RUNNER_STATUSES = ("passed", "failed", "error", "memory", "forbidden")

FILE_BYTES = 16 << 20       # RLIMIT_FSIZE: largest file the program may write
OPEN_FILES = 64             # RLIMIT_NOFILE
WORKDIR_MB = 64             # size of the private tmpfs working directory
STARTUP_TIMEOUT_S = 30.0    # interpreter start-up before the clock starts

_HERE = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=None)
def _source(name):
    with open(os.path.join(_HERE, name), encoding="utf-8") as f:
        return f.read()


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Outcome of `run_python`.

    `stdout`/`stderr` keep the first `max_output_bytes` of each stream;
    `returncode` is the runner's exit code (negative: killed by that signal);
    `session_id` and `uid` identify the sandbox's processes (for audits)."""

    status: str
    stdout: str
    stderr: str
    returncode: int | None
    duration_s: float
    reason: str
    layers: tuple
    violations: tuple
    session_id: int
    uid: int | None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _check_args(code, tests, timeout_s, memory_mb, max_processes, max_output_bytes):
    for name, value in (("code", code), ("tests", tests)):
        if not isinstance(value, str):
            raise TypeError(f"run_python: {name} must be str, got {type(value).__name__}")
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s)
            and 0 < timeout_s <= 3600):
        raise ValueError(f"run_python: timeout_s must be in (0, 3600], got {timeout_s!r}")
    if not isinstance(memory_mb, int) or memory_mb < 64:
        raise ValueError(f"run_python: memory_mb must be an int >= 64, got {memory_mb!r}")
    if not isinstance(max_processes, int) or max_processes < 1:
        raise ValueError(f"run_python: max_processes must be an int >= 1, got {max_processes!r}")
    if not isinstance(max_output_bytes, int) or max_output_bytes < 0:
        raise ValueError(
            f"run_python: max_output_bytes must be an int >= 0, got {max_output_bytes!r}")


def run_python(code: str, tests: str, *, timeout_s: float = 5.0, memory_mb: int = 512,
               max_processes: int = 16, max_output_bytes: int = 1 << 16,
               python_guard: bool = True, namespaces: bool = True) -> SandboxResult:
    """Runs `code`, then `tests` (e.g. assert statements) in one namespace.

    Args:
      code, tests: Python source. Tests signal failure by raising
        (AssertionError -> "failed").
      timeout_s: wall-clock limit from the moment the code starts; the CPU
        limit is ceil(timeout_s) + 1 seconds per process.
      memory_mb: address-space limit (RLIMIT_AS) per process.
      max_processes: process/thread limit for the sandbox's uid.
      max_output_bytes: bytes of stdout and of stderr kept; a program writing
        more than max(16 MiB, 4 * max_output_bytes) in total is killed.
      python_guard: install the audit-hook guard (turn off only to test that
        the kernel layers hold on their own; refused when no kernel process
        limit applies).
      namespaces: try network/mount/pid (and user) namespaces.
    """
    _check_args(code, tests, timeout_s, memory_mb, max_processes, max_output_bytes)
    if not sys.platform.startswith("linux"):
        raise RuntimeError("run_python needs Linux (/proc, rlimits, namespaces)")
    with sandbox_ids.lease_uid() as uid:
        outcome, limits, nonce = _run(code, tests, uid, timeout_s, memory_mb, max_processes,
                                      max_output_bytes, python_guard, namespaces)
    status, reason, returncode = _classify(outcome, nonce, limits)
    layers = {"session", "scrubbed_env", "wall_clock_kill"}
    layers.update(k for k, v in outcome.layers.items() if v is True)
    violations = tuple(line[2:] for line in outcome.lines if line.startswith("V "))
    return SandboxResult(
        status=status, stdout=outcome.stdout.decode("utf-8", "replace"),
        stderr=outcome.stderr.decode("utf-8", "replace"), returncode=returncode,
        duration_s=outcome.duration_s, reason=reason, layers=tuple(sorted(layers)),
        violations=violations, session_id=outcome.session_id, uid=uid)


def _run(code, tests, uid, timeout_s, memory_mb, max_processes, max_output_bytes,
         python_guard, namespaces):
    """One supervised run in a fresh working directory; (Outcome, limits, nonce)."""
    nonce = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="mm_rlhf_sandbox_")
    try:
        os.chmod(workdir, 0o700)
        if uid is not None:
            os.chown(workdir, uid, uid)  # for the no-mount-namespace fallback
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "HOME": workdir, "TMPDIR": workdir, "PYTHONIOENCODING": "utf-8",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        limits = {"cpu_s": math.ceil(timeout_s) + 1, "memory_bytes": memory_mb << 20,
                  "processes": max_processes, "file_bytes": FILE_BYTES,
                  "open_files": OPEN_FILES}
        config = {
            "workdir": workdir, "uid": uid, "gid": uid, "namespaces": bool(namespaces),
            "guard": bool(python_guard), "workdir_mb": WORKDIR_MB, "env": env,
            "runner_source": _source("runner.py"), "limits": limits,
        }
        plan = sandbox_host.Plan(
            argv=[sys.executable, "-I", "-B", "-c", _source("supervisor.py")],
            env={"PATH": env["PATH"], "LANG": "C.UTF-8"}, workdir=workdir,
            payload=json.dumps({"nonce": nonce, "code": code, "tests": tests}).encode(),
            config=config, timeout_s=float(timeout_s), startup_timeout_s=STARTUP_TIMEOUT_S,
            max_output_bytes=max_output_bytes,
            output_kill_bytes=max(16 << 20, 4 * max_output_bytes), uid=uid)
        outcome = sandbox_host.execute(plan)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return outcome, limits, nonce


def _verdict(lines, nonce):
    """The runner's first `R` line that carries the nonce, as (status, detail)."""
    for line in lines:
        parts = line.split(" ", 3)
        if (len(parts) >= 3 and parts[0] == "R" and parts[2] in _RUNNER_STATUSES
                and hmac.compare_digest(parts[1].encode(), nonce.encode())):
            return parts[2], (parts[3] if len(parts) > 3 else "")
    return None


def _runner_exit(lines):
    for line in lines:
        parts = line.split()
        if len(parts) == 4 and parts[0] == "X":
            try:
                return int(parts[1]), float(parts[2]), int(parts[3])
            except ValueError:
                continue
    return None


def _classify(outcome, nonce, limits):
    """(status, reason, returncode) from the raw observations."""
    errors = [line[2:] for line in outcome.lines if line.startswith("E ")]
    violations = [line[2:] for line in outcome.lines if line.startswith("V ")]
    verdict = _verdict(outcome.lines, nonce)
    runner = _runner_exit(outcome.lines)
    returncode = (os.waitstatus_to_exitcode(runner[0]) if runner is not None
                  else outcome.supervisor_status)
    if errors and verdict is None:
        return "error", "sandbox setup failed: " + errors[0], returncode
    if outcome.startup_timed_out:
        return "error", f"sandbox did not start within {STARTUP_TIMEOUT_S:.0f}s", returncode
    if violations or (verdict is not None and verdict[0] == "forbidden"):
        first = violations[0] if violations else verdict[1]
        return "forbidden", "blocked: " + first, returncode
    if verdict is not None:
        return verdict[0], "" if verdict[1] == "-" else verdict[1], returncode
    if outcome.timed_out:
        return "timeout", "wall-clock limit exceeded", returncode
    if outcome.output_exceeded:
        return "error", "output limit exceeded", returncode
    if runner is None:
        return "error", "the sandbox ended without a result", returncode
    sig = -returncode if returncode is not None and returncode < 0 else None
    cpu_s, max_rss_kib = runner[1], runner[2]
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= limits["cpu_s"] - 0.05):
        return "timeout", f"CPU time limit ({cpu_s:.1f}s)", returncode
    near_limit = max_rss_kib * 1024 >= 0.9 * limits["memory_bytes"]
    if sig is not None and (near_limit or b"MemoryError" in outcome.stderr):
        return "memory", f"killed by signal {sig} near the memory limit", returncode
    if sig == signal.SIGXFSZ:
        return "error", "file size limit exceeded", returncode
    return "error", f"exited with code {returncode} before the tests finished", returncode


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(response: str) -> str | None:
    """The program in a model response.

    The last fenced block tagged python/py/python3; else the last untagged
    fenced block; else, when the response has no fence at all, the whole
    response. A response whose only blocks are in other languages -> None."""
    if not isinstance(response, str):
        raise TypeError(f"extract_code: response must be str, got {type(response).__name__}")
    blocks = _FENCE.findall(response)
    if not blocks:
        return None if "```" in response else response
    tagged = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if tagged:
        return tagged[-1]
    untagged = [body for lang, body in blocks if not lang]
    return untagged[-1] if untagged else None


def code_reward(response: str, tests: str, *, timeout_s: float = 5.0,
                memory_mb: int = 512) -> float:
    """1.0 when the response's code passes every test in the sandbox, else 0.0."""
    code = extract_code(response)
    if code is None:
        return 0.0
    result = run_python(code, tests, timeout_s=timeout_s, memory_mb=memory_mb)
    return 1.0 if result.passed else 0.0


@functools.lru_cache(maxsize=None)
def isolation_layers() -> tuple:
    """The layers a trivial run gets on this machine (cached)."""
    return run_python("pass", "pass").layers
