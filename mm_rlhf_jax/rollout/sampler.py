"""Jitted KV-cache sampler: one prefill over left-padded prompts, then a decode loop inside jit.

Prompts are left-padded so every row's last prompt token sits at the same
cache slot and all rows decode in lockstep; each row still gets its own RoPE
positions (0 at its first real token). Rows stop independently at a stop
token; the loop exits early once every row has stopped.

What keeps a decode step cheap (bench/rollout.py):
- the whole loop is `lax.while_loop`s inside one jit: no per-token host work;
- the cache is a loop carry updated with dynamic_update_slice, one buffer per
  layer, so XLA updates it in place (no copy of the cache per token);
- decode attention reads only the filled part of the cache: the loop runs in a
  few static chunks and the cache grows by one chunk between them (one copy per
  chunk), so chunk c attends over prompt + (c + 1) * chunk slots, not the
  whole prompt + max_new_tokens;
- the model returns next-token logits only (compute_logits="last"): the prefill
  never builds [B, P, V] logits, a step only f32[B, V];
- num_samples > 1 prefills each prompt once and repeats its cache rows for the
  group (GRPO / RLOO groups, Pre-PPO scoring, best-of-N).

Works for any model whose apply takes (input_ids, positions=, segment_ids=,
cache=, **extra) and returns an object with .logits and .cache (the Decoder,
the LLaVA-OV VLM; multimodal inputs go in `prefill_kwargs`). A cache that is
not a models.outputs.KVCache decodes in one chunk over its full length.

Randomness: token t of row r samples with fold_in(fold_in(rng, r), t) (row_keys),
so a row's tokens depend on its row index and step only, not on which other
rows share its batch or decode slot: the continuous-batching sampler
(rollout/continuous.py), which moves rows between slots, samples exactly what
this one does.
"""

from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mm_rlhf_jax.models.outputs import KVCache
from mm_rlhf_jax.rollout.strategies import SamplingConfig, select_rows

# Decode chunks per call (for max_new_tokens >= 2 * MIN_CHUNK): more chunks attend over less empty
# cache but compile the step body once per chunk.
NUM_CHUNKS = 4
MIN_CHUNK = 16


@flax.struct.dataclass
class SampleOutput:
    """tokens int32[B, N]; logprobs f32[B, N] (sampling distribution); mask {0,1}[B, N] on
    generated tokens up to and including the stop token; lengths int32[B]."""

    tokens: jax.Array
    logprobs: jax.Array
    mask: jax.Array
    lengths: jax.Array


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, length: int | None = None):
    """Host helper: (ids int32[B, L], mask int32[B, L]) with each sequence right-aligned."""
    length = length or max(len(s) for s in sequences)
    ids = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), np.int32)
    for i, s in enumerate(sequences):
        if len(s) > length:
            raise ValueError(f"prompt {i} has {len(s)} tokens, more than the prompt length {length}")
        if len(s):
            ids[i, length - len(s):] = s
            mask[i, length - len(s):] = 1
    return ids, mask


def row_keys(rng, rows, step):
    """PRNG keys uint32[B, 2] of token `step` (int32[] or int32[B]) of output rows `rows` int32[B]."""
    steps = jnp.broadcast_to(jnp.asarray(step, jnp.int32), rows.shape)
    return jax.vmap(lambda r, t: jax.random.fold_in(jax.random.fold_in(rng, r), t))(rows, steps)


def finish(toks, logps, stop_ids, steps_run) -> SampleOutput:
    """SampleOutput from the written tokens int32[B, N] / log-probs f32[B, N]: each row's tokens up to and
    including its first stop token, and only the first steps_run (later slots were never filled)."""
    is_stop = jnp.isin(toks, stop_ids)
    after_stop = jnp.cumsum(is_stop, axis=-1) - is_stop > 0
    mask = (~after_stop & (jnp.arange(toks.shape[1])[None] < steps_run)).astype(jnp.int32)
    return SampleOutput(tokens=toks * mask, logprobs=logps * mask, mask=mask, lengths=mask.sum(-1))


def decode_chunks(max_new_tokens: int, num_chunks: int = NUM_CHUNKS) -> list[int]:
    """Static end steps of the decode chunks, e.g. 128 -> [32, 64, 96, 128]; short runs: one chunk."""
    n = max(1, min(num_chunks, max_new_tokens // MIN_CHUNK))
    size = -(-max_new_tokens // n)
    return [min(max_new_tokens, size * (c + 1)) for c in range(n)]


def sample(
    apply_fn: Callable[..., Any],
    params,
    prompt_ids,
    prompt_mask,
    init_cache: Callable[[int, int], Any],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    rng,
    sampling: SamplingConfig = SamplingConfig(),
    prefill_kwargs: dict | None = None,
    num_samples: int = 1,
    num_chunks: int = NUM_CHUNKS,
) -> SampleOutput:
    """Samples up to max_new_tokens continuations (call under jax.jit with static settings).

    Args:
      apply_fn: (params, input_ids, *, positions, segment_ids, cache, **kw) -> output with .logits/.cache
        (logits [B, T, V] or [B, 1, V]: only the last position is used).
      prompt_ids, prompt_mask: int32[B, P], left-padded (see left_pad).
      init_cache: (batch, max_len) -> an empty KV cache.
      stop_ids: token ids that end a row (e.g. eos, <|im_end|>).
      num_samples: k rows per prompt (consecutive): the prompts are prefilled once, their cache
        repeated k times; same outputs as passing each prompt k times (same rng).
      num_chunks: static decode chunks (see decode_chunks); 1 attends over the whole cache every step.
    Returns:
      SampleOutput with B * num_samples rows.
    """
    b, p = prompt_ids.shape
    rows = b * num_samples
    stop_ids = jnp.asarray(stop_ids, jnp.int32)
    ends = decode_chunks(max_new_tokens, num_chunks)
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=-1) - 1, 0).astype(jnp.int32)
    cache = init_cache(b, p + ends[0])
    if not isinstance(cache, KVCache):  # a cache we cannot grow: one chunk over its full length
        ends, cache = [max_new_tokens], init_cache(b, p + max_new_tokens)
    out = apply_fn(params, prompt_ids, positions=positions, segment_ids=prompt_mask.astype(jnp.int32), cache=cache,
                   **(prefill_kwargs or {}))
    logits, cache, next_pos = out.logits[:, -1], out.cache, positions[:, -1] + 1
    if num_samples > 1:  # share each prompt's prefill with its group: rows [i*k, (i+1)*k) are prompt i
        logits, next_pos = jnp.repeat(logits, num_samples, 0), jnp.repeat(next_pos, num_samples, 0)
        cache = cache.repeat_rows(num_samples) if isinstance(cache, KVCache) else jax.tree.map(
            lambda x: jnp.repeat(x, num_samples, 0) if jnp.ndim(x) else x, cache)

    # Step 0 samples from the prefill's logits; step i >= 1 runs the model on token i - 1, then samples.
    row_ids = jnp.arange(rows, dtype=jnp.int32)
    token, logp = select_rows(logits, row_keys(rng, row_ids, 0), sampling)
    toks = jnp.zeros((rows, max_new_tokens), jnp.int32).at[:, 0].set(token)
    logps = jnp.zeros((rows, max_new_tokens), jnp.float32).at[:, 0].set(logp)
    done = jnp.isin(token, stop_ids)

    def body(carry):
        i, cache, token, pos, done, toks, logps = carry
        step = apply_fn(params, token[:, None], positions=pos[:, None], segment_ids=jnp.ones((rows, 1), jnp.int32),
                        cache=cache)
        token, logp = select_rows(step.logits[:, -1], row_keys(rng, row_ids, i), sampling)
        token = jnp.where(done, 0, token)
        toks = jax.lax.dynamic_update_slice(toks, token[:, None], (0, i))
        logps = jax.lax.dynamic_update_slice(logps, jnp.where(done, 0.0, logp)[:, None], (0, i))
        return i + 1, step.cache, token, pos + 1, done | jnp.isin(token, stop_ids), toks, logps

    carry = (jnp.ones((), jnp.int32), cache, token, next_pos, done, toks, logps)
    for c, end in enumerate(ends):
        if c:
            carry = carry[:1] + (carry[1].grow(end - ends[c - 1]),) + carry[2:]
        cond = lambda carry, end=end: (carry[0] < end) & ~jnp.all(carry[4])  # noqa: E731
        carry = jax.lax.while_loop(cond, body, carry)
    return finish(carry[5], carry[6], stop_ids, carry[0])
