"""Run untrusted generated Python against unit tests: `run_python`, `code_reward`.

Two backends (backends.py), chosen per run, the first that works here:

  bwrap       host ── bwrap launcher ── bwrap pid 1 (reaper of a new pid
              namespace) ── runner.py (drops to the leased uid, forks) ──
              the program's process (rlimits, guard, code, tests)
  supervisor  host ── supervisor.py (own ctypes namespaces, mounts,
              subreaper) ── runner.py (rlimits, uid drop, guard, code, tests)

`SandboxResult.backend` names the one that ran and `SandboxResult.layers`
lists every layer that was active; nothing is weakened silently.

Isolation layers (B: bwrap backend, S: supervisor backend):
  bwrap            B  bubblewrap built the sandbox (bwrap.py)
  session          BS own session/process group, so nothing reaches the host's
  scrubbed_env     BS a minimal fixed environment; nothing of the host's leaks
  wall_clock_kill  BS at the deadline every sandbox process is SIGKILLed (B: the
                      pid namespace's pid 1, which takes the namespace with it;
                      S: found by session, parent, leased uid and network
                      namespace)
  rlimits          BS CPU seconds, address space (memory_mb), processes, file
                      size, open files, no core dumps
  nproc_enforced   BS the process limit binds (not root, or after the uid drop)
  uid_drop         BS as root: a uid/gid leased for this run only (ids.py; no
                      supplementary groups), so the program cannot signal,
                      trace or read other processes, owns no host file, and
                      RLIMIT_NPROC counts only its own processes. bwrap has
                      no such mode (as root it would map the sandbox to host
                      uid 0), so the runner drops to it before the program
  no_caps          B  verified: no permitted, effective or ambient capability
                      left when the program starts
  userns           BS not root: a user namespace mapping only the caller's ids
  netns            BS an empty network namespace (B: its own loopback only)
  pidns            BS a new pid namespace: host processes cannot be named, and
                      whatever the program leaves behind dies with it
  ipcns, utsns     B  private System V IPC and hostname
  mountns          BS private mounts, and within them:
  readonly_fs      BS the whole file tree read-only (B: verified by the runner),
  minimal_fs       B  only /usr, the loader's /etc files and the interpreter's
                      directories exist: no home directories, projects, data,
  private_tmp      BS an empty read-only /tmp (S: also /var/tmp and /run): no
                      other users' temporary files, X11 or D-Bus sockets,
  private_workdir  BS a size-limited tmpfs as the working directory (the only
                      writable place, plus a small private /dev/shm; S: noexec),
  private_proc     BS /proc of the sandbox's own pid namespace, or
  hidden_proc      S  an empty /proc (no other process's environ or cmdline)
  seccomp          B  seccomp.py: no ptrace/process_vm_*, no new namespaces, no
                      mounts, no bpf/perf/io_uring/keyring/modules, sockets
                      AF_UNIX only, foreign syscall ABIs kill the process
  no_new_privs     BS exec can never gain privileges
  subreaper        BS every orphan is reaped (B: bwrap's pid 1)
  python_guard     BS the audit hook of `runner.py` (reports "forbidden")

The own layers that remain under bwrap add what bwrap lacks: the uid lease
and drop (above), the rlimits (bwrap sets none), the wall-clock kill and the
nonce verdict with its status classification (classify.py), and the guard,
which turns escape attempts into the "forbidden" status.

What applies where (`isolation_layers()` tells for this machine):
  bwrap present (CI, TPU VMs)   B layers; as root with uid_drop, not root
                                with userns instead.
  no bwrap, root                S layers except userns.
  root without namespaces       (e.g. a container without CAP_SYS_ADMIN): uid_drop
                                if the interpreter is readable by other users,
                                rlimits, guard; without the uid drop the guard
                                also blocks fork, since RLIMIT_NPROC does not bind
                                for root, and python_guard=False is refused.
  no bwrap, not root, userns    S layers except uid_drop.
  not root, no namespaces       session, scrubbed_env, wall_clock_kill, subreaper,
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

`run_python_batch` runs many programs, each in its own fresh sandbox, on a
pool of threads (every sandbox is a child process, so threads suffice).
"""

import concurrent.futures
import dataclasses
import functools
import marshal
import math
import os
import re
import secrets
import sys

from mm_rlhf_jax.rewards.sandbox import (backends, classify as sandbox_classify,
                                         ids as sandbox_ids)

STATUSES = ("passed", "failed", "timeout", "memory", "error", "forbidden")
BACKENDS = backends.BACKENDS
STARTUP_TIMEOUT_S = backends.STARTUP_TIMEOUT_S
bwrap_status = backends.bwrap_status


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Outcome of `run_python`.

    `stdout`/`stderr` keep the first `max_output_bytes` of each stream;
    `returncode` is the runner's exit code (negative: killed by that signal);
    `session_id` and `uid` identify the sandbox's processes (for audits);
    `backend` is "bwrap" or "supervisor"."""

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
    backend: str = "supervisor"

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
               python_guard: bool = True, namespaces: bool = True,
               backend: str | None = None) -> SandboxResult:
    """Runs `code`, then `tests` (e.g. assert statements) in one namespace.

    Args:
      code, tests: Python source. Tests signal failure by raising
        (AssertionError -> "failed").
      timeout_s: wall-clock limit from the moment the code starts; the CPU
        limit is ceil(timeout_s) + 1 seconds per process.
      memory_mb: address-space limit (RLIMIT_AS) per process.
      max_processes: process/thread limit for the program.
      max_output_bytes: bytes of stdout and of stderr kept; a program writing
        more than max(16 MiB, 4 * max_output_bytes) in total is killed.
      python_guard: install the audit-hook guard (turn off only to test that
        the kernel layers hold on their own; refused when no kernel process
        limit applies).
      namespaces: use namespaces (False: the supervisor backend without them).
      backend: "bwrap" or "supervisor"; None picks bwrap where it is usable.
    """
    _check_args(code, tests, timeout_s, memory_mb, max_processes, max_output_bytes)
    if not sys.platform.startswith("linux"):
        raise RuntimeError("run_python needs Linux (/proc, rlimits, namespaces)")
    chosen = backends.choose(backend, namespaces)
    nonce = secrets.token_hex(16)
    payload = marshal.dumps({"nonce": nonce, "code": code, "tests": tests})
    limits = backends.limits_for(timeout_s, memory_mb, max_processes)
    with sandbox_ids.lease() as lease:
        if chosen == "bwrap":
            outcome, layers = backends.run_bwrap(payload, lease.uid, limits, timeout_s,
                                                 max_output_bytes, python_guard)
        else:
            outcome, layers = backends.run_supervisor(payload, lease.uid, limits, timeout_s,
                                                      max_output_bytes, python_guard,
                                                      namespaces)
        lease.clean = outcome.clean
    status, reason, returncode = _classify(outcome, nonce, limits)
    violations = tuple(line[2:] for line in outcome.lines if line.startswith("V "))
    return SandboxResult(
        status=status, stdout=outcome.stdout.decode("utf-8", "replace"),
        stderr=outcome.stderr.decode("utf-8", "replace"), returncode=returncode,
        duration_s=outcome.duration_s, reason=reason, layers=tuple(sorted(layers)),
        violations=violations, session_id=outcome.session_id, uid=lease.uid,
        backend=chosen)


def _classify(outcome, nonce, limits):
    return sandbox_classify.classify(outcome, nonce, limits, STARTUP_TIMEOUT_S)


def run_python_batch(items, *, workers: int | None = None, **kwargs) -> list:
    """`run_python(code, tests, **kwargs)` for every (code, tests) pair of
    `items`, each in its own fresh sandbox, `workers` at a time (default: the
    number of CPUs); results in the order of `items`, each exactly what
    `run_python` returns for it. Arguments are checked before any run."""
    items = [tuple(item) for item in items]
    check = {k: kwargs[k] for k in ("timeout_s", "memory_mb", "max_processes",
                                    "max_output_bytes") if k in kwargs}
    defaults = {"timeout_s": 5.0, "memory_mb": 512, "max_processes": 16,
                "max_output_bytes": 1 << 16}
    for item in items:
        if len(item) != 2:
            raise ValueError("run_python_batch: items must be (code, tests) pairs")
        _check_args(*item, **{**defaults, **check})
    backends.choose(kwargs.get("backend"), kwargs.get("namespaces", True))
    if workers is None:
        workers = os.cpu_count() or 1
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"run_python_batch: workers must be an int >= 1, got {workers!r}")
    if workers == 1 or len(items) <= 1:
        return [run_python(code, tests, **kwargs) for code, tests in items]
    with concurrent.futures.ThreadPoolExecutor(min(workers, len(items))) as pool:
        return list(pool.map(lambda item: run_python(*item, **kwargs), items))


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


def code_rewards(responses, tests, *, workers: int | None = None, timeout_s: float = 5.0,
                 memory_mb: int = 512) -> list:
    """`code_reward` for each (response, tests) pair, on `run_python_batch`."""
    responses, tests = list(responses), list(tests)
    if len(responses) != len(tests):
        raise ValueError(f"code_rewards: {len(responses)} responses but {len(tests)} tests")
    codes = [extract_code(r) for r in responses]
    todo = [i for i, code in enumerate(codes) if code is not None]
    results = run_python_batch([(codes[i], tests[i]) for i in todo], workers=workers,
                               timeout_s=timeout_s, memory_mb=memory_mb)
    rewards = [0.0] * len(responses)
    for i, result in zip(todo, results):
        rewards[i] = 1.0 if result.passed else 0.0
    return rewards


@functools.lru_cache(maxsize=None)
def isolation_layers(backend: str | None = None) -> tuple:
    """The layers a trivial run gets on this machine with `backend` (None:
    the one chosen automatically); cached."""
    return run_python("pass", "pass", backend=backend).layers
