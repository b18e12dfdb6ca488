"""Supervised warm start on the best-ranked responses of a pair file (multimodal SFT).

MM-RLHF starts MM-DPO and the reward model from an instruction-tuned VLM
(LLaVA-OV-7B), never from random weights. The `tiny` presets have no such
checkpoint, so they first fit the top-ranked answer of every training query:
that teaches the tiny vision tower to read the images, and the warm-started
model then serves as both the initial policy and the DPO reference, as the SFT
model does in the paper. Paper-scale presets set `warm_start.steps = 0`.

The run lives in `<workdir>/warm_start` with its own orbax checkpoints, so a
re-run restores a finished warm start instead of retraining it.

    params = run_warm_start(directory, config, module, params, source, encoder_cfg, mesh, rules)

Loss: token-mean NLL over the response tokens of the best responses (the
chosen sequence only: the pair axis is cut to its first entry, so the
rejected sequence is never run). `warm_start.top_k = 2` fits the two
best-ranked responses of each query instead: the reference then gives both
answer styles real probability, so DPO's implicit reward can separate them
(with top_k = 1 the second-best answer starts far below the reference's
favourite and every pair that prefers it lifts its log-ratio above the best's).
"""

import logging

import jax.numpy as jnp
import ml_collections

from mm_rlhf_jax.data import pairs as pairs_lib, pipeline
from mm_rlhf_jax.data.sources import RecordPairSource
from mm_rlhf_jax.train import data_setup, forward, model_factory, reference_cache, setup, state as state_lib
from mm_rlhf_jax.train.optim import make_optimizer

# Batch keys with the pair axis (see data.batch); the warm start keeps index 0 (chosen).
PAIR_KEYS = ("input_ids", "attention_mask", "loss_mask")


def warm_start_block(**overrides) -> ml_collections.ConfigDict:
    d = dict(
        steps=0,  # 0 = start from model.init_from / the random init directly
        lr=2e-3,
        warmup_ratio=0.05,
        b2=0.98,  # Adam b2: 0.999 adapts too slowly for a few hundred steps
        batch_size=0,  # 0 = data.batch_size
        top_k=1,  # fit the responses ranked in the top k of their query (1 = the best; ties share a rank)
    )
    d.update(overrides)
    return ml_collections.ConfigDict(d)


def best_responses(source, top_k: int = 1) -> RecordPairSource:
    """One element per (query, response ranked in the top k): responses beaten by fewer than k others.

    Ranks are data.pairs.response_ranks (competition ranking), so tied best
    responses (both rank 0; their tie pair is absent from DPO data) are both kept.
    """
    if top_k < 1:
        raise ValueError(f"warm_start.top_k must be >= 1, got {top_k}")
    records = source.records  # a copy per access
    ranks = pairs_lib.response_ranks(records)
    seen, keep = set(), []
    for r in records:
        if ranks[(r.id, r.chosen)] >= top_k or (r.id, r.chosen) in seen:
            continue
        seen.add((r.id, r.chosen))
        keep.append(r)
    if not keep:
        raise ValueError(f"{source!r}: no responses ranked in the top {top_k} found")
    return RecordPairSource(keep, source.media_root)


def sft_terms(module, params, batch):
    """(loss, metrics): token-mean NLL of the chosen responses."""
    chosen = {k: (v[:, :1] if k in PAIR_KEYS else v) for k, v in batch.items()}
    logps, counts = forward.pair_logps(module, params, chosen)
    loss = -jnp.sum(logps) / jnp.maximum(jnp.sum(counts), 1.0)
    return loss, {"train/loss": loss, "sft/tokens": jnp.sum(counts)}


def sft_step(state, batch, *, module, tx, mask):
    return state_lib.minimize(lambda p, b: sft_terms(module, p, b), state, batch, tx, mask)


def run_warm_start(directory: str, config: ml_collections.ConfigDict, module, params, source, encoder_cfg,
                   mesh, rules):
    """Trains params for config.warm_start.steps on source's best responses; returns the new params."""
    c = config.warm_start
    from mm_rlhf_jax.train.config_lib import optim_block

    tx = make_optimizer(optim_block(name="adam", lr=c.lr, warmup_ratio=c.warmup_ratio, final_lr_ratio=0.05,
                                    b2=c.b2, grad_clip=config.optim.grad_clip), c.steps)
    best = best_responses(source, c.top_k)
    batch_size = data_setup.per_host_batch(c.batch_size or config.data.batch_size, mesh)
    data_iter = pipeline.make_iterator(best, encoder_cfg, pipeline.PipelineConfig(
        batch_size=batch_size, seed=config.data.seed + 1, num_epochs=None, num_workers=config.data.num_workers))
    logging.info("warm start: %d best responses, %d steps -> %s", len(best), c.steps, directory)
    params, _ = setup.run_phase(directory, module, params, sft_step, data_iter, tx,
                                trainable=model_factory.TRAINABLE.get(config.model.trainable), mesh=mesh, rules=rules,
                                steps=c.steps, seed=config.seed + 2, log_every=config.train.log_every,
                                checkpoint_every=max(c.steps // 4, 1))
    return params


def identity(config: ml_collections.ConfigDict, train_file: str) -> dict:
    """What the warm start adds to the reference identity (the reference cache key).

    The warm-started weights depend on the training pairs, so their file's
    content hash is part of the key.
    """
    if not config.warm_start.steps:
        return {}
    return {"warm_start": config.warm_start.to_dict(), "data_seed": config.data.seed,
            "trainable": config.model.trainable, "train_pairs": reference_cache.file_digest(train_file)}
