"""MM-DPO's beta modes: what each computes, the per-pair field it reads, and the check that the data has it.

  mode       beta_i                                     per-pair field  source
  constant   beta                                       -               plain DPO
  paper      beta * (1 + w * (1 - exp(-k * delta_i)))    delta           paper §4.2 (delta clamped at 0)
  ls_factor  max(beta * (1 + w * ls_factor_i), 1e-3)    ls_factor       the release's per-pair path
  released   one batch-level beta from the policy's     -               the release's executed path
             implicit-reward margins                                    (implicit_beta=True)

`ls_factor` is the release's `dpo_loss` with implicit_beta=False (trl/trainer/dpo_trainer.py: `beta_used =
beta * (1 + ls_factor_weight * ls_factor)`, clamped at 1e-3), `w` playing `ls_factor_weight` (the released
script sets 0.1: --config.dpo.w=0.1). To run the paper's formula through it, write
ls_factor = 1 - exp(-k * delta) per pair (papers.md §1(g).1).

No silent method change: the release's loader reads a missing `ls_factor` as 1.0, and a NaN `delta` would
otherwise fall back to beta_ori. Here a mode whose field is missing on any training pair is an error
naming the file and the first such line (`check_pairs`), before anything is computed.
"""

from typing import Callable, Iterable

import jax.numpy as jnp

from mm_rlhf_jax.data.errors import DataError
from mm_rlhf_jax.losses import preference
from mm_rlhf_jax.registry import Registry

LS_FACTOR_MIN_BETA = 1e-3  # the release's clamp

# name -> f(pairs: {"delta": f32[B], "ls_factor": f32[B]}, logits f32[B], rng, *, beta, w, k) -> scalar or f32[B]
BETA_MODES: Registry[Callable] = Registry("beta mode")
BETA_MODES.register("constant")(lambda pairs, logits, rng, *, beta, w, k: jnp.float32(beta))
BETA_MODES.register("paper")(
    lambda pairs, logits, rng, *, beta, w, k: preference.dynamic_beta(pairs["delta"], beta=beta, w=w, k=k))
BETA_MODES.register("ls_factor")(
    lambda pairs, logits, rng, *, beta, w, k: jnp.maximum(
        beta * (1.0 + w * jnp.asarray(pairs["ls_factor"], jnp.float32)), LS_FACTOR_MIN_BETA))
BETA_MODES.register("released")(
    lambda pairs, logits, rng, *, beta, w, k: preference.released_beta(logits, beta=beta, w=w, key=rng))

# The record field each mode reads, and how a user gets it when the data lacks it.
REQUIRED_FIELD = {"paper": "delta", "ls_factor": "ls_factor"}
_HOW_TO_GET = {
    "delta": "score the pairs with the critique reward model (a configs/reward_model.py run with its "
             "score.input option set to this file writes delta next to every pair), or choose another beta mode (--config.dpo.beta_mode=constant | ls_factor | "
             "released)",
    "ls_factor": "write a per-pair ls_factor (e.g. 1 - exp(-k * delta) for the paper's formula), or choose "
                 "another beta mode (--config.dpo.beta_mode=constant | paper | released)",
}
DESCRIPTIONS = {
    "constant": "constant: beta for every pair (plain DPO)",
    "paper": "paper: beta * (1 + w * (1 - exp(-k * max(delta, 0)))) from each pair's reward-model margin delta",
    "ls_factor": "ls_factor: max(beta * (1 + w * ls_factor), 1e-3) from each pair's ls_factor (the release's "
                 "implicit_beta=False path)",
    "released": "released: one batch-level beta from the implicit-reward margins (the release's implicit_beta=True)",
}


def check_pairs(mode: str, records: Iterable) -> int:
    """Raises DataError at the first pair (file:line) lacking the field `mode` reads; returns the pairs checked."""
    BETA_MODES.get(mode)  # an unknown mode names the registered ones
    field = REQUIRED_FIELD.get(mode)
    n = 0
    for n, rec in enumerate(records, 1):
        if field is not None and getattr(rec, field) is None:
            raise DataError(rec.where, field, f"dpo.beta_mode={mode!r} needs {field!r} on every training pair and "
                                              f"this is the first pair without it; {_HOW_TO_GET[field]}")
    return n


def describe(c) -> dict:
    """What ran, for eval.json: the mode, its formula, and its constants (c: the config's dpo block)."""
    return {"beta_mode": c.beta_mode, "beta_path": DESCRIPTIONS[c.beta_mode], "beta": c.beta, "beta_w": c.w,
            "beta_k": c.k}
