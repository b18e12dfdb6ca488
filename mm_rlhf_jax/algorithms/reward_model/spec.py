"""The reward model's train step exactly as run() builds it, and its abstract inputs (for aot.py)."""

import functools

import jax

from mm_rlhf_jax.algorithms.reward_model import step as step_lib
from mm_rlhf_jax.models.heads import ModelWithHeads, RewardHead
from mm_rlhf_jax.train import batch_spec, model_factory, phase
from mm_rlhf_jax.train.optim import make_optimizer

MODES = {"critique": "reward", "scalar": "reward_scalar"}  # reward.mode -> encoder kind


def build_module(config, *, allow_known: bool = False):
    """(ModelWithHeads(trunk, RewardHead), identity) from the model and reward blocks."""
    trunk, identity = model_factory.build(config.model, config.seed, allow_known=allow_known)
    text = getattr(trunk.config, "text", trunk.config)
    head = RewardHead(text.hidden_size, dropout_rate=config.reward.head_dropout, dtype=text.dtype,
                      param_dtype=text.param_dtype, initializer_range=text.initializer_range)
    return ModelWithHeads(trunk=trunk, reward_head=head), identity


def train_step(config, module, mesh, rules) -> phase.ParamsStep:
    t = config.train
    step = functools.partial(step_lib.train_step, c=config.reward, critique=config.reward.mode == "critique",
                             microbatches=t.microbatches)
    return phase.params_step(module, step, make_optimizer(config.optim, t.steps),
                             trainable=model_factory.TRAINABLE.get(config.model.trainable), mesh=mesh, rules=rules)


def one_microbatch(config, step: str) -> dict:
    """Overrides that make `step` process one microbatch of the configured step (aot cost probes)."""
    k = config.train.microbatches
    return {"train.microbatches": 1, "data.batch_size": config.data.batch_size // k} if step == "train" else {}


def compile_inputs(config, mesh, rules, step: str):
    """(jitted fn, abstract args) of `step` ("train" | "reference": scoring) from the config alone."""
    module, _ = build_module(config, allow_known=True)
    d = config.data
    kind = MODES[config.reward.mode]
    if step == "train":
        s = train_step(config, module, mesh, rules)
        return s.jit, (s.abstract_state, batch_spec.preference_batch(d, module.trunk.config, mesh, kind=kind,
                                                                      with_ref=False))
    if step == "reference":
        batch = batch_spec.pair_batch(d, module.trunk.config, mesh, batch_size=d.eval_batch_size, kind=kind,
                                      with_ref=False)
        return (jax.jit(functools.partial(step_lib.score_step, module=module)),
                (phase.abstract_params(module, mesh, rules), batch))
    raise ValueError(f"reward_model has no {step!r} step; use train or reference")
