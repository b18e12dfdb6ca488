"""Calls into worker processes with a per-call timeout, safe from any thread.

    pool = WorkerPool("package.module:function", workers=2, timeout_s=10.0)
    pool.call(*args)          # -> function(*args) from a worker, or raises CallTimeout
    pool.map([args, ...])     # in parallel over the workers, results in order
    pool.close()

Why processes: a checker that times itself out with `signal.alarm` (as
Math-Verify does) works only in the main thread, and a Python thread stuck in
sympy cannot be stopped. Here each worker is a child interpreter
(`python -m mm_rlhf_jax.rewards.math.pool module:function`) speaking one JSON
line per call on its stdin/stdout; a call that outlives `timeout_s` kills
that worker (a fresh one starts on the next call) and raises CallTimeout.
A worker first reports that it has imported the function, so start-up time
(up to START_TIMEOUT_S) never counts against a call's timeout.
Children are plain subprocesses, not multiprocessing: no pickling, no
re-import of the parent's main module, no fork of a process that holds JAX
threads. Arguments and results must be JSON values.

Any number of threads may call at once: each takes an idle worker from a
queue (waiting when all `workers` are busy). An exception inside the
function is raised in the caller as WorkerError with its message; a worker
that dies is replaced and its call raises WorkerError too.
"""

import atexit
import importlib
import json
import os
import queue
import selectors
import subprocess
import sys
import threading
import time


class CallTimeout(TimeoutError):
    """A call ran past the pool's timeout; its worker was killed."""


class WorkerError(RuntimeError):
    """The function raised in the worker, or the worker died."""


START_TIMEOUT_S = 120.0  # interpreter start and imports, not counted in a call's timeout


class _Worker:
    def __init__(self, target: str):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __name__, target], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.buffer = b""
        try:
            ready = self.receive(START_TIMEOUT_S)
        except WorkerError:
            self.kill()
            raise
        if ready != {"ready": True}:
            self.kill()
            raise WorkerError(f"worker for {target} did not start: {ready}")

    def send(self, args) -> None:
        self.proc.stdin.write(json.dumps(args).encode() + b"\n")
        self.proc.stdin.flush()

    def receive(self, timeout_s: float):
        """The next reply line, or None when none arrives within timeout_s."""
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self.buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    raise WorkerError(f"worker exited with code {self.proc.wait()}")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()


class WorkerPool:
    """See the module docstring."""

    def __init__(self, target: str, *, workers: int = 2, timeout_s: float = 10.0):
        if ":" not in target:
            raise ValueError(f"target must be 'module:function', got {target!r}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.target, self.workers, self.timeout_s = target, workers, timeout_s
        self._idle = queue.Queue()
        for _ in range(workers):
            self._idle.put(None)  # a slot; its worker starts on first use
        self._lock = threading.Lock()
        self._live: set = set()
        self.timeouts = 0  # calls that ran past timeout_s
        self._closed = False
        atexit.register(self.close)

    def call(self, *args):
        if self._closed:
            raise RuntimeError("WorkerPool is closed")
        worker = self._idle.get()
        try:
            if worker is None or worker.proc.poll() is not None:
                worker = _Worker(self.target)
                with self._lock:
                    self._live.add(worker)
            worker.send(list(args))
            reply = worker.receive(self.timeout_s)
        except (WorkerError, OSError) as e:
            self._retire(worker)
            raise WorkerError(f"{self.target}: {e}") from None
        if reply is None:
            self._retire(worker)
            with self._lock:
                self.timeouts += 1
            raise CallTimeout(f"{self.target} took over {self.timeout_s} s")
        self._idle.put(worker)
        if "error" in reply:
            raise WorkerError(f"{self.target}: {reply['error']}")
        return reply["result"]

    def map(self, arg_lists) -> list:
        """call(*args) for each args, spread over the workers; exceptions are
        returned in place of results (CallTimeout, WorkerError)."""
        arg_lists = list(arg_lists)
        results = [None] * len(arg_lists)
        todo = queue.Queue()
        for i in range(len(arg_lists)):
            todo.put(i)

        def run():
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[i] = self.call(*arg_lists[i])
                except (CallTimeout, WorkerError) as e:
                    results[i] = e

        threads = [threading.Thread(target=run) for _ in range(min(self.workers, len(arg_lists)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def _retire(self, worker) -> None:
        if worker is not None:
            worker.kill()
            with self._lock:
                self._live.discard(worker)
        self._idle.put(None)

    def close(self) -> None:
        """Stops every worker; later calls raise."""
        self._closed = True
        with self._lock:
            live, self._live = self._live, set()
        for worker in live:
            worker.kill()


def _serve(target: str) -> None:
    """Worker side: one JSON list of arguments per line in, one reply per line out."""
    module, _, name = target.partition(":")
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # a print() inside the function must not corrupt the replies
    try:
        function = getattr(importlib.import_module(module), name)
        hello = {"ready": True}
    except Exception as e:  # noqa: BLE001 - reported to the parent, then exit
        function, hello = None, {"error": f"{type(e).__name__}: {e}"}
    out.write(json.dumps(hello).encode() + b"\n")
    out.flush()
    if function is None:
        return
    for line in sys.stdin.buffer:
        try:
            reply = {"result": function(*json.loads(line))}
        except Exception as e:  # noqa: BLE001 - reported to the caller as WorkerError
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    _serve(sys.argv[1])
