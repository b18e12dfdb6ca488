"""A run's context and its training phases: every phase (warm start, main phase, LongPO round) runs here.

    with phase.run_context(config, workdir) as ctx:          # mesh, rules, writer, config.json
        step = phase.params_step(module, step_fn, tx, trainable=..., mesh=ctx.mesh, rules=ctx.rules)
        result = phase.train_params(ctx.workdir, ctx, step, params_fn, data_iter, steps=..., ...)
        phase.report("mm_dpo", {...}, ctx.writer)             # eval.json + the one-line summary

A phase keeps its checkpoints in <directory>/checkpoints, so re-running the
same command restores it (finished or not) instead of starting over. Order of
work in a phase: restore the latest checkpoint (the data iterator is
repositioned with it) or create the state from `state_fn()` (which loads
parameters only then); evaluate the starting state once if asked
(`initial_eval`: written to that JSON file, read back on resume); train to
`steps` in train.loop (periodic evals and checkpoints, SIGTERM checkpoint);
evaluate the final state.

The mesh and the rules are set once here (jax.set_mesh, nn.logical_axis_rules)
for the model's activation constraints, and passed explicitly wherever
shardings are computed.
"""

import contextlib
import dataclasses
import functools
import json
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import ml_collections
from jax.sharding import Mesh

from mm_rlhf_jax import storage
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.sharding import TRAIN_RULES, logical_shardings, make_mesh, placement, replicated, unbox_values
from mm_rlhf_jax.train import checkpoint, loop, metrics as metrics_lib, partition, state as state_lib


@dataclasses.dataclass(frozen=True)
class RunContext:
    workdir: str
    mesh: Mesh
    rules: tuple  # the training layout's logical-axis rules (sharding.rules.TRAIN_RULES)
    writer: metrics_lib.MetricWriter  # the run's metrics.jsonl / TensorBoard / eval.json

    def path(self, *parts: str) -> str:
        return storage.join(self.workdir, *parts)


@contextlib.contextmanager
def run_context(config: ml_collections.ConfigDict, workdir: str) -> Iterator[RunContext]:
    """The mesh from config.mesh, the run's writer and its saved config.json, with the mesh and rules set."""
    storage.makedirs(workdir)
    mesh = make_mesh(config.mesh.to_dict())
    writer = metrics_lib.MetricWriter(workdir)
    writer.write_json("config.json", json.loads(config.to_json_best_effort()))
    try:
        with jax.set_mesh(mesh), nn.logical_axis_rules(TRAIN_RULES):
            yield RunContext(workdir, mesh, TRAIN_RULES, writer)
    finally:
        writer.close()


@dataclasses.dataclass
class PhaseResult:
    state: Any  # the final train state
    final: dict  # the final evaluation ({} without eval_fn)
    initial: dict  # the starting state's evaluation ({} without initial_eval)


def run_phase(directory: str, ctx: RunContext, *, state_fn: Callable[[], Any], abstract_state, step_fn: Callable,
              data_iter, steps: int, log_every: int, checkpoint_every: int = 0, max_to_keep: int = 1,
              eval_fn: Callable[[Any], dict] | None = None, eval_every: int = 0, initial_eval: str | None = None,
              writer: metrics_lib.MetricWriter | None = None, put: Callable[[dict], Any] | None = None) -> PhaseResult:
    """Restore-or-create, (initial eval), train, final eval; see the module docstring.

    abstract_state: ShapeDtypeStructs with the target shardings (the restore target).
    step_fn(state, device batch) -> (state, metrics); put(host batch) -> device batch
    (default: placement.put_batch of this process's rows). eval_fn(state) -> metrics.
    writer: where metrics go (default: a writer of `directory`, closed at the end).
    """
    own_writer = writer is None
    writer = metrics_lib.MetricWriter(directory) if own_writer else writer
    ckpt = checkpoint.Checkpointer(storage.join(directory, "checkpoints"), max_to_keep=max_to_keep)
    try:
        state = loop.restore_if_any(ckpt, abstract_state, data_iter)
        if state is None:
            state = state_fn()
        initial = {}
        if initial_eval is not None and eval_fn is not None:
            initial = writer.json_once(initial_eval, lambda: eval_fn(state))
        state, final = loop.run_loop(
            state=state, step_fn=step_fn, data_iter=data_iter,
            put_batch=put or (lambda b: placement.put_batch(b, ctx.mesh)), total_steps=steps, checkpointer=ckpt,
            writer=writer, eval_fn=eval_fn, log_every=log_every, eval_every=eval_every,
            checkpoint_every=checkpoint_every,
            desc="train" if directory == ctx.workdir else storage.basename(directory.rstrip("/")))  # warm_start, ...
    finally:
        ckpt.close()
        if own_writer:
            writer.close()
    return PhaseResult(state, final, initial)


def has_checkpoint(directory: str) -> bool:
    """Has a phase in `directory` checkpointed (so its starting parameters are not needed)?"""
    ckpt = checkpoint.Checkpointer(storage.join(directory, "checkpoints"), max_to_keep=1)
    try:
        return ckpt.latest_step() is not None
    finally:
        ckpt.close()


@dataclasses.dataclass(frozen=True)
class ParamsStep:
    """A step over a TrainState of one module's parameters, jitted with its shardings (for run() and aot)."""

    jit: Callable  # (state, batch) -> (state, metrics); state donated
    tx: Any
    mask: Any
    shardings: state_lib.TrainState  # NamedShardings of every TrainState leaf
    abstract_state: state_lib.TrainState  # ShapeDtypeStructs carrying those shardings (restore / AOT target)


def params_step(module, step_fn: Callable, tx, *, trainable: tuple[str, ...], mesh: Mesh, rules) -> ParamsStep:
    """step_fn(state, batch, *, module, tx, mask) jitted with the state donated and explicit output shardings.

    The one construction of a params train step: run() trains with it and
    aot.compile_train_step compiles it, so both see the same program.
    """
    abstract = hf.abstract_params(module)
    mask = partition.trainable_mask(unbox_values(abstract), trainable)
    shardings = state_lib.state_shardings(abstract, mesh, rules, tx, mask)
    abstract_state = jax.eval_shape(
        lambda p: state_lib.create_state(p, tx, mask, jax.random.PRNGKey(0), shardings), unbox_values(abstract))
    jit_step = jax.jit(functools.partial(step_fn, module=module, tx=tx, mask=mask),
                       out_shardings=(shardings, replicated(mesh)), donate_argnames=("state",))
    return ParamsStep(jit_step, tx, mask, shardings, checkpoint.abstract_like(abstract_state, shardings))


def train_params(directory: str, ctx: RunContext, step: ParamsStep, params_fn: Callable[[], Any], data_iter, *,
                 seed: int, steps: int, log_every: int, checkpoint_every: int = 0, max_to_keep: int = 1,
                 eval_fn: Callable[[Any], dict] | None = None, eval_every: int = 0, initial_eval: str | None = None,
                 writer: metrics_lib.MetricWriter | None = None) -> PhaseResult:
    """A phase over a TrainState of one module's parameters, trained with `step` (params_step).

    params_fn() gives the starting parameters (called only without a
    checkpoint); eval_fn(params) -> metrics.
    """
    state_fn = lambda: state_lib.create_state(params_fn(), step.tx, step.mask, jax.random.PRNGKey(seed),
                                              step.shardings)
    return run_phase(directory, ctx, state_fn=state_fn, abstract_state=step.abstract_state, step_fn=step.jit,
                     data_iter=data_iter, steps=steps, log_every=log_every, checkpoint_every=checkpoint_every,
                     max_to_keep=max_to_keep, eval_fn=None if eval_fn is None else (lambda s: eval_fn(s.params)),
                     eval_every=eval_every, initial_eval=initial_eval, writer=writer)


def abstract_params(module, mesh: Mesh, rules):
    """The module's parameters as ShapeDtypeStructs with their NamedShardings (reference / AOT inputs)."""
    abstract = hf.abstract_params(module)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), unbox_values(abstract),
                        logical_shardings(abstract, mesh, rules))


def scalars(d: dict) -> dict:
    """The JSON scalar entries of a metrics dict (nested breakdowns stay in metrics.jsonl / eval.json)."""
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool))}


def report(name: str, result: dict, writer: metrics_lib.MetricWriter) -> None:
    """Writes eval.json and prints a one-line summary (the run's last output)."""
    writer.write_json("eval.json", result)
    numbers = {k: v for k, v in result.items() if isinstance(v, (int, float))}
    summary = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(numbers.items()))
    print(f"[{name}] {summary}", flush=True)
