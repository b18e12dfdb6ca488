"""Shared run set-up: train state restored from the workdir or created sharded, and the final report."""

import json
from typing import Callable

import jax
import ml_collections
from jax.sharding import Mesh

from mm_rlhf_jax.sharding import unbox_values
from mm_rlhf_jax.train import checkpoint, loop, model_factory, partition, state as state_lib
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
    shardings = state_lib.state_shardings(abstract_params, mesh, rules, tx, mask)
    abstract_state = jax.eval_shape(
        lambda p: state_lib.create_state(p, tx, mask, jax.random.PRNGKey(0), shardings),
        unbox_values(abstract_params))
    state = loop.restore_if_any(ckpt, checkpoint.abstract_like(abstract_state, shardings), data_iter)
    if state is None:
        state = state_lib.create_state(params_fn(), tx, mask, jax.random.PRNGKey(config.seed + 1), shardings)
    return state, tx, mask, shardings


def report(name: str, result: dict, writer) -> None:
    """Writes eval.json and prints a one-line summary (the run's last output)."""
    writer.write_json("eval.json", result)
    scalars = {k: v for k, v in result.items() if isinstance(v, (int, float))}
    summary = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(scalars.items()))
    print(f"[{name}] {summary}", flush=True)


def save_config(config: ml_collections.ConfigDict, writer) -> None:
    writer.write_json("config.json", json.loads(config.to_json_best_effort()))
