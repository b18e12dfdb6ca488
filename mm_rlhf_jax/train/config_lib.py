"""Shared config blocks for configs/*.py (every knob declared here, with a comment)."""

import ml_collections

from mm_rlhf_jax.train import data_setup, model_factory, warm_start


def mesh_block(**sizes) -> ml_collections.ConfigDict:
    d = dict(data=1, fsdp=-1, tensor=1, sequence=1)  # -1: all remaining devices
    d.update(sizes)
    return ml_collections.ConfigDict(d)


def optim_block(**overrides) -> ml_collections.ConfigDict:
    d = dict(
        name="adamw",  # adamw | adam | rmsprop | sgd
        lr=1e-6,
        schedule="cosine",  # cosine | linear | constant, after warmup
        warmup_ratio=0.1,  # fraction of steps with linear warmup (the papers' HF scripts)
        final_lr_ratio=0.0,
        weight_decay=0.0,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        grad_clip=1.0,  # global-norm clip (0 = off)
    )
    d.update(overrides)
    return ml_collections.ConfigDict(d)


def train_block(**overrides) -> ml_collections.ConfigDict:
    d = dict(steps=100, log_every=10, eval_every=0, checkpoint_every=0, max_checkpoints=2)
    d.update(overrides)
    return ml_collections.ConfigDict(d)


def eval_block(**overrides) -> ml_collections.ConfigDict:
    d = dict(
        generation=True,  # greedy answers on held-out queries (needs data.heldout_queries or synthetic data)
        num_queries=64,
        max_new_tokens=16,
        answer_checker="synthetic",  # an evals.generation.ANSWER_CHECKERS name
    )
    d.update(overrides)
    return ml_collections.ConfigDict(d)


def base(algorithm: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.algorithm = algorithm
    c.seed = 0
    c.mesh = mesh_block()
    c.model = model_factory.model_block()
    c.data = data_setup.data_block()
    c.optim = optim_block()
    c.train = train_block()
    c.warm_start = warm_start.warm_start_block()
    return c
