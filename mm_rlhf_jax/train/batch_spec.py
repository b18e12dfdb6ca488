"""Abstract (ShapeDtypeStruct) preference batches of a config: what a step is compiled for ahead of time.

The shapes are the data layer's (data/batch.py), sized from the config alone: B
from the batch size, T = data.max_length, P anyres tiles (data.max_patches, or
the model's largest grid + the base tile), F = data.num_frames; the mesh's
batch axes split the rows (placement.row_sharding).
"""

import jax
import numpy as np

from mm_rlhf_jax.models.vlm import LlavaOnevisionConfig
from mm_rlhf_jax.sharding import placement


def pair_batch(d, model_config, mesh, *, batch_size: int, kind: str = "preference",
               with_ref: bool = True) -> dict[str, jax.ShapeDtypeStruct]:
    """A global pair batch [B, 2, T] (+ media) for data block d; kind "reward" adds has_critique."""
    b, t = batch_size, d.max_length
    shapes = {"input_ids": ((b, 2, t), np.int32), "attention_mask": ((b, 2, t), np.int32),
              "loss_mask": ((b, 2, t), np.float32), "delta": ((b,), np.float32), "is_tie": ((b,), np.bool_),
              "query_id": ((b,), np.int32), "category": ((b,), np.int32)}
    if with_ref:
        shapes["ref_logps"] = ((b, 2), np.float32)
    if kind.startswith("reward"):
        shapes["has_critique"] = ((b,), np.bool_)
    if isinstance(model_config, LlavaOnevisionConfig):
        tile = model_config.vision.image_size
        p = d.max_patches or 1 + max((h // tile) * (w // tile) for h, w in model_config.image_grid_pinpoints)
        shapes.update(pixel_values=((b, p, 3, tile, tile), np.float32), image_sizes=((b, 2), np.int32),
                      has_image=((b,), np.bool_))
        if d.video:
            shapes.update(pixel_values_videos=((b, d.num_frames, 3, tile, tile), np.float32),
                          has_video=((b,), np.bool_))
    return {k: jax.ShapeDtypeStruct(s, dt, sharding=placement.row_sharding(mesh, len(s)))
            for k, (s, dt) in shapes.items()}
