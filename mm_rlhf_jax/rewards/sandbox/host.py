"""Host side of the code sandbox: start the supervisor, watch it, clean up.

`execute(plan)` starts `supervisor.py` in a new session with a
scrubbed environment, feeds the payload to the runner over stdin, reads
stdout/stderr (bounded) and the protocol lines of the result pipe, enforces
the wall-clock deadline, and afterwards kills every process of the sandbox.

A sandbox process is any live process (other than the supervisor, which must
survive to reap) that is in the sandbox's session, is a child of the
supervisor, runs as the sandbox's unique uid, or lives in the sandbox's
network namespace. The supervisor is a child subreaper: a program that left
the session with setsid() is adopted by it once its parent dies, and the
supervisor cannot exit while any descendant lives, so sweeping until the
supervisor has exited leaves nothing behind in every mode. Killing goes
through pidfds, so a recycled pid is never signalled.

Protocol lines on the result pipe (one per line, bounded):
  L <json>               layers active (supervisor, before the runner starts)
  P <layer>              the runner's /proc layer (before it execs the program)
  E <message>            setup failure (supervisor)
  S                      the runner starts the untrusted code: timeout clock
  V <event> <detail>     the Python guard blocked an operation
  R <nonce> <status> ..  verdict of the runner (only trusted with the nonce)
  X <status> <cpu> <rss> the runner's wait status, CPU seconds, max RSS KiB
"""

import dataclasses
import errno
import json
import os
import selectors
import signal
import subprocess
import time

_READ_CHUNK = 1 << 16
_PROTOCOL_BYTES = 1 << 18  # result-pipe bytes kept; the rest is dropped
_REAP_GRACE_S = 5.0
_DRAIN_S = 1.0


@dataclasses.dataclass
class Plan:
    """Everything one run needs; built by `sandbox.run_python`."""

    argv: list
    env: dict
    workdir: str
    payload: bytes
    config: dict
    timeout_s: float
    startup_timeout_s: float
    max_output_bytes: int
    output_kill_bytes: int
    uid: int | None


@dataclasses.dataclass
class Outcome:
    """Raw observations of one run; `sandbox.py` turns them into a status."""

    stdout: bytes = b""
    stderr: bytes = b""
    stdout_total: int = 0
    stderr_total: int = 0
    lines: list = dataclasses.field(default_factory=list)
    started: bool = False
    runner_exited: bool = False
    timed_out: bool = False
    startup_timed_out: bool = False
    output_exceeded: bool = False
    supervisor_status: int | None = None
    duration_s: float = 0.0
    session_id: int = -1
    netns: str | None = None
    layers: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)


class _Streams:
    """Bounded capture of stdout/stderr and the protocol pipe."""

    def __init__(self, plan, outcome):
        self.plan, self.outcome = plan, outcome
        self.buffers = {"stdout": bytearray(), "stderr": bytearray()}
        self.protocol = bytearray()
        self.seen_layers = False

    def add(self, name, data):
        out = self.outcome
        if name == "result":
            if len(self.protocol) + len(data) <= _PROTOCOL_BYTES:
                self.protocol += data  # beyond the bound: a flooding program, dropped
            self.parse_lines()
            return
        buf = self.buffers[name]
        room = self.plan.max_output_bytes - len(buf)
        if room > 0:
            buf += data[:room]
        setattr(out, name + "_total", getattr(out, name + "_total") + len(data))
        if out.stdout_total + out.stderr_total > self.plan.output_kill_bytes:
            out.output_exceeded = True

    def parse_lines(self):
        while b"\n" in self.protocol:
            line, _, rest = self.protocol.partition(b"\n")
            self.protocol = bytearray(rest)
            text = line.decode("utf-8", "replace")
            self.outcome.lines.append(text)
            if text == "S":
                self.outcome.started = True
            elif text.startswith("X "):
                self.outcome.runner_exited = True
            elif text.startswith("L ") and not self.outcome.started and not self.seen_layers:
                # Only the supervisor's line counts: it is written before the
                # runner (and so any untrusted code) starts.
                self.seen_layers = True
                try:
                    report = json.loads(text[2:])
                    self.outcome.layers = dict(report["layers"])
                    self.outcome.notes = [str(n) for n in report["notes"]]
                except (ValueError, KeyError, TypeError):
                    continue
                if self.outcome.layers.get("netns"):
                    self.outcome.netns = str(self.outcome.layers.get("netns_id"))
            elif text.startswith("P ") and not self.outcome.started and self.seen_layers:
                # the runner's /proc layer, written before it execs untrusted code
                if text[2:] in ("private_proc", "hidden_proc"):
                    self.outcome.layers[text[2:]] = True


def _proc_info(pid):
    """(state, parent pid, session, real uid) of a process, or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read().decode("ascii", "replace")
        with open("/proc/%d/status" % pid, "rb") as f:
            status = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    uid = None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
            break
    return fields[0], int(fields[1]), int(fields[3]), uid


def _belongs(pid, session_id, uid, netns):
    """Is `pid` a live (non-zombie) process of the sandbox?

    The session id is the supervisor's pid; a child of the supervisor is an
    orphan it adopted as subreaper (e.g. one that escaped with setsid())."""
    info = _proc_info(pid)
    if info is None or info[0] in ("Z", "X"):
        return False
    _, parent, session, proc_uid = info
    if session == session_id or parent == session_id:
        return True
    if uid is not None and proc_uid == uid:
        return True
    if netns is None:
        return False
    try:
        return os.readlink("/proc/%d/ns/net" % pid) == netns
    except OSError:
        return False


def sandbox_pids(session_id, uid, netns, exclude=()):
    """Live processes that belong to the sandbox (see the module docstring).

    `netns` is only used when it differs from the host's own namespace, so a
    failed unshare can never turn this into "every process on the host"."""
    if netns is not None and netns == os.readlink("/proc/self/ns/net"):
        netns = None
    exclude = set(exclude) | {os.getpid()}
    return [int(name) for name in os.listdir("/proc")
            if name.isdigit() and int(name) not in exclude
            and _belongs(int(name), session_id, uid, netns)]


def kill_sandbox(session_id, uid, netns, exclude=(), max_passes=200):
    """SIGKILL every sandbox process until a full pass finds none."""
    if netns is not None and netns == os.readlink("/proc/self/ns/net"):
        netns = None
    for _ in range(max_passes):
        pids = sandbox_pids(session_id, uid, netns, exclude)
        if not pids:
            return True
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError as e:
                if e.errno == errno.ENOSYS and _belongs(pid, session_id, uid, netns):
                    _kill_quietly(pid)  # kernels before 5.3: small pid-reuse window
                continue
            try:
                # The pidfd pins the process, so this re-check cannot be
                # fooled by a recycled pid between the scan and the kill.
                if _belongs(pid, session_id, uid, netns):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(pidfd)
        time.sleep(0.002)
    return False


def _kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _exited(pid):
    """True once the supervisor has exited (without reaping it)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def execute(plan):
    """Runs one sandboxed program; returns an `Outcome`."""
    outcome = Outcome()
    result_r, result_w = os.pipe()
    config = dict(plan.config, result_fd=result_w)
    argv = list(plan.argv) + [json.dumps(config)]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(result_w,), env=plan.env, cwd=plan.workdir,
            start_new_session=True, close_fds=True)
    finally:
        os.close(result_w)
    outcome.session_id = proc.pid
    try:
        _watch(proc, plan, outcome, result_r, start)
    finally:
        if proc.returncode is None:  # interrupted (e.g. KeyboardInterrupt): no leftovers
            _shut_down(proc, plan, outcome, lambda timeout: time.sleep(timeout))
        os.close(result_r)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
    outcome.duration_s = time.monotonic() - start
    return outcome


def _shut_down(proc, plan, outcome, wait):
    """Kills every sandbox process but the supervisor, which must stay to reap
    them (orphans would go to pid 1, which may never reap), then reaps it."""
    kill_sandbox(outcome.session_id, plan.uid, outcome.netns, exclude={proc.pid})
    reap_deadline = time.monotonic() + _REAP_GRACE_S
    while not _exited(proc.pid) and time.monotonic() < reap_deadline:
        wait(0.02)
        kill_sandbox(outcome.session_id, plan.uid, outcome.netns, exclude={proc.pid})
    if not _exited(proc.pid):
        _kill_quietly(proc.pid)
    _, status = os.waitpid(proc.pid, 0)
    proc.returncode = outcome.supervisor_status = os.waitstatus_to_exitcode(status)
    kill_sandbox(outcome.session_id, plan.uid, outcome.netns)


def _watch(proc, plan, outcome, result_r, start):
    streams = _Streams(plan, outcome)
    sel = selectors.DefaultSelector()
    readers = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr",
               result_r: "result"}
    for fd, name in readers.items():
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, name)
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_WRITE, "stdin")
    pending = memoryview(plan.payload)
    deadline = start + plan.startup_timeout_s
    clock_started = False

    def pump(timeout):
        nonlocal pending
        for key, _ in sel.select(timeout):
            if key.data == "stdin":
                try:
                    n = os.write(key.fd, pending[:_READ_CHUNK])
                    pending = pending[n:]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # the runner is gone: BrokenPipe
                    pending = pending[:0]
                if not pending:
                    sel.unregister(key.fd)
                    proc.stdin.close()  # EOF: the runner stops reading
                continue
            try:
                data = os.read(key.fd, _READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                continue
            if not data:
                sel.unregister(key.fd)
                continue
            streams.add(key.data, data)

    # Phase 1: run until the runner ends, the deadline passes, or too much output.
    while True:
        now = time.monotonic()
        if outcome.started and not clock_started:
            clock_started = True
            deadline = now + plan.timeout_s
        if outcome.runner_exited or outcome.output_exceeded or _exited(proc.pid):
            break
        if now >= deadline:
            if clock_started:
                outcome.timed_out = True
            else:
                outcome.startup_timed_out = True
            break
        pump(min(0.05, max(0.0, deadline - now)))
    if not proc.stdin.closed:
        sel.unregister(stdin_fd)
        proc.stdin.close()

    # Phase 2: kill the sandbox, let the supervisor reap and exit, then drain
    # what the pipes still hold.
    _shut_down(proc, plan, outcome, pump)
    drain_deadline = time.monotonic() + _DRAIN_S
    while sel.get_map() and time.monotonic() < drain_deadline:
        pump(0.02)
    sel.close()
    outcome.stdout = bytes(streams.buffers["stdout"])
    outcome.stderr = bytes(streams.buffers["stderr"])
    if streams.protocol:  # a last line without its newline
        streams.protocol += b"\n"
        streams.parse_lines()
