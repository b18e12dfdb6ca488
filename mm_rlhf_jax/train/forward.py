"""Model forwards over preference batches with an explicit pair axis.

A preference batch holds tokens [B, 2, T] (chosen, rejected). The two
sequences share their image/video, so the vision tower runs once per example
and its features are reused by both; the language model then runs on the
flattened [B * 2, T] sequences, returning hidden states (never [B, T, V]
logits) from which log-probs are taken with kernels.token_logprobs.

`pair_logps` scores only response tokens: their hidden states are gathered
before the LM head, into the smallest of a few static sizes (T/8, T/4, T/2)
that holds every row's response, picked at run time with lax.switch (the full
sequence is the last branch), so any batch stays exact.
"""

import jax
import jax.numpy as jnp

from mm_rlhf_jax import kernels
from mm_rlhf_jax.losses.logprobs import masked_sum, shifted_token_logprobs
from mm_rlhf_jax.models.heads import ModelWithHeads
from mm_rlhf_jax.models.vlm import LlavaOnevision

# Batch keys that carry vision inputs (see data.batch).
VISION_KEYS = ("pixel_values", "image_sizes", "pixel_values_videos")


def trunk_of(module):
    return module.trunk if isinstance(module, ModelWithHeads) else module


def is_multimodal(module) -> bool:
    return isinstance(trunk_of(module), LlavaOnevision)


def vision_features(module, params, batch, repeats: int):
    """Vision features of each example, repeated `repeats` times along the batch (or None)."""
    if not is_multimodal(module) or not any(k in batch for k in VISION_KEYS):
        return None
    sizes = batch.get("image_sizes")
    if sizes is not None and "has_image" in batch:
        # (0, 0) marks "no image" for the model's anyres layout.
        sizes = jnp.where(batch["has_image"][:, None], sizes, 0)
    videos = batch.get("pixel_values_videos")
    encode = lambda m, *a: trunk_of(m).encode_vision(*a)
    feats = module.apply({"params": params}, batch.get("pixel_values"), sizes, videos, method=encode)
    return jax.tree.map(lambda x: jnp.repeat(x, repeats, axis=0), feats)


def forward_pairs(module, params, batch, **kwargs):
    """Runs `module` on the [B * 2, T] chosen/rejected sequences; returns its output object."""
    b, n, t = batch["input_ids"].shape
    feats = vision_features(module, params, batch, n)
    if feats is not None:
        kwargs["vision_features"] = feats
    return module.apply({"params": params}, batch["input_ids"].reshape(b * n, t),
                        attention_mask=batch["attention_mask"].reshape(b * n, t), compute_logits=False, **kwargs)


def gather_sizes(t: int) -> tuple[int, ...]:
    """Static response-gather sizes tried for sequences of length t (multiples of 8, < t - 1)."""
    sizes = sorted({-(-(t // f) // 8) * 8 for f in (8, 4, 2)})
    return tuple(n for n in sizes if 0 < n < t - 1)


def _gathered_logps(hidden, w, ids, weights, n: int, temperature: float, impl: str):
    """sum_t weights[:, t] * log p(ids[:, t]) f32[N] over the <= n nonzero weights of each row (col 0 is 0)."""
    scored = weights != 0
    idx = jax.vmap(lambda m: jnp.nonzero(m, size=n, fill_value=0)[0])(scored)  # [N, n] token positions
    valid = jnp.arange(n)[None] < jnp.sum(scored, -1, keepdims=True)
    h = jnp.take_along_axis(hidden, jnp.maximum(idx - 1, 0)[..., None], axis=1)  # [N, n, E], read at t - 1
    lp = kernels.token_logprobs(h, w, jnp.take_along_axis(ids, idx, axis=1), temperature=temperature, impl=impl)
    return jnp.sum(jnp.where(valid, lp * jnp.take_along_axis(weights, idx, axis=1), 0.0), -1)


def pair_logps(module, params, batch, *, hidden=None, temperature: float = 1.0, impl: str = "auto"):
    """Summed response log-probs and response token counts, both f32[B, 2].

    Token t's log-prob is read from position t - 1 (loss_mask[..., t] = 1 marks
    a response token t; position 0 has no prediction and contributes 0). Only
    the marked tokens go through the LM head (see the module docstring).
    """
    b, n, t = batch["input_ids"].shape
    if hidden is None:
        hidden = forward_pairs(module, params, batch).hidden_states
    w = module.lm_head_weight(params)
    ids = jnp.asarray(batch["input_ids"]).reshape(b * n, t)
    mask = jnp.asarray(batch["loss_mask"]).reshape(b * n, t)
    counts = jnp.sum(mask.astype(jnp.float32), -1)
    # Tokens are weighted by the mask's value, as masked_sum does (position 0 is never scored).
    weights = mask.astype(jnp.float32).at[:, 0].set(0.0)

    def full(hidden, w):
        return masked_sum(shifted_token_logprobs(hidden, w, ids, temperature=temperature, impl=impl), weights)[0]

    sizes = gather_sizes(t)
    if not sizes:
        sums = full(hidden, w)
    else:
        branches = [lambda hh, ww, k=k: _gathered_logps(hh, ww, ids, weights, k, temperature, impl) for k in sizes]
        longest = jnp.max(jnp.sum(weights != 0, -1))
        branch = jnp.searchsorted(jnp.asarray(sizes), longest)  # first size >= longest; len(sizes): full
        sums = jax.lax.switch(branch, branches + [full], hidden, w)
    return sums.reshape(b, n), counts.reshape(b, n)
