"""Continuous batching: a fixed number of decode slots, a finished row's slot refilled with a waiting row.

    out = sample_continuous(apply_fn, params, prompt_ids, prompt_mask, init_cache, slots=32,
                            max_new_tokens=128, stop_ids=[eos], rng=key, num_samples=8)

Same inputs and the same SampleOutput as sampler.sample (rows [i*k, (i+1)*k) are
prompt i's samples, same per-row RNG streams), but only `slots` rows decode at a
time: when a row stops, the next waiting row takes its slot at the next step. A
batch of mixed response lengths then costs about (sum of lengths) / slots decode
steps instead of (rows / slots) x (longest length).

Why inside the jitted loop rather than host steps between chunks of decode steps:
the refill is a copy of one prefilled prompt into the slot's cache (no model call),
so it is cheap enough to do at every step, and a host round trip per chunk would
leave finished slots idle until the chunk ends and cost a device->host sync per
chunk. Keeping it in one jit also keeps the Generator's sampler contract (one
jitted (params, batch, rng, fold) -> SampleOutput call that PPO AOT-compiles).

How, without changing the model (all rows still write the cache in lockstep at
one shared `index`, as in sampler.sample):
- every prompt is prefilled once up front into a prompt cache [B, ..., P] (the
  same prefill as sampler.sample; a group of num_samples rows shares it), and
  step 0 of every row is sampled from the prefill logits there;
- a slot's row occupies cache slots [start, start + P + t - 1) (its left-padded
  prompt, then its t - 1 decoded inputs); a refilled row's prompt is copied to
  [index - P, index), over its finished predecessor, with its own segment id
  (row + 1), so the attention mask hides whatever else that cache row holds;
- when the shared index reaches the end of the cache, every row is rolled to the
  front by the earliest live start (KVCache.roll_left); the cache holds
  P + max_new_tokens - 2 + ROOM slots, so that is at least ROOM slots and happens
  at most once per ROOM steps.
Unlike sampler.sample every decode step attends over the whole (fixed-length)
cache, not only its filled part.
"""

from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from mm_rlhf_jax.models.outputs import KVCache
from mm_rlhf_jax.rollout.sampler import SampleOutput, finish, row_keys
from mm_rlhf_jax.rollout.strategies import SamplingConfig, select_rows


def room(max_new_tokens: int) -> int:
    """Cache slots beyond P + max_new_tokens - 2: how far the index runs between two roll_left copies."""
    return max(16, max_new_tokens // 4)


@flax.struct.dataclass
class Slots:
    """The decode loop's carry. S slots decode R = rows outputs; row R means "idle".

    cache: KVCache with S rows; its index is the slot every row writes next.
    row, step, token, pos, start: int32[S]: the output row a slot decodes, its tokens so far (the next one
      is token `step`), its last token (the next model input) and that token's position, and the cache slot
      where its prompt begins. live: bool[S].
    head: int32[]: queue entries handed to slots so far.
    toks, logps: int32 / f32[R, N]: every row's tokens and log-probs.
    """

    cache: Any
    row: jax.Array
    step: jax.Array
    token: jax.Array
    pos: jax.Array
    start: jax.Array
    live: jax.Array
    head: jax.Array
    toks: jax.Array
    logps: jax.Array


@flax.struct.dataclass
class Prompts:
    """The prefilled prompts, read-only in the loop. cache: KVCache [B, ..., P] (B prompts); next_pos int32[B]:
    the position of each prompt's first generated token; queue int32[R]: the rows that still need decode
    steps (rows first in row order), waiting int32[]: how many; group: rows per prompt."""

    cache: Any
    next_pos: jax.Array
    queue: jax.Array
    waiting: jax.Array
    group: int = flax.struct.field(pytree_node=False)


def refill(s: Slots, pr: Prompts) -> Slots:
    """Hands the next waiting rows (queue order) to the idle slots (slot order); their prompts are copied
    into the cache at [index - P, index)."""
    free = ~s.live
    rank = jnp.cumsum(free) - 1
    take = free & (s.head + rank < pr.waiting)
    new_row = pr.queue[jnp.clip(s.head + rank, 0, pr.queue.shape[0] - 1)]
    p = pr.cache.max_len
    at = s.cache.index - p
    targets = jnp.nonzero(take, size=take.shape[0], fill_value=0)[0]

    def put(j, cache):
        slot = targets[j]
        return cache.put_row(pr.cache, new_row[slot] // pr.group, slot, at, new_row[slot] + 1)

    cache = jax.lax.fori_loop(0, take.sum(), put, s.cache)
    pick = lambda new, old: jnp.where(take, new, old)  # noqa: E731
    return s.replace(cache=cache, row=pick(new_row, s.row), step=pick(1, s.step),
                     token=pick(s.toks[new_row, 0], s.token), pos=pick(pr.next_pos[new_row // pr.group], s.pos),
                     start=pick(at, s.start), live=s.live | take, head=s.head + take.sum())


def make_room(s: Slots) -> Slots:
    """Before a step that would write past the cache's end: roll every row to the front by the earliest live
    start (>= ROOM slots, see the module docstring)."""
    shift = jnp.min(jnp.where(s.live, s.start, s.cache.max_len))
    return s.replace(cache=s.cache.roll_left(shift), start=s.start - shift)


def decode_step(apply_fn, params, s: Slots, rng, *, stop_ids, sampling: SamplingConfig) -> Slots:
    """One model call on every slot's last token; live slots record the sampled token."""
    rows, n = s.toks.shape
    seg = jnp.where(s.live, s.row + 1, 0)  # idle slots write padding: no row can see their entries
    out = apply_fn(params, s.token[:, None], positions=s.pos[:, None], segment_ids=seg[:, None], cache=s.cache)
    token, logp = select_rows(out.logits[:, -1], row_keys(rng, jnp.minimum(s.row, rows - 1), s.step), sampling)
    dest = jnp.where(s.live, s.row, rows)  # idle slots write out of range: dropped
    toks = s.toks.at[dest, s.step].set(token, mode="drop")
    logps = s.logps.at[dest, s.step].set(logp, mode="drop")
    done = jnp.isin(token, stop_ids) | (s.step + 1 >= n)
    return s.replace(cache=out.cache, step=s.step + 1, token=token, pos=s.pos + 1, live=s.live & ~done,
                     toks=toks, logps=logps)


def prefill(apply_fn, params, prompt_ids, prompt_mask, init_cache, prefill_kwargs):
    """(next-token logits f32[B, V], prompt cache [B, ..., P], next positions int32[B]) of the prompts."""
    b, p = prompt_ids.shape
    cache = init_cache(b, p)
    if not isinstance(cache, KVCache):
        raise ValueError(f"continuous batching moves rows between KVCache slots; this model's cache is a "
                         f"{type(cache).__name__}")
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=-1) - 1, 0).astype(jnp.int32)
    out = apply_fn(params, prompt_ids, positions=positions, segment_ids=prompt_mask.astype(jnp.int32), cache=cache,
                   **(prefill_kwargs or {}))
    return out.logits[:, -1], out.cache, positions[:, -1] + 1


def sample_continuous(
    apply_fn: Callable[..., Any],
    params,
    prompt_ids,
    prompt_mask,
    init_cache: Callable[[int, int], Any],
    *,
    slots: int,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    rng,
    sampling: SamplingConfig = SamplingConfig(),
    prefill_kwargs: dict | None = None,
    num_samples: int = 1,
) -> SampleOutput:
    """sampler.sample's outputs (B * num_samples rows) with `slots` rows decoding at a time (under jax.jit).

    prompt_ids, prompt_mask: int32[B, P], left-padded. init_cache must build a KVCache.
    """
    stop_ids = jnp.asarray(stop_ids, jnp.int32)
    logits, cache, next_pos = prefill(apply_fn, params, prompt_ids, prompt_mask, init_cache, prefill_kwargs)
    b, p = prompt_ids.shape
    rows = b * num_samples
    row_ids = jnp.arange(rows, dtype=jnp.int32)
    # Step 0 of every row from its prompt's prefill logits ([R, V], as sampler.sample's repeat), no slot needed.
    token, logp = select_rows(jnp.repeat(logits, num_samples, 0), row_keys(rng, row_ids, 0), sampling)
    toks = jnp.zeros((rows, max_new_tokens), jnp.int32).at[:, 0].set(token)
    logps = jnp.zeros((rows, max_new_tokens), jnp.float32).at[:, 0].set(logp)
    needs_more = ~jnp.isin(token, stop_ids) & (max_new_tokens > 1)
    pr = Prompts(cache=cache, next_pos=next_pos, queue=jnp.argsort(~needs_more, stable=True).astype(jnp.int32),
                 waiting=needs_more.sum(), group=num_samples)
    idle = jnp.full((slots,), rows, jnp.int32)
    zeros = jnp.zeros((slots,), jnp.int32)
    cache = init_cache(slots, p + max_new_tokens - 2 + room(max_new_tokens)).replace(index=jnp.int32(p))
    s = Slots(cache=cache, row=idle, step=zeros, token=zeros, pos=zeros, start=zeros,
              live=jnp.zeros((slots,), bool), head=jnp.zeros((), jnp.int32), toks=toks, logps=logps)

    def body(s: Slots) -> Slots:
        s = jax.lax.cond(jnp.any(~s.live) & (s.head < pr.waiting), refill, lambda s, _: s, s, pr)
        s = jax.lax.cond(s.cache.index >= s.cache.max_len, make_room, lambda s: s, s)
        return decode_step(apply_fn, params, s, rng, stop_ids=stop_ids, sampling=sampling)

    s = jax.lax.while_loop(lambda s: jnp.any(s.live) | (s.head < pr.waiting), body, s)
    return finish(s.toks, s.logps, stop_ids, max_new_tokens)
