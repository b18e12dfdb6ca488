"""Jitted KV-cache sampler: one prefill over left-padded prompts, then a decode loop inside jit.

Prompts are left-padded so every row's last prompt token sits at the same
cache slot and all rows decode in lockstep; each row still gets its own RoPE
positions (0 at its first real token). Rows stop independently at a stop
token; the loop exits early once every row has stopped.

Works for any model whose apply takes (input_ids, positions=, segment_ids=,
cache=, **extra) and returns an object with .logits and .cache (the Decoder,
the LLaVA-OV VLM; multimodal inputs go in `prefill_kwargs`).
"""

from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mm_rlhf_jax.rollout.strategies import SamplingConfig, select


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
) -> SampleOutput:
    """Samples up to max_new_tokens continuations (call under jax.jit with static settings).

    Args:
      apply_fn: (params, input_ids, *, positions, segment_ids, cache, **kw) -> output with .logits/.cache.
      prompt_ids, prompt_mask: int32[B, P], left-padded (see left_pad).
      init_cache: (batch, max_len) -> an empty KV cache.
      stop_ids: token ids that end a row (e.g. eos, <|im_end|>).
    """
    b, p = prompt_ids.shape
    stop_ids = jnp.asarray(stop_ids, jnp.int32)
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=-1) - 1, 0).astype(jnp.int32)
    out = apply_fn(params, prompt_ids, positions=positions, segment_ids=prompt_mask.astype(jnp.int32),
                   cache=init_cache(b, p + max_new_tokens), **(prefill_kwargs or {}))
    next_pos = positions[:, -1] + 1

    def body(carry):
        i, cache, logits, pos, done, key, toks, logps = carry
        key, sub = jax.random.split(key)
        token, logp = select(logits, sub, sampling)
        token = jnp.where(done, 0, token)
        toks = toks.at[:, i].set(token)
        logps = logps.at[:, i].set(jnp.where(done, 0.0, logp))
        stopped = done | jnp.isin(token, stop_ids)
        step = apply_fn(params, token[:, None], positions=pos[:, None],
                        segment_ids=jnp.ones((b, 1), jnp.int32), cache=cache)
        return (i + 1, step.cache, step.logits[:, -1], pos + 1, stopped, key, toks, logps), done

    def cond(carry):
        i, done = carry[0], carry[4]
        return (i < max_new_tokens) & ~jnp.all(done)

    init = (jnp.zeros((), jnp.int32), out.cache, out.logits[:, -1], next_pos, jnp.zeros((b,), bool), rng,
            jnp.zeros((b, max_new_tokens), jnp.int32), jnp.zeros((b, max_new_tokens), jnp.float32))
    final = jax.lax.while_loop(cond, lambda c: body(c)[0], init)
    toks, logps = final[6], final[7]
    is_stop = jnp.isin(toks, stop_ids)
    # Tokens up to and including the first stop token are generated; later slots were never filled.
    after_stop = jnp.cumsum(is_stop, axis=-1) - is_stop > 0
    steps_run = final[0]
    mask = (~after_stop & (jnp.arange(max_new_tokens)[None] < steps_run)).astype(jnp.int32)
    return SampleOutput(tokens=toks * mask, logprobs=logps * mask, mask=mask, lengths=mask.sum(-1))
