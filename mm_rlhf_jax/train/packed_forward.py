"""Model forwards over packed pair batches (data/batch.py "packed pair batches").

One pass over rows [R, T] scores every pair of the row: positions, segment
and branch ids go to the attention kernels, the media of every pair to the
VLM (models/packed_media.py), and the hidden states come back [R, T, E]
(never [R, T, V] logits). Token t is scored from the hidden state at
pred_pos[t]; as in forward.pair_logps only the scored tokens (chosen or
rejected mask nonzero) are gathered before the LM head, into the smallest of a
few static sizes that holds every row's scored tokens (lax.switch at run time;
the whole row is the last branch). Per-pair sums are reduced per slot with a
one-hot over the K slots of a row.
"""

import jax
import jax.numpy as jnp

from mm_rlhf_jax import kernels
from mm_rlhf_jax.models.packed_media import PackedMedia
from mm_rlhf_jax.train.forward import gather_sizes, is_multimodal, trunk_of


def packed_media(module, batch) -> PackedMedia | None:
    """The batch's media for the VLM (None for a text model or a text batch)."""
    if not is_multimodal(module) or "pixel_values" not in batch:
        return None
    return PackedMedia(pixel_values=batch["pixel_values"], pixel_affine=batch["pixel_affine"],
                       image_sizes=batch["image_sizes"], media_offset=batch["media_offset"],
                       media_tiles=batch["media_tiles"], media_index=jnp.maximum(batch["segment_ids"] - 1, 0),
                       media_ordinal=batch["media_ordinal"], with_video="has_video" in batch)


def check_module(module) -> None:
    """Packing reorders tokens within a row, which a sliding window (distance in row indices) would see."""
    trunk_config = trunk_of(module).config
    cfg = getattr(trunk_config, "text", trunk_config)  # a VLM's decoder, or the decoder itself
    if any(cfg.layer_window(i) is not None for i in range(cfg.num_layers)):
        raise ValueError("packed pair batches need full causal attention; this model has a sliding window "
                         "(use data.packing=False)")


def forward_packed(module, params, batch, **kwargs):
    """Runs `module` on the packed rows; returns its output object (hidden states [R, T, E])."""
    check_module(module)
    media = packed_media(module, batch)
    if media is not None:
        kwargs["packed_media"] = media
    return module.apply({"params": params}, batch["input_ids"], positions=batch["positions"],
                        segment_ids=batch["segment_ids"], branch_ids=batch["branch_ids"], compute_logits=False,
                        **kwargs)


def slot_sums(x, segment_ids, num_slots: int):
    """x f32[R, N] (tokens) with their segment_ids int[R, N] -> per-slot sums f32[R, K] (segment 0 dropped)."""
    onehot = (segment_ids[..., None] == jnp.arange(1, num_slots + 1)).astype(jnp.float32)
    return jnp.einsum("rn,rnk->rk", x.astype(jnp.float32), onehot)


def _scored(hidden, w, batch, idx, valid, temperature, impl):
    """(log-probs f32[R, n], chosen weights, rejected weights, segment ids) at token indices idx [R, n]."""
    take = lambda x: jnp.take_along_axis(x, idx, axis=1)  # noqa: E731
    h = jnp.take_along_axis(hidden, take(batch["pred_pos"])[..., None], axis=1)  # [R, n, E]: gather before the head
    lp = kernels.token_logprobs(h, w, take(batch["input_ids"]), temperature=temperature, impl=impl)
    v = valid.astype(jnp.float32)
    return jnp.where(valid, lp, 0.0), take(batch["chosen_mask"]) * v, take(batch["rejected_mask"]) * v, \
        take(batch["segment_ids"])


def pair_logps(module, params, batch, *, hidden=None, temperature: float = 1.0, impl: str = "auto"):
    """Summed response log-probs and response token counts per pair slot, both f32[R, K, 2] (chosen, rejected).

    Empty slots give 0. Only tokens with a nonzero mask reach the LM head.
    """
    if hidden is None:
        hidden = forward_packed(module, params, batch).hidden_states
    w = module.lm_head_weight(params)
    num_slots = batch["pair_valid"].shape[1]
    cm, rm = batch["chosen_mask"].astype(jnp.float32), batch["rejected_mask"].astype(jnp.float32)
    seg = batch["segment_ids"]
    scored = (cm != 0) | (rm != 0)

    def sums(lp, wc, wr, s):
        return jnp.stack([slot_sums(lp * wc, s, num_slots), slot_sums(lp * wr, s, num_slots)], axis=-1)

    def gathered(hidden, w, n):
        idx = jax.vmap(lambda m: jnp.nonzero(m, size=n, fill_value=0)[0])(scored)  # [R, n]
        valid = jnp.arange(n)[None] < jnp.sum(scored, -1, keepdims=True)
        return sums(*_scored(hidden, w, batch, idx, valid, temperature, impl))

    def full(hidden, w):
        idx = jnp.broadcast_to(jnp.arange(seg.shape[1]), seg.shape)
        return sums(*_scored(hidden, w, batch, idx, scored, temperature, impl))

    sizes = gather_sizes(seg.shape[1])
    if not sizes:
        out = full(hidden, w)
    else:
        branches = [lambda hh, ww, k=k: gathered(hh, ww, k) for k in sizes]
        branch = jnp.searchsorted(jnp.asarray(sizes), jnp.max(jnp.sum(scored, -1)))
        out = jax.lax.switch(branch, branches + [full], hidden, w)
    counts = jnp.stack([slot_sums(cm, seg, num_slots), slot_sums(rm, seg, num_slots)], axis=-1)
    return out, counts


def last_token_values(x, seq_last):
    """x [R, T, ...] at each slot's last chosen / rejected token: [R, K, 2, ...]."""
    r, k, _ = seq_last.shape
    idx = seq_last.reshape(r, k * 2)
    out = jnp.take_along_axis(x, idx.reshape((r, k * 2) + (1,) * (x.ndim - 2)), axis=1)
    return out.reshape((r, k, 2) + x.shape[2:])
