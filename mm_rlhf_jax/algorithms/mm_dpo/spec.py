"""The MM-DPO steps exactly as run() builds them, and their abstract inputs (for aot.py)."""

import functools

import jax
import ml_collections

from mm_rlhf_jax.algorithms.mm_dpo import step as step_lib
from mm_rlhf_jax.train import batch_spec, model_factory, phase
from mm_rlhf_jax.train.optim import make_optimizer


def train_step(config: ml_collections.ConfigDict, module, mesh, rules) -> phase.ParamsStep:
    t = config.train
    return phase.params_step(module, functools.partial(step_lib.train_step, c=config.dpo, microbatches=t.microbatches),
                             make_optimizer(config.optim, t.steps),
                             trainable=model_factory.TRAINABLE.get(config.model.trainable), mesh=mesh, rules=rules)


def reference_step(module):
    """The reference / held-out log-prob pass: params, batch -> f32[B, 2]."""
    return jax.jit(functools.partial(step_lib.policy_logps_step, module=module))


def one_microbatch(config, step: str) -> dict:
    """Overrides that make `step` process one microbatch of the configured step (aot cost probes)."""
    k = config.train.microbatches
    return {"train.microbatches": 1, "data.batch_size": config.data.batch_size // k} if step == "train" else {}


def compile_inputs(config, mesh, rules, step: str):
    """(jitted fn, abstract args) of `step` ("train" | "reference") from the config alone."""
    module, _ = model_factory.build(config.model, config.seed, allow_known=True)
    d = config.data
    if step == "train":
        s = train_step(config, module, mesh, rules)
        return s.jit, (s.abstract_state, batch_spec.preference_batch(d, module.config, mesh))
    if step == "reference":
        params = phase.abstract_params(module, mesh, rules)
        batch = batch_spec.preference_batch(d, module.config, mesh, with_ref=False, evaluation=True)
        return reference_step(module), (params, batch)
    raise ValueError(f"mm_dpo has no {step!r} step; use train or reference")
