"""Optimizers: the config's `optim` block (main phases) and the one supervised-phase recipe."""

import ml_collections
import optax

from mm_rlhf_jax.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
OPTIMIZERS.register("adamw")(
    lambda c, lr: optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay))
OPTIMIZERS.register("adam")(lambda c, lr: optax.adam(lr, b1=c.b1, b2=c.b2, eps=c.eps))
# LongPO's released command uses HF `--optim rmsprop`, i.e. torch RMSprop: eps added outside the square
# root (optax's default adds it inside); its decay is optim.b2 (torch's default alpha is 0.99).
OPTIMIZERS.register("rmsprop")(lambda c, lr: optax.rmsprop(lr, decay=c.b2, eps=c.eps, eps_in_sqrt=False))
OPTIMIZERS.register("sgd")(lambda c, lr: optax.sgd(lr))


def learning_rate_schedule(lr: float, total_steps: int, *, schedule: str, warmup_ratio: float,
                           final_lr_ratio: float):
    """Warmup (warmup_ratio of total, as the papers' HF scripts) then cosine/linear/constant."""
    warmup = int(round(warmup_ratio * total_steps))
    decay_steps = max(total_steps - warmup, 1)
    decays = {
        "cosine": lambda: optax.cosine_decay_schedule(lr, decay_steps, alpha=final_lr_ratio),
        "linear": lambda: optax.linear_schedule(lr, lr * final_lr_ratio, decay_steps),
        "constant": lambda: optax.constant_schedule(lr),
    }
    if schedule not in decays:
        raise ValueError(f"unknown lr schedule {schedule!r}; use {sorted(decays)}")
    if warmup == 0:
        return decays[schedule]()
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decays[schedule]()], [warmup])


def _clipped(tx: optax.GradientTransformation, grad_clip: float) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(grad_clip), tx) if grad_clip else tx


def make_optimizer(c: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Gradient clipping + the `optim` block's named optimizer on its warmup/decay schedule."""
    lr = learning_rate_schedule(c.lr, total_steps, schedule=c.schedule, warmup_ratio=c.warmup_ratio,
                                final_lr_ratio=c.final_lr_ratio)
    return _clipped(OPTIMIZERS.get(c.name)(c, lr), c.grad_clip)


def sft_optimizer(w: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The supervised phase's recipe (every warm start): Adam, linear warmup, cosine decay to 5% of lr.

    w is an SFT block (config_lib._sft_optim knobs: steps, lr, warmup_ratio, b2, grad_clip).
    """
    lr = learning_rate_schedule(w.lr, w.steps, schedule="cosine", warmup_ratio=w.warmup_ratio, final_lr_ratio=0.05)
    return _clipped(optax.adam(lr, b1=0.9, b2=w.b2, eps=1e-8), w.grad_clip)
