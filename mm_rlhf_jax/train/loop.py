"""The single host loop shared by every algorithm.

    batch -> jitted step -> (async) metrics -> periodic eval -> checkpoint

Step t+1 is dispatched before step t's metrics are pulled to the host, so the
device never waits on Python. A non-finite loss stops the run with an error
naming the step, before anything from that step is checkpointed. SIGTERM (a
preempted TPU VM) checkpoints the state and the data iterator, then exits;
re-running the same command resumes from there.
"""

import logging
import math
import signal
import threading
from typing import Any, Callable, Protocol

import jax

from mm_rlhf_jax import distributed
from mm_rlhf_jax.progress import Progress
from mm_rlhf_jax.sharding import placement
from mm_rlhf_jax.train.checkpoint import Checkpointer
from mm_rlhf_jax.train.metrics import MetricWriter, to_python


class DataIterator(Protocol):
    def __next__(self) -> dict: ...
    def get_state(self) -> dict: ...
    def set_state(self, state: dict) -> None: ...


class Preempted(SystemExit):
    """Raised after the SIGTERM checkpoint is written (exit code 143, like a killed process)."""

    def __init__(self, step: int):
        super().__init__(143)
        self.step = step


class _SigtermFlag:
    """Sets a flag on SIGTERM (main thread only; elsewhere the flag stays False)."""

    def __init__(self):
        self.stop = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: checkpointing at the end of this step")
        self.stop = True

    def should_stop(self) -> bool:
        return placement.any_process(self.stop)  # every host must stop at the same step

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def check_finite(step: int, metrics: dict[str, Any], keys=("train/loss",)) -> None:
    for k in keys:
        if k in metrics and not math.isfinite(float(metrics[k])):
            raise FloatingPointError(
                f"non-finite {k} = {metrics[k]} at step {step}; the last good checkpoint is kept"
            )


def restore_if_any(checkpointer: Checkpointer, abstract_state, data_iter: DataIterator):
    """The latest checkpointed state (data iterator repositioned), or None for a fresh run."""
    step = checkpointer.latest_step()
    if step is None:
        return None
    state, data_state = checkpointer.restore(step, abstract_state)
    if data_state:
        data_iter.set_state(data_state)
    logging.info("resumed from step %d in %s", step, checkpointer.directory)
    return state


def run_loop(
    *,
    state,
    step_fn: Callable,
    data_iter: DataIterator,
    put_batch: Callable[[dict], Any],
    total_steps: int,
    checkpointer: Checkpointer,
    writer: MetricWriter,
    eval_fn: Callable[[Any], dict] | None = None,
    log_every: int = 10,
    eval_every: int = 0,
    checkpoint_every: int = 0,
    progress: bool = True,
    desc: str = "train",
):
    """Runs steps [state.step, total_steps) and returns (state, final eval metrics)."""
    start = int(placement.fetch(state.step))
    pending = None  # (step, device metrics) of the last dispatched step

    def drain():
        nonlocal pending
        if pending is None:
            return
        step, metrics = pending
        pending = None
        host = {k: to_python(v) for k, v in placement.fetch_tree(metrics).items()}
        check_finite(step, host)
        if step % log_every == 0 or step == total_steps - 1:
            writer.write(step, host)
            bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in host.items() if "loss" in k})

    def checkpoint(step):
        drain()  # never checkpoint a step whose loss was not checked
        writer.flush()  # metrics up to here survive a crash (remote metrics files are written in batches)
        checkpointer.save(step, state, data_iter.get_state())

    # Every process starts the phase's first step (and its compile) together: on CPU, a collective's peers
    # must connect within 30 s of each other.
    distributed.barrier("run_loop")
    # A bar on a terminal, else a line per 10% of the steps with steps/s and the loss (progress.Progress).
    bar = Progress(total_steps, desc, "steps", initial=start, enabled=progress and jax.process_index() == 0)
    eval_metrics = {}
    with _SigtermFlag() as sigterm:
        for step in range(start, total_steps):
            batch = put_batch(next(data_iter))
            state, metrics = step_fn(state, batch)
            drain()
            pending = (step, metrics)
            bar.update(1)
            done = step + 1
            if eval_fn is not None and eval_every and done % eval_every == 0 and done < total_steps:
                drain()
                eval_metrics = eval_fn(state)
                writer.write(done, eval_metrics)
            if sigterm.should_stop():
                checkpoint(done)
                checkpointer.wait()
                bar.close()
                raise Preempted(done)
            if checkpoint_every and done % checkpoint_every == 0:
                checkpoint(done)
        drain()
    bar.close()
    if checkpointer.latest_step() != total_steps:
        checkpoint(total_steps)
    checkpointer.wait()
    if eval_fn is not None:
        eval_metrics = eval_fn(state)
        writer.write(total_steps, eval_metrics)
    return state, eval_metrics
