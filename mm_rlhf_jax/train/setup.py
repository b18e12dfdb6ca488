"""Shared run set-up: train state restored from the workdir or created sharded, self-contained
training phases (warm starts, rounds), and the final report."""

import functools
import json
import os
from typing import Callable

import jax
import ml_collections
from jax.sharding import Mesh

from mm_rlhf_jax.models import hf
from mm_rlhf_jax.sharding import replicated, unbox_values
from mm_rlhf_jax.train import (checkpoint, data_setup, loop, metrics as metrics_lib, model_factory, partition,
                               state as state_lib)
from mm_rlhf_jax.train.optim import make_optimizer


def init_or_restore(config: ml_collections.ConfigDict, abstract_params, params_fn: Callable, mesh: Mesh, rules,
                    ckpt: checkpoint.Checkpointer, data_iter):
    """(state, tx, trainable mask, state shardings).

    The latest checkpoint wins (the data iterator is repositioned with it);
    otherwise params_fn() supplies the initial parameters (loaded only then).
    """
    tx = make_optimizer(config.optim, config.train.steps)
    mask = partition.trainable_mask(unbox_values(abstract_params),
                                    model_factory.TRAINABLE.get(config.model.trainable))
    state, shardings = restore_or_create(abstract_params, params_fn, tx, mask, mesh, rules, ckpt, data_iter,
                                         config.seed + 1)
    return state, tx, mask, shardings


def restore_or_create(abstract_params, params_fn: Callable, tx, mask, mesh: Mesh, rules,
                      ckpt: checkpoint.Checkpointer, data_iter, seed: int):
    """(state, state shardings): the latest checkpoint of ckpt, else a new state around params_fn()."""
    shardings = state_lib.state_shardings(abstract_params, mesh, rules, tx, mask)
    abstract_state = jax.eval_shape(
        lambda p: state_lib.create_state(p, tx, mask, jax.random.PRNGKey(0), shardings),
        unbox_values(abstract_params))
    state = loop.restore_if_any(ckpt, checkpoint.abstract_like(abstract_state, shardings), data_iter)
    if state is None:
        state = state_lib.create_state(params_fn(), tx, mask, jax.random.PRNGKey(seed), shardings)
    return state, shardings


def run_phase(directory: str, module, params, step_fn: Callable, data_iter, tx, *, trainable, mesh: Mesh, rules,
              steps: int, seed: int, log_every: int, checkpoint_every: int = 0, max_to_keep: int = 1,
              eval_fn: Callable | None = None, eval_every: int = 0):
    """Trains `params` for `steps` in its own folder; returns (params, final eval metrics).

    A phase (a warm start, a LongPO round) keeps its checkpoints in
    directory/checkpoints, so a re-run restores it (finished or not) instead
    of starting over. step_fn(state, batch, *, module, tx, mask) is jitted
    here with the state donated.
    """
    abstract = hf.abstract_params(module)
    mask = partition.trainable_mask(unbox_values(abstract), trainable)
    ckpt = checkpoint.Checkpointer(os.path.join(directory, "checkpoints"), max_to_keep=max_to_keep)
    state, shardings = restore_or_create(abstract, lambda: params, tx, mask, mesh, rules, ckpt, data_iter, seed)
    del params
    jit_step = jax.jit(functools.partial(step_fn, module=module, tx=tx, mask=mask),
                       out_shardings=(shardings, replicated(mesh)), donate_argnames=("state",))
    writer = metrics_lib.MetricWriter(directory)
    state, final = loop.run_loop(
        state=state, step_fn=jit_step, data_iter=data_iter, put_batch=lambda b: data_setup.put_batch(b, mesh),
        total_steps=steps, checkpointer=ckpt, writer=writer, log_every=log_every,
        eval_fn=None if eval_fn is None else (lambda s: eval_fn(s.params)), eval_every=eval_every,
        checkpoint_every=checkpoint_every)
    writer.close()
    ckpt.close()
    return state.params, final


def report(name: str, result: dict, writer) -> None:
    """Writes eval.json and prints a one-line summary (the run's last output)."""
    writer.write_json("eval.json", result)
    scalars = {k: v for k, v in result.items() if isinstance(v, (int, float))}
    summary = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(scalars.items()))
    print(f"[{name}] {summary}", flush=True)


def save_config(config: ml_collections.ConfigDict, writer) -> None:
    writer.write_json("config.json", json.loads(config.to_json_best_effort()))
