"""Token-selection strategies: logits f32[B, V] -> (token int32[B], log-prob f32[B]).

The returned log-prob is under the distribution actually sampled from
(temperature applied, top-k / top-p renormalised), which is what PPO's
importance ratio needs for the behaviour policy; greedy reports the
temperature-1 log-prob of the argmax.
"""

import dataclasses

import jax
import jax.numpy as jnp

from mm_rlhf_jax.registry import Registry

STRATEGIES: Registry = Registry("sampling strategy")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    strategy: str = "greedy"  # greedy | temperature | top_k | top_p
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def _pick(logits, key, temperature):
    logp = jax.nn.log_softmax(logits / temperature, axis=-1)
    token = jax.random.categorical(key, logp, axis=-1)
    return token.astype(jnp.int32), jnp.take_along_axis(logp, token[:, None], -1)[:, 0]


@STRATEGIES.register("greedy")
def greedy(logits, key, cfg: SamplingConfig):
    del key, cfg
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return token, jnp.take_along_axis(logp, token[:, None], -1)[:, 0]


@STRATEGIES.register("temperature")
def temperature(logits, key, cfg: SamplingConfig):
    return _pick(logits, key, cfg.temperature)


@STRATEGIES.register("top_k")
def top_k(logits, key, cfg: SamplingConfig):
    if cfg.top_k <= 0:
        raise ValueError(f"top_k sampling needs top_k > 0, got {cfg.top_k}")
    kth = jax.lax.top_k(logits, cfg.top_k)[0][:, -1:]
    return _pick(jnp.where(logits < kth, -jnp.inf, logits), key, cfg.temperature)


@STRATEGIES.register("top_p")
def top_p(logits, key, cfg: SamplingConfig):
    """Nucleus sampling: the smallest set of tokens whose probability reaches top_p."""
    scaled = logits / cfg.temperature
    sorted_logits = jnp.sort(scaled, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep a token if the mass strictly before it is < top_p (the top token is always kept).
    before = jnp.cumsum(probs, axis=-1) - probs
    n_keep = jnp.sum(before < cfg.top_p, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(sorted_logits, n_keep - 1, axis=-1)
    return _pick(jnp.where(scaled < threshold, -jnp.inf, scaled), key, 1.0)


def select(logits, key, cfg: SamplingConfig):
    return STRATEGIES.get(cfg.strategy)(logits.astype(jnp.float32), key, cfg)


def select_rows(logits, keys, cfg: SamplingConfig):
    """logits f32[B, V], keys uint32[B, 2] -> (token int32[B], log-prob f32[B]): row b samples with keys[b]
    alone, so its token does not depend on the other rows of the batch."""
    token, logp = jax.vmap(lambda x, k: select(x[None], k, cfg))(logits, keys)
    return token[:, 0], logp[:, 0]
