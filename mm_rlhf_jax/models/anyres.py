"""LLaVA-OneVision "anyres" geometry, shared by the image processor and the model.

Pure host-side integer arithmetic (numpy/python), matching transformers'
LlavaOnevision processor and model: which tile grid an image gets, how many
visual tokens it expands to after unpadding (and the anyres_max_N downscale),
and how many tokens a video gets after 2x2 pooling.

Sizes are (height, width) throughout.
"""

import math
from typing import Sequence

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
