"""One source element -> one example of the batch contract (arrays without the batch axis).

`ExampleEncoder` is a picklable callable (grain runs it in worker processes):
it loads the tokenizer lazily, once per process, reads/decodes the media,
preprocesses images (anyres) and video frames, expands the media token to the
model's visual token count, and tokenizes chosen/rejected (preference) or
critic prompt + critique (reward). Shapes per example are those of batch.py
without the leading B; everything is fixed-size (T = max_length, P = max_patches,
F = num_frames) so batches have static shapes.

Decoded media are kept in a small LRU (the last `media_lru` images / videos read
from files, as uint8 tiles / frames: 4x smaller than the f32 arrays), because
consecutive elements often share one: a pair's chosen and rejected critic
prompts, and the several pairs of one query (MM-RLHF: about 6 per image), so
each image is decoded once per batch rather than once per prompt.
"""

import collections
import dataclasses
import threading

import numpy as np

from mm_rlhf_jax import storage
from mm_rlhf_jax.data import images as image_lib
from mm_rlhf_jax.data import video as video_lib
from mm_rlhf_jax.data.batch import KINDS
from mm_rlhf_jax.data.errors import DataError
from mm_rlhf_jax.data.records import category_index
from mm_rlhf_jax.data.tokenize import Media, tokenize_critique, tokenize_preference, tokenize_scalar_reward
from mm_rlhf_jax.data.tokenizer import IMAGE_TOKEN, VIDEO_TOKEN, cached_tokenizer, special_ids

_TOKENIZERS = {"preference": tokenize_preference, "reward": tokenize_critique,
               "reward_scalar": tokenize_scalar_reward}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """How pairs become arrays.

    Attributes:
      tokenizer_path: local transformers tokenizer folder (with chat template).
      max_length: T, tokens per sequence after padding.
      kind: "preference" (prompt + response) or "reward" (critic prompt + critique).
      image: anyres preprocessing; None for text-only data (then records with media are errors).
      patch_size / vision_aspect_ratio: vision tower geometry, for the image-token count.
      max_patches: P; default image.max_patches.
      video: emit pixel_values_videos / has_video.
      num_frames: F, frames sampled per video (MM-RLHF: 10).
      system_prompt: optional system turn.
    """

    tokenizer_path: str
    max_length: int
    kind: str = "preference"
    image: image_lib.ImageProcessorConfig | None = None
    patch_size: int = 14
    vision_aspect_ratio: str = "anyres_max_9"
    max_patches: int | None = None
    video: bool = False
    num_frames: int = video_lib.DEFAULT_NUM_FRAMES
    system_prompt: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown encoder kind {self.kind!r}; expected one of {KINDS}")
        if self.video and self.image is None:
            raise ValueError("video needs an image config (tile size, mean/std) for its frames")

    @property
    def patches(self) -> int:
        return self.max_patches or (self.image.max_patches if self.image else 0)


class ExampleEncoder:
    """Callable element -> example dict (see module docstring).

    media_lru: decoded media files kept (0: none); `decodes` counts the files actually decoded.
    """

    def __init__(self, cfg: EncoderConfig, media_lru: int = 8):
        self.cfg, self.media_lru = cfg, media_lru
        self._lru: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()  # grain's read threads share one encoder
        self.decodes = 0

    def __getstate__(self):  # grain pickles encoders into workers: the cache (and its lock) stay behind
        return {k: v for k, v in self.__dict__.items() if k not in ("_lru", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lru, self._lock = collections.OrderedDict(), threading.Lock()

    def _cached(self, key, make):
        """make() once per key among the last media_lru keys (the value must not be mutated)."""
        with self._lock:
            if key in self._lru:
                self._lru.move_to_end(key)
                return self._lru[key]
        value = make()  # outside the lock: threads decode different files at once
        with self._lock:
            self.decodes += 1
            if self.media_lru > 0:
                self._lru[key] = value
                while len(self._lru) > self.media_lru:
                    self._lru.popitem(last=False)
        return value

    @property
    def tokenizer(self):
        return cached_tokenizer(self.cfg.tokenizer_path)

    def _media_token_id(self, token: str, where, field) -> int:
        ident = getattr(special_ids(self.tokenizer), "image" if token == IMAGE_TOKEN else "video")
        if ident is None:
            raise DataError(where, field, f"tokenizer {self.cfg.tokenizer_path!r} has no single-id {token} token")
        return ident

    def _image_rgb(self, element, rec) -> np.ndarray:
        """The record's image as uint8[H, W, 3] (stored pixels, or read from media_root)."""
        pixels = element.get("image")
        if pixels is None:
            path = storage.resolve(element["media_root"], rec.image)
            try:
                pixels = image_lib.load_image(path)
            except (OSError, ValueError) as e:
                raise DataError(rec.where, "image", f"unreadable image {path!r}: {e}") from None
        return image_lib.to_rgb_array(pixels)

    def _image_tiles(self, element, rec):
        """(uint8[P, tile, tile, 3] anyres tiles, (H, W), Media) of the record's image; P checked."""
        cfg = self.cfg

        def decode():
            rgb = self._image_rgb(element, rec)
            return image_lib.anyres_tiles(rgb, cfg.image), (int(rgb.shape[0]), int(rgb.shape[1]))

        if element.get("image") is None:  # a file: the same path decodes to the same tiles
            tiles, size = self._cached(("image", storage.resolve(element["media_root"], rec.image)), decode)
        else:
            tiles, size = decode()
        if tiles.shape[0] > cfg.patches:
            raise DataError(rec.where, "image", f"image of size {size} gives {tiles.shape[0]} patches > "
                                                f"max_patches={cfg.patches}")
        count = image_lib.num_image_tokens(size, cfg.image, cfg.patch_size, cfg.vision_aspect_ratio)
        return tiles, size, Media(IMAGE_TOKEN, self._media_token_id(IMAGE_TOKEN, rec.where, "image"), count, "image")

    def _image(self, element, rec):
        tiles, size, media = self._image_tiles(element, rec)
        return image_lib.pad_patches(image_lib.normalize(tiles, self.cfg.image), self.cfg.patches), size, media

    def _video_frames(self, element, rec):
        """(uint8[F, tile, tile, 3] sampled, resized frames, Media) of the record's video."""
        cfg = self.cfg
        frames = element.get("video")
        if frames is None:
            folder = storage.resolve(element["media_root"], rec.video)
            resized = self._cached(("video", folder), lambda: video_lib.resize_frames(
                video_lib.load_frames(folder, cfg.num_frames, where=rec.where), cfg.image))
        else:
            if len(frames) == 0:
                raise DataError(rec.where, "video", "the stored video has no frames")
            frames = [frames[i] for i in video_lib.sample_frame_indices(len(frames), cfg.num_frames)]
            resized = video_lib.resize_frames(frames, cfg.image)
        count = video_lib.num_video_tokens(cfg.num_frames, cfg.image, cfg.patch_size)
        return resized, Media(VIDEO_TOKEN, self._media_token_id(VIDEO_TOKEN, rec.where, "video"), count, "video")

    def _video(self, element, rec):
        frames, media = self._video_frames(element, rec)
        return image_lib.normalize(frames, self.cfg.image), media

    def media_arrays(self, element: dict, rec) -> tuple[dict, Media | None]:
        """Fixed-shape pixel arrays of the record's image/video (zeros when absent) and its Media.

        `rec` is any record with .image / .video / .where (a PairRecord or QueryRecord).
        """
        cfg = self.cfg
        media = None
        out: dict = {}
        if cfg.image is not None:
            t = cfg.image.tile_size
            out["pixel_values"] = np.zeros((cfg.patches, 3, t, t), np.float32)
            out["image_sizes"] = np.zeros(2, np.int32)
            out["has_image"] = np.bool_(rec.image is not None)
        if cfg.video:
            t = cfg.image.tile_size
            out["pixel_values_videos"] = np.zeros((cfg.num_frames, 3, t, t), np.float32)
            out["has_video"] = np.bool_(rec.video is not None)
        if rec.image is not None:
            if cfg.image is None:
                raise DataError(rec.where, "image", "record has an image but the pipeline has no image config")
            out["pixel_values"], size, media = self._image(element, rec)
            out["image_sizes"] = np.asarray(size, np.int32)
        if rec.video is not None:
            if not cfg.video:
                raise DataError(rec.where, "video", "record has a video but the pipeline has video disabled")
            out["pixel_values_videos"], media = self._video(element, rec)
        return out, media

    def __call__(self, element: dict) -> dict:
        cfg, rec = self.cfg, element["record"]
        out, media = self.media_arrays(element, rec)
        tokens = _TOKENIZERS[cfg.kind](self.tokenizer, rec, max_length=cfg.max_length, media=media,
                                       system=cfg.system_prompt)
        nan = np.float32(np.nan)
        ref = (rec.reference_chosen_logp, rec.reference_rejected_logp)
        out.update(tokens)
        out.update(
            delta=np.float32(rec.delta) if rec.delta is not None else nan,
            ls_factor=np.float32(rec.ls_factor) if rec.ls_factor is not None else nan,
            ref_logps=np.asarray([nan if v is None else v for v in ref], np.float32),
            is_tie=np.bool_(rec.is_tie),
            query_id=np.int32(element["query_id"]),
            category=np.int32(category_index(rec.resolved_category())),
        )
        return out
