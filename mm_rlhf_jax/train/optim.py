"""Optimizer factory from the config's `optim` block."""

import ml_collections
import optax

from mm_rlhf_jax.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
OPTIMIZERS.register("adamw")(
    lambda c, lr: optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay))
OPTIMIZERS.register("adam")(lambda c, lr: optax.adam(lr, b1=c.b1, b2=c.b2, eps=c.eps))
# LongPO's released command uses rmsprop.
OPTIMIZERS.register("rmsprop")(lambda c, lr: optax.rmsprop(lr, decay=c.b2, eps=c.eps))
OPTIMIZERS.register("sgd")(lambda c, lr: optax.sgd(lr))


def learning_rate_schedule(c: ml_collections.ConfigDict, total_steps: int):
    """Warmup (warmup_ratio of total, as the papers' HF scripts) then cosine/linear/constant."""
    warmup = int(round(c.warmup_ratio * total_steps))
    decay_steps = max(total_steps - warmup, 1)
    decays = {
        "cosine": lambda: optax.cosine_decay_schedule(c.lr, decay_steps, alpha=c.final_lr_ratio),
        "linear": lambda: optax.linear_schedule(c.lr, c.lr * c.final_lr_ratio, decay_steps),
        "constant": lambda: optax.constant_schedule(c.lr),
    }
    if c.schedule not in decays:
        raise ValueError(f"unknown lr schedule {c.schedule!r}; use {sorted(decays)}")
    if warmup == 0:
        return decays[c.schedule]()
    return optax.join_schedules([optax.linear_schedule(0.0, c.lr, warmup), decays[c.schedule]()], [warmup])


def make_optimizer(c: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Gradient clipping + the named optimizer on the warmup/decay schedule."""
    tx = OPTIMIZERS.get(c.name)(c, learning_rate_schedule(c, total_steps))
    if c.grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(c.grad_clip), tx)
    return tx
