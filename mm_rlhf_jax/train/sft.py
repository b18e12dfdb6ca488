"""The one supervised phase (SFT): token-mean NLL of response tokens, one optimizer recipe, one phase.

Every warm start runs through `run`: the tiny MM-DPO / reward-model trunks (the
stand-in for the paper's SFT'd LLaVA-OV), the PPO and Align-Pro policies, the
tiny GenRM judge and Align-Pro's tiny frozen model (the demonstrations RL needs
a starting point for), and LongPO's short-context model pi_S. Paper-scale
presets start from a checkpoint instead (`steps = 0`).

    params = sft.run(ctx.path("warm_start"), ctx, module, params, batches, w, trainable=...)

Batches carry an explicit pair axis (data.batch): input_ids / attention_mask /
loss_mask [B, n, T], plus pixel arrays for multimodal data; only the first
sequence of each row (the chosen response) is fitted. Front-ends:

  ArrayBatches(sequence_arrays(seqs, ...))   token sequences with loss masks built by the caller
                                              (text demonstrations: text_demos; LongPO: its renderer)
  best_responses(source, top_k)               the top-ranked responses of a pair file, through the
                                              grain pair pipeline (images and videos included)

Loss: -sum(log p(response tokens)) / (number of response tokens), through
forward.pair_logps (only response positions reach the LM head). Optimizer:
train.optim.sft_optimizer (Adam, warmup, cosine to 5%). The phase keeps its
checkpoints in its folder, so a re-run restores a finished warm start.
`top_k = 2` fits the two best-ranked responses of each query: the reference
then gives both answer styles real probability, so DPO's implicit reward can
separate them (with top_k = 1 the second-best answer starts far below the
reference's favourite and every pair that prefers it lifts its log-ratio above
the best's).
"""

import logging
from typing import Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np

from mm_rlhf_jax.data import pairs as pairs_lib, pipeline
from mm_rlhf_jax.data.sources import RecordPairSource
from mm_rlhf_jax.data.tokenize import encode_turns
from mm_rlhf_jax.sharding import placement
from mm_rlhf_jax.train import forward, pair_data, phase, reference_cache, state as state_lib
from mm_rlhf_jax.train.optim import sft_optimizer

# Batch keys with the pair axis (see data.batch); the SFT loss keeps index 0 (chosen).
PAIR_KEYS = ("input_ids", "attention_mask", "loss_mask")


def sft_counts(batch) -> dict:
    """The global normaliser: response tokens of the chosen sequences of the whole batch."""
    return {"tokens": jnp.sum(jnp.asarray(batch["loss_mask"])[:, 0].astype(jnp.float32))}


def sft_terms(module, params, batch, counts):
    """(loss, metrics): token-mean NLL of the first (chosen) sequence of each row, over counts["tokens"]."""
    chosen = {k: (v[:, :1] if k in PAIR_KEYS else v) for k, v in batch.items()}
    logps, tokens = forward.pair_logps(module, params, chosen)
    loss = -jnp.sum(logps) / jnp.maximum(counts["tokens"], 1.0)
    return loss, {"train/loss": loss, "sft/tokens": jnp.sum(tokens)}


def sft_step(state, batch, *, module, tx, mask, microbatches: int = 1):
    return state_lib.minimize(lambda p, b, n: sft_terms(module, p, b, n), state, batch, tx, mask,
                              counts_fn=sft_counts, microbatches=microbatches)


def run(directory: str, ctx: phase.RunContext, module, params, batches, w: ml_collections.ConfigDict, *,
        trainable: tuple[str, ...] = (".*",)):
    """Fits `params` for w.steps on `batches` (a checkpointable iterator of host batches); returns the params.

    w: an SFT block (config_lib: steps, lr, warmup_ratio, b2, grad_clip, seed, log_every).
    """
    logging.info("supervised phase: %d steps -> %s", w.steps, directory)
    step = phase.params_step(module, sft_step, sft_optimizer(w), trainable=trainable, mesh=ctx.mesh, rules=ctx.rules)
    result = phase.train_params(directory, ctx, step, lambda: params, batches, seed=w.seed, steps=w.steps,
                                log_every=w.log_every, checkpoint_every=max(w.steps // 4, 1))
    return result.state.params


# ------------------------------------------------------------------------------------------- front-ends


def sequence_arrays(seqs: Sequence[tuple[Sequence[int], Sequence[float]]], pad_id: int,
                    max_length: int) -> dict[str, np.ndarray]:
    """input_ids / attention_mask int32[N, 1, T], loss_mask f32[N, 1, T] (right-padded) from (ids, loss mask)."""
    n = len(seqs)
    ids = np.full((n, 1, max_length), pad_id, np.int32)
    att, loss = np.zeros((n, 1, max_length), np.int32), np.zeros((n, 1, max_length), np.float32)
    for i, (seq, m) in enumerate(seqs):
        if len(seq) > max_length:
            raise ValueError(f"demonstration {i} has {len(seq)} tokens > max_length={max_length}")
        if np.sum(m) < 1:
            raise ValueError(f"demonstration {i} has no response token within max_length={max_length}")
        ids[i, 0, :len(seq)], att[i, 0, :len(seq)], loss[i, 0, :len(seq)] = seq, 1, m
    return {"input_ids": ids, "attention_mask": att, "loss_mask": loss}


def text_demos(tokenizer, conversations: Sequence[tuple[str, str]], max_length: int) -> dict[str, np.ndarray]:
    """sequence_arrays of (user, assistant) text demonstrations through the chat template."""
    seqs = []
    for i, (user, assistant) in enumerate(conversations):
        seq, m = encode_turns(tokenizer, user, assistant, max_length=max_length, media=None)
        if m.sum() < 1:
            raise ValueError(f"demonstration {i} ({user[:60]!r}) has no response token within "
                             f"max_length={max_length}")
        seqs.append((seq, m))
    return sequence_arrays(seqs, int(tokenizer.pad_token_id), max_length)


class ArrayBatches:
    """Seeded random batches of in-memory arrays; the state is the next batch index (checkpointable).

    batch_size is the global batch; shard = (index, count) gives this process
    its rows of it (placement.host_slot(...).shard): every process draws the
    same global rows, so N processes see the batches one process would.
    """

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int, *,
                 shard: tuple[int, int] = (0, 1)):
        index, count = shard
        if batch_size % count:
            raise ValueError(f"batch size {batch_size} does not split into {count} host slots")
        self.arrays, self.batch_size, self.seed, self.index = arrays, batch_size, seed, 0
        rows = batch_size // count
        self._rows = slice(index * rows, (index + 1) * rows)
        self.n = len(next(iter(arrays.values())))

    @classmethod
    def for_mesh(cls, arrays: dict[str, np.ndarray], batch_size: int, seed: int, mesh) -> "ArrayBatches":
        """This process's rows of global batches of batch_size on `mesh`."""
        return cls(arrays, batch_size, seed, shard=placement.host_slot(batch_size, mesh).shard)

    def __next__(self):
        rows = np.random.default_rng([self.seed, self.index]).integers(self.n, size=self.batch_size)[self._rows]
        self.index += 1
        return {k: v[rows] for k, v in self.arrays.items()}

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = int(state["index"])


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


def on_pairs(ctx: phase.RunContext, module, params, source, encoder_cfg, w: ml_collections.ConfigDict, *,
             batch_size: int, num_workers: int, trainable: tuple[str, ...]):
    """The warm start on the best-ranked responses of a pair source (a no-op when w.steps == 0).

    w: a pair warm-start block (top_k; batch_size 0 = `batch_size`, the data block's).
    """
    if not w.steps:
        return params
    best = best_responses(source, w.top_k)
    batches = pipeline.make_iterator(best, encoder_cfg, pair_data.train_pipeline(
        w.batch_size or batch_size, ctx.mesh, seed=w.seed, num_workers=num_workers))
    logging.info("warm start: %d best responses", len(best))
    return run(ctx.path("warm_start"), ctx, module, params, batches, w, trainable=trainable)


def pair_identity(w: ml_collections.ConfigDict, trainable: str, train_file: str) -> dict:
    """What a warm start on a pair file adds to the reference identity (the reference cache key).

    The warm-started weights depend on the training pairs, so their file's
    content hash is part of the key.
    """
    if not w.steps:
        return {}
    return {"warm_start": w.to_dict(), "trainable": trainable, "train_pairs": reference_cache.file_digest(train_file)}
