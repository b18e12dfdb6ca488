"""Videos as frame folders (how MM-RLHF stores them): uniform frame sampling + per-frame resize.

Sampling follows MM-RLHF's `train_dpo.py`: sort the frame files by name and take
`np.linspace(0, total - 1, num_frames, dtype=int)` (10 frames, hard-coded there;
a folder with fewer frames repeats some). Each frame is squashed to
tile_size x tile_size, rescaled and normalized, as transformers'
LlavaOnevisionVideoProcessor does (resize to `size`, no anyres tiling). That
processor needs torchvision and resizes with torch's bicubic; this module uses
PIL's bicubic, i.e. exactly the base-image path of the PIL image processor
(checked in tests/data/test_video.py), which differs from torch's bicubic by
small interpolation differences only.
"""

import numpy as np

from mm_rlhf_jax.data import images
from mm_rlhf_jax.data.errors import DataError, Where
from mm_rlhf_jax.data.validation import list_frames
from mm_rlhf_jax.models import anyres

DEFAULT_NUM_FRAMES = 10


def sample_frame_indices(total_frames: int, num_frames: int = DEFAULT_NUM_FRAMES) -> np.ndarray:
    """int[num_frames] indices into the sorted frame list, uniformly spread, ends included."""
    if total_frames < 1:
        raise ValueError("a video needs at least one frame")
    return np.linspace(0, total_frames - 1, num_frames, dtype=int)


def load_frames(folder: str, num_frames: int = DEFAULT_NUM_FRAMES, *, where: Where = Where(),
                field: str = "video") -> list[np.ndarray]:
    """`num_frames` uint8[H, W, 3] frames sampled from a frame folder."""
    files = list_frames(folder, where, field)
    out = []
    for idx in sample_frame_indices(len(files), num_frames):
        try:
            out.append(images.load_image(files[idx]))
        except (OSError, ValueError) as e:
            raise DataError(where, field, f"unreadable video frame {files[idx]!r}: {e}") from None
    return out


def resize_frames(frames, cfg: images.ImageProcessorConfig) -> np.ndarray:
    """Frames (PIL or uint8 [H, W, 3], sizes may differ) -> uint8[F, tile, tile, 3]."""
    t = cfg.tile_size
    return np.stack([images.resize(images.to_rgb_array(f), (t, t), cfg.resample) for f in frames])


def preprocess_frames(frames, cfg: images.ImageProcessorConfig) -> np.ndarray:
    """Frames (PIL or uint8 [H, W, 3], sizes may differ) -> f32[F, 3, tile, tile]."""
    return images.normalize(resize_frames(frames, cfg), cfg)


def load_video(folder: str, cfg: images.ImageProcessorConfig, num_frames: int = DEFAULT_NUM_FRAMES, *,
               where: Where = Where(), field: str = "video") -> np.ndarray:
    """f32[num_frames, 3, tile, tile] for one frame folder."""
    return preprocess_frames(load_frames(folder, num_frames, where=where, field=field), cfg)


def num_video_tokens(num_frames: int, cfg: images.ImageProcessorConfig, patch_size: int) -> int:
    """<video> tokens for `num_frames` frames (2x2-pooled patches per frame + one newline)."""
    return anyres.num_video_tokens(num_frames, cfg.tile_size, patch_size)
