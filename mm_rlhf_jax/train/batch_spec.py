"""Abstract (ShapeDtypeStruct) preference batches of a config: what a step is compiled for ahead of time.

The shapes are the data layer's (data/batch.py), sized from the config alone: B
from the batch size, T = data.max_length, P anyres tiles (data.max_patches, or
the model's largest grid + the base tile), F = data.num_frames; the mesh's
batch axes split the rows (placement.row_sharding). Packed batches
(`packed_batch`, data.packing): R = data.pack_rows rows of data.pack_length
tokens with data.pairs_per_row slots, and the largest tile bucket
(data.pack_tiles), the shape every process uses in a multi-process run.
`preference_batch` picks the layout the config trains with.
"""

import jax
import numpy as np

from mm_rlhf_jax.data.batch import PACKED_REWARD_KINDS, PACKED_SPEC
from mm_rlhf_jax.models.vlm import LlavaOnevisionConfig
from mm_rlhf_jax.sharding import placement


def _max_patches(d, model_config) -> int:
    tile = model_config.vision.image_size
    return d.max_patches or 1 + max((h // tile) * (w // tile) for h, w in model_config.image_grid_pinpoints)


def pair_batch(d, model_config, mesh, *, batch_size: int, kind: str = "preference",
               with_ref: bool = True) -> dict[str, jax.ShapeDtypeStruct]:
    """A global pair batch [B, 2, T] (+ media) for data block d; kind "reward" adds has_critique."""
    b, t = batch_size, d.max_length
    shapes = {"input_ids": ((b, 2, t), np.int32), "attention_mask": ((b, 2, t), np.int32),
              "loss_mask": ((b, 2, t), np.float32), "delta": ((b,), np.float32), "ls_factor": ((b,), np.float32), "is_tie": ((b,), np.bool_),
              "query_id": ((b,), np.int32), "category": ((b,), np.int32)}
    if with_ref:
        shapes["ref_logps"] = ((b, 2), np.float32)
    if kind.startswith("reward"):
        shapes["has_critique"] = ((b,), np.bool_)
    if isinstance(model_config, LlavaOnevisionConfig):
        tile = model_config.vision.image_size
        p = _max_patches(d, model_config)
        shapes.update(pixel_values=((b, p, 3, tile, tile), np.float32), image_sizes=((b, 2), np.int32),
                      has_image=((b,), np.bool_))
        if d.video:
            shapes.update(pixel_values_videos=((b, d.num_frames, 3, tile, tile), np.float32),
                          has_video=((b,), np.bool_))
    return {k: jax.ShapeDtypeStruct(s, dt, sharding=placement.row_sharding(mesh, len(s), b))
            for k, (s, dt) in shapes.items()}


def packed_batch(d, model_config, mesh, *, rows: int, kind: str = "preference") -> dict[str, jax.ShapeDtypeStruct]:
    """A global packed pair batch of `rows` rows for data block d (the largest tile bucket; ref_logps is part
    of every packed batch, zeros until the reference cache fills it)."""
    r, t, k = rows, d.pack_length or 2 * d.max_length, d.pairs_per_row
    keys = ["input_ids", "positions", "segment_ids", "branch_ids", "pred_pos", "chosen_mask", "rejected_mask",
            "seq_last", "pair_valid", "pair_index", "delta", "ls_factor", "ref_logps", "is_tie", "query_id", "category"]
    keys += ["has_critique"] if kind in PACKED_REWARD_KINDS else []
    sizes = {"R": r, "T": t, "K": k}
    if isinstance(model_config, LlavaOnevisionConfig):
        per_media = max(_max_patches(d, model_config), d.num_frames if d.video else 0)
        sizes.update(N=d.pack_tiles or k * per_media, S=model_config.vision.image_size)
        keys += ["pixel_values", "pixel_affine", "image_sizes", "media_offset", "media_tiles", "media_ordinal"]
        keys += ["has_video"] if d.video else []
    out = {}
    for key in keys:
        dtype, spec = PACKED_SPEC[key]
        shape = tuple(sizes[s] if isinstance(s, str) else s for s in spec)
        out[key] = jax.ShapeDtypeStruct(shape, dtype, sharding=placement.row_sharding(mesh, len(shape), r))
    return out


def preference_batch(d, model_config, mesh, *, kind: str = "preference", with_ref: bool = True,
                     evaluation: bool = False) -> dict[str, jax.ShapeDtypeStruct]:
    """The batch a config's pair steps run on: packed rows when data.packing, else [B, 2, T] pairs
    (evaluation: the reference / eval pass's batch size)."""
    if d.packing:
        return packed_batch(d, model_config, mesh, rows=d.pack_rows, kind=kind)
    return pair_batch(d, model_config, mesh, batch_size=d.eval_batch_size if evaluation else d.batch_size,
                      kind=kind, with_ref=with_ref)
