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


def microbatch(batch, k: int, j):
    """Microbatch j (traced index ok) of k: rows j, j+k, j+2k, ... of every leaf [B, ...].

    Strided rows keep every microbatch spread over the devices the batch axis is
    sharded on (each device's contiguous block of rows splits into k parts); the
    reshape is free and each step reads only its slice, so the full batch is never
    copied into a microbatch-major layout.
    """
    def take(x):
        b = x.shape[0]
        if b % k:
            raise ValueError(f"a batch of {b} rows does not split into {k} microbatches")
        return jax.lax.dynamic_index_in_dim(x.reshape(b // k, k, *x.shape[1:]), j, axis=1, keepdims=False)

    return jax.tree.map(take, batch)


def accumulate_grads(loss_fn: Callable, params, mask, batch, counts, microbatches: int = 1):
    """((loss, metrics), grads) of loss_fn(params, microbatch, counts) summed over microbatches.

    loss_fn must be a sum of per-example terms over the global `counts` (data-only
    normalisers of the whole batch, e.g. its number of pairs or response tokens):
    then the sum over microbatches of the loss, its metrics and its gradients is
    exactly the full-batch value (up to float summation order). lax.scan runs
    the microbatches one after the other inside the jitted step, so only one
    microbatch's activations are alive at a time.
    """
    if microbatches == 1:
        return grad_of_trainable(loss_fn, params, mask, batch, counts)
    step = lambda j: grad_of_trainable(loss_fn, params, mask, microbatch(batch, microbatches, j), counts)

    def body(acc, j):
        return jax.tree.map(jnp.add, acc, step(j)), None

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(step, 0))
    out, _ = jax.lax.scan(body, zeros, jnp.arange(microbatches))
    return out


def minimize(loss_fn: Callable, state: TrainState, batch, tx: optax.GradientTransformation, mask, *,
             counts_fn: Callable | None = None, microbatches: int = 1):
    """One step on loss_fn(params, batch, counts) -> (loss, metrics): the new state and metrics + grad/param norms.

    counts_fn(batch) -> the global normalisers loss_fn divides by (None: loss_fn
    gets counts=None and microbatches must be 1); see accumulate_grads.
    """
    if counts_fn is None and microbatches != 1:
        raise ValueError("gradient accumulation needs the loss's global normalisers (counts_fn)")
    counts = None if counts_fn is None else counts_fn(batch)
    (_, metrics), grads = accumulate_grads(loss_fn, state.params, mask, batch, counts, microbatches)
    state, opt_metrics = apply_gradients(state, grads, tx, mask)
    return state, {**metrics, **opt_metrics}
