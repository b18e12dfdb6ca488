"""Model forwards over preference batches with an explicit pair axis.

A preference batch holds tokens [B, 2, T] (chosen, rejected). The two
sequences share their image/video, so the vision tower runs once per example
and its features are reused by both; the language model then runs on the
flattened [B * 2, T] sequences, returning hidden states (never [B, T, V]
logits) from which log-probs are taken with kernels.token_logprobs.
"""

import jax
import jax.numpy as jnp

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


def pair_logps(module, params, batch, *, hidden=None, temperature: float = 1.0, impl: str = "auto"):
    """Summed response log-probs and response token counts, both f32[B, 2].

    Token t's log-prob is read from position t - 1 (loss_mask[..., t] = 1 marks
    a response token t).
    """
    b, n, t = batch["input_ids"].shape
    if hidden is None:
        hidden = forward_pairs(module, params, batch).hidden_states
    token_lp = shifted_token_logprobs(hidden, module.lm_head_weight(params), batch["input_ids"].reshape(b * n, t),
                                      temperature=temperature, impl=impl)
    sums, counts = masked_sum(token_lp, batch["loss_mask"].reshape(b * n, t))
    return sums.reshape(b, n), counts.reshape(b, n)
