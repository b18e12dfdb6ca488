"""LLaVA-OneVision "anyres" geometry, shared by the image processor and the model.

Pure host-side integer arithmetic (numpy/python), matching transformers'
LlavaOnevision processor and model: which tile grid an image gets, how many
visual tokens it expands to after unpadding (and the anyres_max_N downscale),
and how many tokens a video gets after 2x2 pooling.

Sizes are (height, width) throughout. The second half of the file computes
the same geometry in-graph (jnp, from traced image sizes) so the VLM can map
every <image> token to its source features under jit with static shapes.
"""

import functools
import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np

Size = tuple[int, int]


def select_best_resolution(original_size: Size, pinpoints: Sequence[Sequence[int]]) -> Size:
    """The pinpoint resolution that keeps the most image detail, then wastes the least area."""
    orig_h, orig_w = original_size
    best, best_effective, best_wasted = None, 0, float("inf")
    for h, w in pinpoints:
        scale = min(w / orig_w, h / orig_h)
        down_w, down_h = int(orig_w * scale), int(orig_h * scale)
        effective = min(down_w * down_h, orig_w * orig_h)
        wasted = w * h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (int(h), int(w)), effective, wasted
    if best is None:
        raise ValueError(f"no grid pinpoint fits image size {original_size}; pinpoints={list(pinpoints)}")
    return best


def grid_shape(image_size: Size, pinpoints, tile_size: int) -> Size:
    """Number of (rows, cols) of tile_size x tile_size crops for an image."""
    h, w = select_best_resolution(image_size, pinpoints)
    return h // tile_size, w // tile_size


def num_tiles(image_size: Size, pinpoints, tile_size: int) -> int:
    """Crops fed to the vision tower for one image: the base (resized) image + the grid."""
    rows, cols = grid_shape(image_size, pinpoints, tile_size)
    return rows * cols + 1


def unpadded_shape(image_size: Size, grid: Size, patches_per_side: int) -> tuple[Size, int]:
    """Feature-map shape after removing letterbox padding.

    Args:
      image_size: original (height, width) of the image.
      grid: (rows, cols) of tiles.
      patches_per_side: vision patches per tile side (image_size // patch_size).
    Returns:
      ((height, width) of the unpadded feature map, padding removed on each side
      of the padded dimension).
    """
    orig_h, orig_w = image_size
    cur_h, cur_w = grid[0] * patches_per_side, grid[1] * patches_per_side
    if orig_w / orig_h > cur_w / cur_h:
        new_h = int(round(orig_h * (cur_w / orig_w), 7))
        pad = (cur_h - new_h) // 2
        return (cur_h - 2 * pad, cur_w), pad
    new_w = int(round(orig_w * (cur_h / orig_h), 7))
    pad = (cur_w - new_w) // 2
    return (cur_h, cur_w - 2 * pad), pad


def max_tiles_from_aspect_ratio(vision_aspect_ratio: str) -> int:
    """'anyres_max_9' -> 9."""
    prefix = "anyres_max_"
    if not vision_aspect_ratio.startswith(prefix):
        raise ValueError(f"unsupported vision_aspect_ratio {vision_aspect_ratio!r}; expected 'anyres_max_N'")
    return int(vision_aspect_ratio[len(prefix):])


def downscaled_shape(shape: Size, patches_per_side: int, max_tiles: int) -> Size:
    """anyres_max_N: bilinear downscale when the unpadded map exceeds ~N tiles (ratio > 1.1)."""
    h, w = shape
    ratio = math.sqrt(h * w / (max_tiles * patches_per_side**2))
    if ratio > 1.1:
        return int(h // ratio), int(w // ratio)
    return h, w


def num_image_tokens(image_size: Size, pinpoints, tile_size: int, patch_size: int, vision_aspect_ratio: str) -> int:
    """<image> tokens one image expands to: base tile + unpadded grid + one newline per row."""
    side = tile_size // patch_size
    grid = grid_shape(image_size, pinpoints, tile_size)
    shape, _ = unpadded_shape(image_size, grid, side)
    h, w = downscaled_shape(shape, side, max_tiles_from_aspect_ratio(vision_aspect_ratio))
    return side * side + h * w + h


def num_video_tokens(num_frames: int, tile_size: int, patch_size: int) -> int:
    """<video> tokens: each frame pooled 2x2 (ceil), plus one trailing newline."""
    pooled = math.ceil((tile_size // patch_size) / 2)
    return num_frames * pooled * pooled + 1


# ---------------------------------------------------------------------------
# Bilinear resampling with torch's `interpolate(mode="bilinear",
# align_corners=False)` semantics, and the same geometry computed in-graph.
# ---------------------------------------------------------------------------


def bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's source indices and weights for resizing one axis in_size -> out_size.

    Returns (i0, i1, lambda1), each [out_size]: output o = (1 - l1) * x[i0] + l1 * x[i1].
    Computed in f32 like torch's CPU kernel (scale = in / out, src = scale * (o + 0.5) - 0.5,
    clamped at 0; an identity resize copies).
    """
    o = np.arange(out_size)
    if in_size == out_size:
        return o, o, np.zeros(out_size, np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum(scale * (o.astype(np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, lam


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """f32[out_size, in_size] matrix applying `bilinear_taps` (for static resizes, e.g. video pooling)."""
    i0, i1, lam = bilinear_taps(in_size, out_size)
    m = np.zeros((out_size, in_size), np.float32)
    np.add.at(m, (np.arange(out_size), i0), 1 - lam)
    np.add.at(m, (np.arange(out_size), i1), lam)
    return m


@functools.lru_cache(maxsize=16)
def downscale_table(max_h: int, max_w: int, patches_per_side: int, max_tiles: int) -> np.ndarray:
    """int32[max_h + 1, max_w + 1, 2]: `downscaled_shape` of every feature-map shape.

    A static lookup so the in-graph path reproduces transformers' float64 sqrt and
    floor-division exactly (f32 in-graph arithmetic could round differently).
    """
    table = np.zeros((max_h + 1, max_w + 1, 2), np.int32)
    for h in range(1, max_h + 1):
        for w in range(1, max_w + 1):
            table[h, w] = downscaled_shape((h, w), patches_per_side, max_tiles)
    return table


def best_resolution_jnp(image_sizes, pinpoints):
    """In-graph `select_best_resolution` for int[B, 2] (H, W) -> int32[B, 2].

    Uses exact integer arithmetic: transformers multiplies float64 quotients, which
    in rare near-ties can round a `down_w` or `down_h` one below its exact value (e.g.
    49 * (1 / 49) < 1) and pick another pinpoint. The eager path of the VLM compares
    this result against the float version (`select_best_resolution`) and raises if
    they ever disagree.
    """
    sizes = jnp.maximum(jnp.asarray(image_sizes, jnp.int32), 1)
    oh, ow = sizes[:, :1], sizes[:, 1:]  # [B, 1] against the pinpoints' [G]
    pts = np.asarray(pinpoints, np.int32).reshape(-1, 2)
    h, w = jnp.asarray(pts[:, 0]), jnp.asarray(pts[:, 1])
    width_limited = w * oh <= h * ow  # scale = min(w / ow, h / oh) is w / ow
    down_w = jnp.where(width_limited, w, (ow * h) // oh)
    down_h = jnp.where(width_limited, (oh * w) // ow, h)
    eff = jnp.minimum(down_w * down_h, ow * oh)  # [B, G]
    wasted = h * w - eff
    # transformers keeps the first pinpoint with the most effective pixels, then the least waste.
    cand = eff == eff.max(axis=1, keepdims=True)
    wasted = jnp.where(cand, wasted, np.iinfo(np.int32).max)
    first = jnp.argmax(cand & (wasted == wasted.min(axis=1, keepdims=True)), axis=1)
    return jnp.asarray(pts)[first]


def image_layout_jnp(image_sizes, pinpoints, tile_size: int, patches_per_side: int, max_tiles: int) -> dict:
    """In-graph anyres geometry per image (all int32[B]).

    Returns a dict with the tile grid (`rows`, `cols`), the unpadded feature map
    (`height`, `width`, and its offset `off_y`, `off_x` inside the full
    rows*side x cols*side map), the map after the anyres_max downscale (`out_h`,
    `out_w`) and `num_tokens` = side^2 + out_h * (out_w + 1).
    """
    side = patches_per_side
    sizes = jnp.maximum(jnp.asarray(image_sizes, jnp.int32), 1)
    oh, ow = sizes[:, 0], sizes[:, 1]
    best = best_resolution_jnp(sizes, pinpoints)
    rows, cols = best[:, 0] // tile_size, best[:, 1] // tile_size
    cur_h, cur_w = rows * side, cols * side
    # unpad_image: int(round(x, 7)) of the exact rational x equals its floor for any realistic size.
    wider = ow * cur_h > cur_w * oh
    pad_h = (cur_h - (oh * cur_w) // ow) // 2
    pad_w = (cur_w - (ow * cur_h) // oh) // 2
    off_y = jnp.where(wider, pad_h, 0)
    off_x = jnp.where(wider, 0, pad_w)
    height, width = cur_h - 2 * off_y, cur_w - 2 * off_x
    max_h = max(int(h) for h, _ in pinpoints) // tile_size * side
    max_w = max(int(w) for _, w in pinpoints) // tile_size * side
    table = jnp.asarray(downscale_table(max_h, max_w, side, max_tiles))
    out = table[jnp.clip(height, 0, max_h), jnp.clip(width, 0, max_w)]
    out_h, out_w = out[:, 0], out[:, 1]
    return dict(rows=rows, cols=cols, height=height, width=width, off_y=off_y, off_x=off_x,
                out_h=out_h, out_w=out_w, num_tokens=side * side + out_h * (out_w + 1))


def _taps_jnp(o, in_size, out_size):
    """Traced `bilinear_taps`: o, in_size, out_size int32[...] -> (i0, i1, lambda1)."""
    scale = in_size.astype(jnp.float32) / jnp.maximum(out_size, 1).astype(jnp.float32)
    src = jnp.maximum(scale * (o.astype(jnp.float32) + 0.5) - 0.5, 0.0)
    src = jnp.where(in_size == out_size, o.astype(jnp.float32), src)  # torch copies on identity
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_size - 1)
    lam = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)
    i1 = i0 + (i0 < in_size - 1).astype(jnp.int32)
    return i0, i1, lam


def image_token_sources(layout: dict, ordinal, patches_per_side: int):
    """Where the k-th <image> token of each example reads its feature from.

    Mirrors transformers' pack_image_features: tokens [0, side^2) are the base
    tile's patches; then out_h rows of out_w bilinear samples of the unpadded
    (row-major) feature map followed by one image_newline.

    Args:
      layout: `image_layout_jnp` of the batch's images (int32[B] each).
      ordinal: int32[B, T], the token's index among its example's <image> tokens.
    Returns:
      idx int32[B, T, 4] into the per-example tile features flattened as
      [tile * side^2 + patch], weights f32[B, T, 4] (bilinear taps, summing to 1),
      newline bool[B, T].
    """
    return token_sources({k: v[:, None] for k, v in layout.items()}, ordinal, patches_per_side)  # broadcast over T


def token_sources(layout: dict, ordinal, patches_per_side: int):
    """`image_token_sources` with a layout already per token (each entry int32[B, T] or broadcastable to it).

    Packed rows hold several images, so each token brings its own image's layout
    (gathered by the VLM from the per-image `image_layout_jnp`).
    """
    side = patches_per_side
    s2 = side * side
    g = layout
    j = jnp.maximum(ordinal - s2, 0)
    out_w1 = g["out_w"] + 1
    row, col = j // out_w1, j % out_w1
    newline = (ordinal >= s2) & (col == g["out_w"])
    y0, y1, ly = _taps_jnp(row, g["height"], g["out_h"])
    x0, x1, lx = _taps_jnp(jnp.minimum(col, g["out_w"] - 1), g["width"], g["out_w"])

    def flat(y, x):
        yy, xx = y + g["off_y"], x + g["off_x"]
        tile = 1 + (yy // side) * g["cols"] + xx // side
        return tile * s2 + (yy % side) * side + xx % side

    idx = jnp.stack([flat(y0, x0), flat(y0, x1), flat(y1, x0), flat(y1, x1)], axis=-1)
    w = jnp.stack([(1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx], axis=-1)
    base = ordinal < s2
    idx = jnp.where(base[..., None], jnp.clip(ordinal, 0, s2 - 1)[..., None], idx)
    w = jnp.where(base[..., None], jnp.array([1.0, 0.0, 0.0, 0.0], jnp.float32), w)
    return idx.astype(jnp.int32), w.astype(jnp.float32), newline
