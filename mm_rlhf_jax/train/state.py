"""The train state pytree and its sharded, abstract-first creation."""

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mm_rlhf_jax.sharding import rules as rules_lib
from mm_rlhf_jax.train import partition


@flax.struct.dataclass
class TrainState:
    """step int32[]; params (full tree); opt_state over the trainable subtree; rng key."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def state_shardings(abstract_boxed_params, mesh: Mesh, rules, tx: optax.GradientTransformation, mask):
    """NamedShardings for every TrainState leaf, from the params' logical axis names.

    `abstract_boxed_params` is jax.eval_shape of the model init (LogicallyPartitioned
    boxes kept). Optimizer moments mirror their parameter's sharding because
    optax maps over the boxed tree.
    """
    trainable, _ = partition.split(abstract_boxed_params, mask)
    abstract_opt = jax.eval_shape(tx.init, trainable)
    replicated = NamedSharding(mesh, P())
    return TrainState(
        step=replicated,
        params=rules_lib.logical_shardings(abstract_boxed_params, mesh, rules),
        opt_state=rules_lib.logical_shardings(abstract_opt, mesh, rules),
        rng=replicated,
    )


def create_state(params, tx: optax.GradientTransformation, mask, rng, shardings: TrainState) -> TrainState:
    """A fresh TrainState around (already sharded) params; optimizer state built sharded."""
    trainable, _ = partition.split(params, mask)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(trainable)
    return TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
        params=params,
        opt_state=opt_state,
        rng=jax.device_put(rng, shardings.rng),
    )


def apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation, mask) -> tuple[TrainState, dict]:
    """One optimizer update of the trainable subtree; returns the new state and grad/param norms."""
    trainable, frozen = partition.split(state.params, mask)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics = {"train/grad_norm": optax.global_norm(grads), "train/param_norm": optax.global_norm(trainable)}
    new = state.replace(step=state.step + 1, params=partition.merge(trainable, frozen), opt_state=opt_state)
    return new, metrics


def grad_of_trainable(loss_fn: Callable, params, mask, *args):
    """value_and_grad of loss_fn(params, *args) -> (loss, aux) w.r.t. the trainable leaves only."""
    trainable, frozen = partition.split(params, mask)
    fn = lambda t: loss_fn(partition.merge(t, frozen), *args)
    return jax.value_and_grad(fn, has_aux=True)(trainable)


def minimize(loss_fn: Callable, state: TrainState, batch, tx: optax.GradientTransformation, mask):
    """One step on loss_fn(params, batch) -> (loss, metrics): the new state and metrics + grad/param norms."""
    (_, metrics), grads = grad_of_trainable(loss_fn, state.params, mask, batch)
    state, opt_metrics = apply_gradients(state, grads, tx, mask)
    return state, {**metrics, **opt_metrics}
