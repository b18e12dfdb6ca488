"""Media of packed rows: several pairs' images / videos per row, each token reading its own pair's media.

A packed row (data/batch.py, "packed pair batches") holds up to K pairs; pair
slot k's image tiles (base tile first, then the anyres grid) or video frames
are the tiles [media_offset[k], media_offset[k] + media_tiles[k]) of the row's
tile array. The vision tower runs once over every tile of the row; each <image>
token then gathers its bilinear sources from its own image's tiles (the anyres
layout of that image, `anyres.image_layout_jnp`, taken per token), each
<video> token its frame's pooled patch. Nothing here depends on the row's
other pairs, so a pair's embeddings equal its unpacked embeddings.

Pixels may come as uint8 with a per-row affine map (pixels * scale + shift per
channel, i.e. (x * rescale - mean) / std), so the host ships a quarter of the
f32 bytes and normalisation happens on the device.
"""

from typing import Any

import flax.struct
import jax.numpy as jnp

from mm_rlhf_jax.models import anyres


@flax.struct.dataclass
class PackedMedia:
    """The media arrays of packed rows (R rows, T tokens, K pair slots, N tiles per row).

    pixel_values:  uint8 or float[R, N, C, S, S] every tile of the row's media
    pixel_affine:  f32[R, 2, C] (scale, shift) applied to uint8 pixels; None for float pixels
    image_sizes:   int32[R, K, 2] original (H, W) of slot k's image; (0, 0) = no image
    media_offset:  int32[R, K] first tile of slot k's media in the row
    media_tiles:   int32[R, K] its tile (image) or frame (video) count
    media_index:   int32[R, T] the slot whose media token t reads (any value for other tokens)
    media_ordinal: int32[R, T] token t's index among its media's tokens
    with_video:    static: compute the pooled frame features (the batch has video slots)
    """

    pixel_values: Any
    pixel_affine: Any
    image_sizes: Any
    media_offset: Any
    media_tiles: Any
    media_index: Any
    media_ordinal: Any
    with_video: bool = flax.struct.field(pytree_node=False, default=False)


def decode_pixels(pixel_values, pixel_affine):
    """f32[R, N, C, S, S] normalised pixels (uint8 * scale + shift per channel, or float as given)."""
    if pixel_affine is None:
        if pixel_values.dtype == jnp.uint8:
            raise ValueError("uint8 pixel_values need pixel_affine (the per-channel scale and shift)")
        return pixel_values.astype(jnp.float32)
    a = jnp.asarray(pixel_affine, jnp.float32)[:, :, None, :, None, None]  # [R, 2, 1, C, 1, 1]
    return pixel_values.astype(jnp.float32) * a[:, 0] + a[:, 1]


def per_token(x, index):
    """x[R, K], index int[R, T] -> x[r, index[r, t]] of shape [R, T] (index clipped into range)."""
    return jnp.take_along_axis(x, jnp.clip(index, 0, x.shape[1] - 1), axis=1)


def image_sources(media: PackedMedia, pinpoints, tile_size: int, patches_per_side: int, max_tiles: int):
    """Per <image> token: idx int32[R, T, 4] into the row's tile features [tile * side^2 + patch],
    bilinear weights f32[R, T, 4], newline bool[R, T] (see anyres.image_token_sources)."""
    r, k = media.media_offset.shape
    layout = anyres.image_layout_jnp(media.image_sizes.reshape(r * k, 2), pinpoints, tile_size, patches_per_side,
                                     max_tiles)
    slot = media.media_index
    g = {name: per_token(v.reshape(r, k), slot) for name, v in layout.items()}
    idx, w, newline = anyres.token_sources(g, media.media_ordinal, patches_per_side)
    first = per_token(media.media_offset, slot) * patches_per_side**2
    return idx + first[..., None], w, newline


def video_sources(media: PackedMedia, pooled_side: int):
    """Per <video> token: idx int32[R, T] into the row's pooled tile features [tile * pooled^2 + patch],
    and newline bool[R, T] (the one trailing newline after a video's last frame)."""
    p2 = pooled_side**2
    slot, ordinal = media.media_index, media.media_ordinal
    frames = per_token(media.media_tiles, slot)
    newline = ordinal >= frames * p2
    idx = per_token(media.media_offset, slot) * p2 + jnp.minimum(ordinal, jnp.maximum(frames * p2 - 1, 0))
    return idx, newline
