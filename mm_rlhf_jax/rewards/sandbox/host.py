"""Host side of the code sandbox: start it, watch it, clean up.

`execute(plan)` starts the sandbox (`supervisor.py`, or bubblewrap with
`runner.py` in it) in a new session with a scrubbed environment, feeds the
payload to the runner over stdin, reads stdout/stderr (bounded) and the
protocol lines of the result pipe, enforces the wall-clock deadline, and
afterwards kills every process of the sandbox.

Killing, per backend:
  supervisor  the supervisor is a child subreaper: a program that left the
              session with setsid() is adopted by it once its parent dies,
              and the supervisor cannot exit while any descendant lives, so
              sweeping (sweep.py) until the supervisor has exited leaves
              nothing behind in every mode.
  bwrap       every sandbox process lives in a pid namespace whose pid 1 is
              bwrap's reaper; bwrap reports its host pid (--info-fd) before
              it lets the sandbox go on, and the payload is only sent once a
              pidfd on it is held. SIGKILL to that pid 1 makes the kernel kill
              the whole namespace, and its pidfd turns readable only when the
              last of them is gone. Without a payload the runner runs nothing.

Protocol lines on the result pipe (one per line, bounded):
  L <json>               layers active (supervisor, or the bwrap runner
                         before it starts the program)
  P <layer>              the runner's /proc layer (before it execs the program)
  E <message>            setup failure (supervisor or runner)
  S                      the runner starts the untrusted code: timeout clock
  V <event> <detail>     the Python guard blocked an operation
  R <nonce> <status> ..  verdict of the runner (only trusted with the nonce)
  X <status> <cpu> <rss> the runner's wait status, CPU seconds, max RSS KiB
"""

import dataclasses
import json
import os
import select
import selectors
import signal
import subprocess
import time

from mm_rlhf_jax.rewards.sandbox.sweep import _kill_quietly, kill_sandbox

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
    backend: str = "supervisor"
    pass_fds: tuple = ()        # child-side descriptors; closed here once it started
    info_fd: int | None = None  # bwrap: read end of the --info-fd pipe (closed here)
    encode: object = json.dumps  # config -> the command's last argument


@dataclasses.dataclass
class Outcome:
    """Raw observations of one run; classify.py turns them into a status."""

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
    namespaces: dict = dataclasses.field(default_factory=dict)  # bwrap: kind -> inode
    init_pid: int | None = None  # bwrap: host pid of the pid namespace's pid 1
    clean: bool = False  # every sandbox process is known to be gone


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
    argv = list(plan.argv) + [plan.encode(config)]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(result_w,) + tuple(plan.pass_fds), env=plan.env, cwd=plan.workdir,
            start_new_session=True, close_fds=True)
    finally:
        for fd in (result_w,) + tuple(plan.pass_fds):
            os.close(fd)
    outcome.session_id = proc.pid
    state = _State(proc, plan, outcome)
    try:
        _watch(state, result_r, start)
    finally:
        if proc.returncode is None:  # interrupted (e.g. KeyboardInterrupt): no leftovers
            _shut_down(state, lambda timeout: time.sleep(timeout))
        state.close()
        os.close(result_r)
        if plan.info_fd is not None:
            os.close(plan.info_fd)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
    outcome.duration_s = time.monotonic() - start
    return outcome


class _State:
    """The started process and, under bwrap, what is known of pid 1."""

    def __init__(self, proc, plan, outcome):
        self.proc, self.plan, self.outcome = proc, plan, outcome
        self.info = bytearray()
        self.init_pidfd = None
        self.init_gone = False

    def add_info(self, data):
        """bwrap's --info-fd JSON; once complete, pin pid 1 with a pidfd."""
        self.info += data
        if self.outcome.init_pid is not None or len(self.info) > 4096:
            return
        try:
            info = json.loads(self.info.decode("utf-8"))
            pid = int(info["child-pid"])
        except (ValueError, KeyError, TypeError):
            return  # incomplete so far
        self.outcome.namespaces = {k[:-len("-namespace")]: v for k, v in info.items()
                                   if k.endswith("-namespace")}
        self.outcome.init_pid = pid
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # already gone: nothing can have started in it
            self.init_gone = True
            return
        # The launcher is its parent until it is reaped, so a recycled pid
        # (pid 1 already gone) cannot pass this check.
        if _parent(pid) != self.proc.pid:
            os.close(pidfd)
            self.init_gone = True
            return
        self.init_pidfd = pidfd

    def ready_for_payload(self):
        return self.plan.backend != "bwrap" or self.init_pidfd is not None

    def close(self):
        if self.init_pidfd is not None:
            os.close(self.init_pidfd)
            self.init_pidfd = None


def _parent(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2:].split()[1])


def _shut_down(state, wait):
    if state.plan.backend == "bwrap":
        _shut_down_bwrap(state, wait)
    else:
        _shut_down_supervisor(state, wait)


def _shut_down_bwrap(state, wait):
    """SIGKILL to pid 1 ends the pid namespace; its pidfd becomes readable
    once every process in it is gone. Then the launcher is reaped."""
    proc, outcome = state.proc, state.outcome
    if state.init_pidfd is not None:
        try:
            signal.pidfd_send_signal(state.init_pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        # No need to drain the pipes meanwhile: SIGKILL ends blocked writers too.
        state.init_gone = bool(select.select([state.init_pidfd], [], [], _REAP_GRACE_S)[0])
    if not _exited(proc.pid):
        _kill_quietly(proc.pid)
    _, status = os.waitpid(proc.pid, 0)
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    # bwrap exits with 128 + n when its child died of signal n (as a shell
    # does); read that as the runner's "killed by n", as without bwrap.
    outcome.supervisor_status = -(code - 128) if 128 < code < 128 + 65 else code
    # Without a known pid 1 no payload was sent; the leased uid is swept
    # before its next use (ids.py) since nothing here proved it empty.
    outcome.clean = state.init_gone


def _shut_down_supervisor(state, wait):
    """Kills every sandbox process but the supervisor, which must stay to reap
    them (orphans would go to pid 1, which may never reap), then reaps it."""
    proc, plan, outcome = state.proc, state.plan, state.outcome
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


def _watch(state, result_r, start):
    proc, plan, outcome = state.proc, state.plan, state.outcome
    streams = _Streams(plan, outcome)
    sel = selectors.DefaultSelector()
    readers = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr",
               result_r: "result"}
    if plan.info_fd is not None:
        readers[plan.info_fd] = "info"
    for fd, name in readers.items():
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, name)
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    pending = memoryview(plan.payload)
    deadline = start + plan.startup_timeout_s
    clock_started = False
    sending = False

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
            if key.data == "info":
                state.add_info(data)
            else:
                streams.add(key.data, data)

    # Phase 1: run until the runner ends, the deadline passes, or too much output.
    while True:
        now = time.monotonic()
        if not sending and state.ready_for_payload():
            sending = True
            sel.register(stdin_fd, selectors.EVENT_WRITE, "stdin")
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
        if sending:
            sel.unregister(stdin_fd)
        proc.stdin.close()

    # Phase 2: kill the sandbox, let the supervisor reap and exit, then drain
    # what the pipes still hold.
    _shut_down(state, pump)
    drain_deadline = time.monotonic() + _DRAIN_S
    while sel.get_map() and time.monotonic() < drain_deadline:
        pump(0.02)
    sel.close()
    outcome.stdout = bytes(streams.buffers["stdout"])
    outcome.stderr = bytes(streams.buffers["stderr"])
    if streams.protocol:  # a last line without its newline
        streams.protocol += b"\n"
        streams.parse_lines()
