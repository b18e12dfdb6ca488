"""PPO's jitted phases exactly as the trainer builds them, and their abstract inputs (for aot.py).

Also serves Align-Pro (PPO on a prompter): its steps are PPO's with the prompter as the actor.

  train      update_step: one minibatch update of actor (and critic), microbatched
  reference  experience_step: old / reference log-probs, values, advantages of a rollout batch
  rollout    the sampler (rollout.generate) in the sampling layout
"""

import types

import jax
import numpy as np

from mm_rlhf_jax.algorithms.ppo import trainer
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.rollout.generate import Generator
from mm_rlhf_jax.sharding import SAMPLING_RULES, placement, replicated
from mm_rlhf_jax.train import model_factory, phase


def _rows(mesh, shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=placement.row_sharding(mesh, len(shape)))


def one_microbatch(config, step: str) -> dict:
    """Overrides that make `step` process one microbatch of the configured step (aot cost probes)."""
    k = config.train.microbatches
    return {"train.microbatches": 1, "ppo.num_minibatches": config.ppo.num_minibatches * k} if step == "train" else {}


def step_tokens(config, step: str) -> int:
    """Tokens one call of `step` processes: the train step updates one minibatch of the experience."""
    p = config.ppo
    rows = p.prompts_per_step * p.samples_per_prompt
    return (rows // p.num_minibatches if step == "train" else rows) * (p.max_prompt_length + p.max_new_tokens)


def compile_inputs(config, mesh, rules, step: str):
    """(jitted fn, abstract args) of `step` ("train" | "reference" | "rollout") from the config alone."""
    p, seed = config.ppo, config.seed
    module, _ = model_factory.build(config.model, seed, allow_known=True)
    ctx = phase.RunContext(workdir="", mesh=mesh, rules=rules, writer=None)
    roles = trainer.build_roles(config, ctx, module, model_factory.TRAINABLE.get(config.model.trainable))
    n = p.prompts_per_step * p.samples_per_prompt
    prompts = {"prompt_ids": _rows(mesh, (n, p.max_prompt_length), np.int32),
               "prompt_mask": _rows(mesh, (n, p.max_prompt_length), np.int32)}
    rollout = {"tokens": _rows(mesh, (n, p.max_new_tokens), np.int32),
               "mask": _rows(mesh, (n, p.max_new_tokens), np.int32)}
    actor = phase.abstract_params(module, mesh, rules)
    critic = None if roles.critic is None else phase.abstract_params(roles.critic.module, mesh, rules)
    exp_args = (actor, actor, critic, prompts, rollout, _rows(mesh, (n,), np.float32))
    fn = trainer.experience_fn(p, roles)
    if step == "reference":
        return trainer.experience_jit(fn, mesh, *exp_args), exp_args
    if step == "train":
        exp, _ = jax.eval_shape(fn, *exp_args)
        exp = jax.tree.map(lambda x: _rows(mesh, x.shape, x.dtype), exp)
        idx = jax.ShapeDtypeStruct((n // p.num_minibatches,), np.int32, sharding=replicated(mesh))
        return (trainer.update_jit(p, roles, config.train.microbatches),
                (trainer.abstract_rl_state(roles, seed), exp, idx))
    if step == "rollout":
        # The sampler only needs the pad and stop ids of a tokenizer.
        stub = types.SimpleNamespace(eos_token_id=1, pad_token_id=0)
        gen = Generator(module, stub, mesh, max_new_tokens=p.max_new_tokens, batch_size=n,
                        sampling=trainer.sampling_config(p), prompt_length=p.max_prompt_length,
                        param_shardings=hf.param_shardings(module, mesh, SAMPLING_RULES),
                        slots=p.rollout_slots or None)
        sampling = phase.abstract_params(module, mesh, SAMPLING_RULES)
        key = jax.ShapeDtypeStruct((2,), np.uint32, sharding=replicated(mesh))
        fold = jax.ShapeDtypeStruct((), np.int32, sharding=replicated(mesh))
        g = p.samples_per_prompt
        if gen.shares_prefill(g):  # as RLTrainer.rollout: each prompt once, its prefill shared by its group
            unique = {k: _rows(mesh, (p.prompts_per_step, p.max_prompt_length), np.int32) for k in prompts}
            return gen.sample_fn(g), (sampling, unique, key, fold)
        return gen.sample_fn(1), (sampling, prompts, key, fold)
    raise ValueError(f"ppo has no {step!r} step; use train, reference or rollout")
