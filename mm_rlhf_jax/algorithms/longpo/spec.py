"""LongPO's steps exactly as run() builds them (round 0), and their abstract inputs (for aot.py)."""

import functools

import jax
import numpy as np

from mm_rlhf_jax.algorithms.longpo import step as step_lib
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.sharding import placement
from mm_rlhf_jax.train import model_factory, phase
from mm_rlhf_jax.train.optim import make_optimizer


def base_architecture(config, *, allow_known: bool = False) -> DecoderConfig:
    """The starting model's architecture (its own RoPE theta, default attention, no remat)."""
    cfg = model_factory.architecture(config.model, allow_known=allow_known)
    if not isinstance(cfg, DecoderConfig):
        m = config.model
        raise ValueError(f"LongPO trains a text decoder; model {m.init_from or 'tiny'} is {type(cfg).__name__} "
                         "(set model.tiny.multimodal=False or point init_from at a Qwen2/Llama/Mistral checkpoint)")
    return cfg.replace(remat="none")


def module_for(config, base: DecoderConfig, theta: float, *, train: bool = False):
    """Decoder with RoPE theta; train=True uses longpo.attention_impl and the model block's remat."""
    cfg = base.replace(rope_theta=theta)
    if train:
        cfg = cfg.replace(attention_impl=config.longpo.attention_impl, remat=config.model.remat)
    return hf.build_model(cfg)


def policy_theta(thetas, r: int, previous: float) -> float:
    """Round r's policy RoPE theta (longpo.policy_rope_theta; 0 = keep the previous model's)."""
    thetas = tuple(thetas)
    theta = thetas[min(r, len(thetas) - 1)] if thetas else 0.0
    return float(theta) if theta else previous


def train_step(config, module, mesh, rules) -> phase.ParamsStep:
    c, t = config.longpo, config.train
    zigzag = step_lib.zigzag_shards(c.attention_impl, mesh.shape["sequence"])
    step = functools.partial(step_lib.train_step, c=c, zigzag_shards=zigzag, microbatches=t.microbatches)
    return phase.params_step(module, step, make_optimizer(config.optim, t.steps),
                             trainable=model_factory.TRAINABLE.get(config.model.trainable), mesh=mesh, rules=rules)


def sample_batch(config, mesh, batch_size: int, *, with_ref: bool = True) -> dict:
    """An abstract LongPO sample batch (data/longpo/samples.py): packed [B, T] + short references [B, 2, K, L]."""
    b, t = batch_size, config.data.max_length
    k, length = config.generation.turns_per_doc, config.data.max_short_length
    shapes = {name: ((b, t), np.int32) for name in ("input_ids", "positions", "segment_ids", "branch_ids")}
    shapes.update({name: ((b, t), np.float32) for name in ("chosen_mask", "rejected_mask", "nll_mask")})
    shapes.update(prompt_last=((b,), np.int32), rejected_first=((b,), np.int32),
                  ref_input_ids=((b, 2, k, length), np.int32), ref_attention_mask=((b, 2, k, length), np.int32),
                  ref_loss_mask=((b, 2, k, length), np.float32))
    if with_ref:
        shapes["ref_logps"] = ((b, 2), np.float32)
    return {name: jax.ShapeDtypeStruct(s, dt, sharding=placement.row_sharding(mesh, len(s), b))
            for name, (s, dt) in shapes.items()}


def one_microbatch(config, step: str) -> dict:
    """Overrides that make `step` process one microbatch of the configured step (aot cost probes)."""
    k = config.train.microbatches
    return {"train.microbatches": 1, "data.batch_size": config.data.batch_size // k} if step == "train" else {}


def compile_inputs(config, mesh, rules, step: str):
    """(jitted fn, abstract args) of `step` ("train" | "reference") from the config alone (round 0)."""
    base = base_architecture(config, allow_known=True)
    if step == "train":
        policy = module_for(config, base, policy_theta(config.longpo.policy_rope_theta, 0, base.rope_theta),
                            train=True)
        s = train_step(config, policy, mesh, rules)
        return s.jit, (s.abstract_state, sample_batch(config, mesh, config.data.batch_size))
    if step == "reference":
        reference = module_for(config, base, base.rope_theta)
        name = config.longpo.reference
        batch = step_lib.reference_inputs(name, sample_batch(config, mesh, config.longpo.reference_batch_size,
                                                             with_ref=False))
        return (jax.jit(functools.partial(step_lib.reference_fn(name)[0], reference)),
                (phase.abstract_params(reference, mesh, rules), batch))
    raise ValueError(f"longpo has no {step!r} step; use train or reference")
