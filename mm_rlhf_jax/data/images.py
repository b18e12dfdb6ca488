"""LLaVA-OneVision "anyres" image preprocessing on the host (numpy + PIL).

Reproduces transformers' `LlavaOnevisionImageProcessorPil` for one image:

1. pick the grid resolution that keeps the most detail (`anyres.select_best_resolution`);
2. resize the image into it keeping the aspect ratio (PIL bicubic, uint8), pad it
   centred with zeros, and cut it row-major into tile_size x tile_size tiles;
3. put the whole image, squashed to tile_size x tile_size, in front of the tiles;
4. rescale by 1/255 (float64, then float32) and normalize with mean/std, channels first.

Result: pixel_values f32[P, 3, tile, tile] with P = 1 + rows * cols, and the
original (height, width) that the model needs to unpad the features.
tests/data/test_images.py checks equality against the transformers processor.
"""

import dataclasses
import json
import math

import numpy as np
from PIL import Image

from mm_rlhf_jax import storage
from mm_rlhf_jax.models import anyres

# transformers' LlavaOnevisionImageProcessor defaults (OpenAI CLIP statistics). The
# llava-onevision-*-hf checkpoints override mean/std with 0.5 in preprocessor_config.json;
# use `ImageProcessorConfig.from_pretrained` to pick those up.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LLAVA_OV_PINPOINTS = tuple((384 * r, 384 * c) for r in range(1, 7) for c in range(1, 7))


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    """Anyres preprocessing knobs; pinpoints are (height, width) grid resolutions."""

    tile_size: int = 384
    pinpoints: tuple[tuple[int, int], ...] = LLAVA_OV_PINPOINTS
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    rescale_factor: float = 1 / 255
    resample: int = int(Image.Resampling.BICUBIC)

    def __post_init__(self):
        # The model's unpadding geometry (anyres.grid_shape) assumes whole tiles.
        for h, w in self.pinpoints:
            if h % self.tile_size or w % self.tile_size:
                raise ValueError(f"grid pinpoint {(h, w)} is not a multiple of tile_size={self.tile_size}")

    @property
    def max_patches(self) -> int:
        """Largest P any image can produce: base image + the biggest grid."""
        return 1 + max((h // self.tile_size) * (w // self.tile_size) for h, w in self.pinpoints)

    @classmethod
    def from_hf_dict(cls, d: dict) -> "ImageProcessorConfig":
        """From a transformers `preprocessor_config.json` dict of a LLaVA-OV image processor."""
        size = d.get("size", {"height": 384, "width": 384})
        tile = size.get("height") or size.get("shortest_edge")
        if size.get("width", tile) != tile:
            raise ValueError(f"only square tiles are supported; preprocessor size={size}")
        return cls(
            tile_size=int(tile),
            pinpoints=tuple((int(h), int(w)) for h, w in d.get("image_grid_pinpoints", LLAVA_OV_PINPOINTS)),
            image_mean=tuple(d.get("image_mean", CLIP_MEAN)),
            image_std=tuple(d.get("image_std", CLIP_STD)),
            rescale_factor=float(d.get("rescale_factor", 1 / 255)),
            resample=int(d.get("resample", int(Image.Resampling.BICUBIC))),
        )

    @classmethod
    def from_pretrained(cls, path: str) -> "ImageProcessorConfig":
        with storage.open(storage.join(path, "preprocessor_config.json")) as f:
            return cls.from_hf_dict(json.load(f))

    def to_hf_dict(self) -> dict:
        """Kwargs for transformers' LlavaOnevisionImageProcessor(Pil) with the same behaviour."""
        return {
            "size": {"height": self.tile_size, "width": self.tile_size},
            "image_grid_pinpoints": [list(p) for p in self.pinpoints],
            "image_mean": list(self.image_mean), "image_std": list(self.image_std),
            "rescale_factor": self.rescale_factor, "resample": self.resample,
        }


def to_rgb_array(image) -> np.ndarray:
    """uint8[H, W, 3] from a PIL image or a uint8 array [H, W], [H, W, 1], [H, W, 3] or [H, W, 4].

    Transparency is composited onto white, as transformers' convert_to_rgb does.
    """
    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4))):
            raise ValueError(f"image arrays must be uint8 [H, W] or [H, W, 1|3|4] (channels last), "
                             f"got dtype {arr.dtype} shape {arr.shape}")
        if arr.ndim == 3 and arr.shape[-1] == 3:
            return arr
        image = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
                          .convert("RGB"))
    return np.asarray(image.convert("RGB"))


def load_image(path: str) -> np.ndarray:
    """uint8[H, W, 3] RGB of an image file (local or URL)."""
    with storage.open(path, "rb") as f, Image.open(f) as im:
        return to_rgb_array(im)


def resize(image_hw3: np.ndarray, size_hw: tuple[int, int], resample: int) -> np.ndarray:
    """PIL resize of a uint8 image; a same-size resize is an exact copy (as in PIL)."""
    h, w = size_hw
    return np.asarray(Image.fromarray(image_hw3).resize((w, h), resample=resample))


def patch_output_size(image_size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """Aspect-preserving size inside `target` (transformers' get_patch_output_size: ceil, then clip)."""
    h, w = image_size
    th, tw = target
    scale_w, scale_h = tw / w, th / h
    if scale_w < scale_h:
        return min(math.ceil(h * scale_w), th), tw
    return th, min(math.ceil(w * scale_h), tw)


def pad_centered(image_hw3: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Zero-pad to `target`, the odd pixel going to the bottom/right."""
    h, w = image_hw3.shape[:2]
    top, rem_y = divmod(target[0] - h, 2)
    left, rem_x = divmod(target[1] - w, 2)
    return np.pad(image_hw3, ((top, top + rem_y), (left, left + rem_x), (0, 0)))


def normalize(tiles_nhw3: np.ndarray, cfg: ImageProcessorConfig) -> np.ndarray:
    """uint8[N, h, w, 3] -> f32[N, 3, h, w], rescaled and normalized like transformers."""
    x = (tiles_nhw3.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    x = (x - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def anyres_tiles(image_hw3: np.ndarray, cfg: ImageProcessorConfig) -> np.ndarray:
    """uint8[P, tile, tile, 3]: the squashed base image, then the grid tiles row-major."""
    size = image_hw3.shape[:2]
    best = anyres.select_best_resolution(size, cfg.pinpoints)
    padded = pad_centered(resize(image_hw3, patch_output_size(size, best), cfg.resample), best)
    t = cfg.tile_size
    tiles = [resize(image_hw3, (t, t), cfg.resample)]
    for i in range(0, best[0], t):
        for j in range(0, best[1], t):
            tiles.append(padded[i:i + t, j:j + t])
    return np.stack(tiles)


def preprocess_image(image, cfg: ImageProcessorConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """One image -> (pixel_values f32[P, 3, tile, tile], (height, width) of the original)."""
    rgb = to_rgb_array(image)
    return normalize(anyres_tiles(rgb, cfg), cfg), (int(rgb.shape[0]), int(rgb.shape[1]))


def pad_patches(pixel_values: np.ndarray, max_patches: int) -> np.ndarray:
    """f32[P, 3, H, W] -> f32[max_patches, 3, H, W] with zero patches appended."""
    p = pixel_values.shape[0]
    if p > max_patches:
        raise ValueError(f"image has {p} patches but the batch holds at most max_patches={max_patches}")
    return np.concatenate([pixel_values, np.zeros((max_patches - p, *pixel_values.shape[1:]), np.float32)])


def num_image_tokens(image_size: tuple[int, int], cfg: ImageProcessorConfig, patch_size: int,
                     vision_aspect_ratio: str = "anyres_max_9") -> int:
    """<image> tokens this image expands to in the model (anyres geometry, unpadded + newlines)."""
    return anyres.num_image_tokens(image_size, cfg.pinpoints, cfg.tile_size, patch_size, vision_aspect_ratio)


def tiny_pinpoints(tile_size: int = 32) -> tuple[tuple[int, int], ...]:
    """1x1, 1x2, 2x1 and 2x2 grids of `tile_size` tiles, for tiny test/preset configs."""
    t = tile_size
    return ((t, t), (t, 2 * t), (2 * t, t), (2 * t, 2 * t))
