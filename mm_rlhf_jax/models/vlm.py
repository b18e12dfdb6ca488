"""LLaVA-OneVision: SigLIP tower + projector + anyres packing + the decoder LM.

Inputs use transformers' own format: <image>/<video> tokens already expanded in
`input_ids`; `pixel_values` f32[B, P, C, H, W] (example b's base tile then its
anyres tiles, zero-padded to the batch's max P); `image_sizes` int[B, 2]
original (H, W), with (0, 0) marking an example without an image;
`pixel_values_videos` f32[B, F, C, H, W]. One image or one video (or neither)
per example; example b's image is `pixel_values[b]`.

Static shapes under jit: the vision tower runs on all B*P tiles; the anyres
layout (grid, unpadding, anyres_max downscale) is computed in-graph from the
traced `image_sizes` (`anyres.image_layout_jnp`), and each <image> token
gathers its (up to 4 bilinear) source features, so no host-side plan is needed.

Checks: on concrete (eager) inputs, `embed_multimodal` verifies per example that
the number of <image> / <video> tokens equals the number of features and raises
a ValueError naming the example and both numbers (see `check_multimodal_inputs`,
which data pipelines can call on the host). Under jit nothing can be checked:
surplus tokens read clipped indices, so validate batches on the host.

`encode_vision` and `embed_multimodal` are separable so training can run the
tower once per prompt and reuse the features for chosen and rejected sequences.
Packed rows (several pairs, each with its own image or video) take
`packed_media` instead (`embed_packed`, models/packed_media.py).
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mm_rlhf_jax.models import anyres, layers
from mm_rlhf_jax.models import packed_media as media_lib
from mm_rlhf_jax.models.packed_media import PackedMedia
from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.models import decoder as decoder_lib
from mm_rlhf_jax.models.decoder import Decoder
from mm_rlhf_jax.models.outputs import KVCache, ModelOutput
from mm_rlhf_jax.models.projector import MultiModalProjector
from mm_rlhf_jax.models.siglip import SiglipConfig, SiglipVisionModel, feature_layer_indices


@dataclasses.dataclass(frozen=True)
class LlavaOnevisionConfig:
    """transformers' LlavaOnevisionConfig (text config as DecoderConfig, vision as SiglipConfig)."""

    text: DecoderConfig
    vision: SiglipConfig
    image_token_id: int = 151646
    video_token_id: int = 151647
    image_grid_pinpoints: tuple[tuple[int, int], ...] = ((384, 384),)
    vision_feature_layer: int | tuple[int, ...] = -1
    vision_feature_select_strategy: str = "full"
    vision_aspect_ratio: str = "anyres_max_9"
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True

    def __post_init__(self):
        if self.vision_feature_select_strategy != "full":
            # "default" drops the first patch: SigLIP has no CLS token, and transformers'
            # anyres packing then fails its own patch-count check.
            raise ValueError(
                f"vision_feature_select_strategy={self.vision_feature_select_strategy!r} is not supported "
                "(LLaVA-OneVision packs full SigLIP feature maps); use 'full'"
            )
        anyres.max_tiles_from_aspect_ratio(self.vision_aspect_ratio)
        feature_layer_indices(self.vision_feature_layer, self.vision.num_layers)
        tile = self.vision.image_size
        bad = [p for p in self.image_grid_pinpoints if p[0] % tile or p[1] % tile]
        if bad or not self.image_grid_pinpoints:
            raise ValueError(f"image_grid_pinpoints {bad or '[]'} must be non-empty multiples of image_size={tile}")

    @property
    def max_tiles(self) -> int:
        return anyres.max_tiles_from_aspect_ratio(self.vision_aspect_ratio)

    @property
    def pooled_side(self) -> int:
        """Video frames are bilinearly pooled to ceil(side / 2) per axis."""
        return math.ceil(self.vision.patches_per_side / 2)

    def replace(self, **kw) -> "LlavaOnevisionConfig":
        return dataclasses.replace(self, **kw)


@flax.struct.dataclass
class VisionFeatures:
    """Projected visual features, per example (a pytree, so it passes through jit).

    image_tiles: [B, P * side^2, E] every tile's patch features (tile-major) or None.
    image_sizes: int32[B, 2] original (H, W) of each example's image, or None.
    video:       [B, F * pooled^2, E] pooled frame features (frame-major) or None.
    """

    image_tiles: Any = None
    image_sizes: Any = None
    video: Any = None


def _concrete(*xs):
    """numpy copies of xs, or None when any of them is traced (under jit / eval_shape)."""
    try:
        return [None if x is None else np.asarray(x) for x in xs]
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_multimodal_inputs(config: LlavaOnevisionConfig, input_ids, image_sizes=None, num_tiles=None,
                            num_frames=None) -> None:
    """Host-side validation of one batch (numpy). Raises ValueError naming the example.

    Args:
      input_ids: int[B, T] with <image>/<video> tokens expanded.
      image_sizes: int[B, 2] (H, W); (0, 0) = no image. None = no images in the batch.
      num_tiles: P, the tiles per example in pixel_values (None = no pixel_values).
      num_frames: F of pixel_values_videos (None = no videos).
    """
    v = config.vision
    ids = np.asarray(input_ids)
    n_img = (ids == config.image_token_id).sum(-1)
    n_vid = (ids == config.video_token_id).sum(-1)
    sizes = None if image_sizes is None else np.asarray(image_sizes).reshape(ids.shape[0], 2)
    for b in range(ids.shape[0]):
        has_image = sizes is not None and bool((sizes[b] > 0).all())
        if n_img[b] and (num_tiles is None or not has_image):
            raise ValueError(f"example {b}: input_ids hold {n_img[b]} <image> tokens but no image "
                             "(pixel_values / a non-zero image_sizes row) was given")
        if has_image:
            size = (int(sizes[b, 0]), int(sizes[b, 1]))
            expected = anyres.num_image_tokens(size, config.image_grid_pinpoints, v.image_size, v.patch_size,
                                               config.vision_aspect_ratio)
            if n_img[b] != expected:
                raise ValueError(f"example {b}: image of size {size} gives {expected} image features, but input_ids "
                                 f"hold {n_img[b]} <image> tokens (id {config.image_token_id})")
            tiles = anyres.num_tiles(size, config.image_grid_pinpoints, v.image_size)
            if num_tiles is not None and tiles > num_tiles:
                raise ValueError(f"example {b}: image of size {size} needs {tiles} tiles (base + grid) but "
                                 f"pixel_values holds {num_tiles} per example")
        if n_vid[b]:
            if num_frames is None:
                raise ValueError(f"example {b}: input_ids hold {n_vid[b]} <video> tokens but no pixel_values_videos")
            expected = anyres.num_video_tokens(num_frames, v.image_size, v.patch_size)
            if n_vid[b] != expected:
                raise ValueError(f"example {b}: a video of {num_frames} frames gives {expected} video features, but "
                                 f"input_ids hold {n_vid[b]} <video> tokens (id {config.video_token_id})")


def _gather_rows(table, idx):
    """table[B, N, E], idx int[B, T] -> [B, T, E] (indices clipped into range)."""
    idx = jnp.clip(idx, 0, table.shape[1] - 1)
    return jnp.take_along_axis(table, idx[..., None], axis=1)


class LlavaOnevision(nn.Module):
    """LlavaOnevisionForConditionalGeneration as a Flax module.

    Params: vision_tower (SigLIP), multi_modal_projector, image_newline[E], language_model (Decoder).
    """

    config: LlavaOnevisionConfig

    def setup(self):
        cfg = self.config
        t = cfg.text
        self.vision_tower = SiglipVisionModel(cfg.vision)
        self.multi_modal_projector = MultiModalProjector(
            t.hidden_size, cfg.projector_hidden_act, cfg.multimodal_projector_bias, t.dtype, t.param_dtype,
            t.initializer_range,
        )
        # transformers initialises image_newline with std 1 / sqrt(hidden_size).
        self.image_newline = self.param(
            "image_newline", layers.init(("embed",), 1 / math.sqrt(t.hidden_size)), (t.hidden_size,), t.param_dtype
        )
        self.language_model = Decoder(t)

    def _features(self, frames):
        """f32[N, C, H, W] -> projected per-patch features [N, side^2, E]."""
        return self.multi_modal_projector(self.vision_tower(frames, self.config.vision_feature_layer))

    def encode_vision(self, pixel_values=None, image_sizes=None, pixel_values_videos=None) -> VisionFeatures:
        """Runs the tower + projector once; see VisionFeatures for the shapes."""
        cfg = self.config
        tiles = sizes = video = None
        if pixel_values is not None:
            if pixel_values.ndim != 5 or image_sizes is None:
                raise ValueError(f"pixel_values must be [B, P, C, H, W] with image_sizes [B, 2]; got pixel_values "
                                 f"{pixel_values.shape} and image_sizes {None if image_sizes is None else image_sizes.shape}")
            b, p = pixel_values.shape[:2]
            feats = self._features(pixel_values.reshape((b * p,) + pixel_values.shape[2:]))
            tiles = feats.reshape(b, p * feats.shape[1], feats.shape[2])
            sizes = jnp.asarray(image_sizes, jnp.int32).reshape(b, 2)
        if pixel_values_videos is not None:
            if pixel_values_videos.ndim != 5:
                raise ValueError(f"pixel_values_videos must be [B, F, C, H, W], got {pixel_values_videos.shape}")
            b, f = pixel_values_videos.shape[:2]
            side, ps = cfg.vision.patches_per_side, cfg.pooled_side
            feats = self._features(pixel_values_videos.reshape((b * f,) + pixel_values_videos.shape[2:]))
            feats = feats.reshape(b, f, side, side, feats.shape[-1])
            pool = jnp.asarray(anyres.bilinear_matrix(side, ps))  # [ps, side], torch bilinear weights
            pooled = jnp.einsum("py,bfyxe,qx->bfpqe", pool, feats.astype(jnp.float32), pool)
            video = pooled.reshape(b, f * ps * ps, -1).astype(feats.dtype)
        return VisionFeatures(image_tiles=tiles, image_sizes=sizes, video=video)

    def embed_multimodal(self, input_ids, features: VisionFeatures | None = None, *, check: bool = True):
        """int[B, T] + VisionFeatures -> inputs_embeds [B, T, E] (compute dtype).

        check: validate token counts when inputs are concrete (eager); a no-op under jit.
        """
        cfg = self.config
        x = self.language_model.embed(input_ids)
        if features is None:
            features = VisionFeatures()
        if check:
            num_tiles = num_frames = None
            if features.image_tiles is not None:
                num_tiles = features.image_tiles.shape[1] // cfg.vision.num_patches
            if features.video is not None:
                num_frames = features.video.shape[1] // cfg.pooled_side**2
            self._check(input_ids, features.image_sizes, num_tiles, num_frames)
        newline = self.image_newline.astype(jnp.float32)
        if features.image_tiles is not None:
            is_img = input_ids == cfg.image_token_id
            ordinal = jnp.cumsum(is_img, axis=1, dtype=jnp.int32) - 1
            layout = anyres.image_layout_jnp(features.image_sizes, cfg.image_grid_pinpoints, cfg.vision.image_size,
                                             cfg.vision.patches_per_side, cfg.max_tiles)
            idx, w, is_newline = anyres.image_token_sources(layout, ordinal, cfg.vision.patches_per_side)
            tiles = features.image_tiles
            emb = sum(w[..., k, None] * _gather_rows(tiles, idx[..., k]).astype(jnp.float32) for k in range(4))
            emb = jnp.where(is_newline[..., None], newline, emb)
            x = jnp.where(is_img[..., None], emb.astype(x.dtype), x)
        if features.video is not None:
            is_vid = input_ids == cfg.video_token_id
            ordinal = jnp.cumsum(is_vid, axis=1, dtype=jnp.int32) - 1
            emb = _gather_rows(features.video, ordinal).astype(jnp.float32)
            emb = jnp.where((ordinal >= features.video.shape[1])[..., None], newline, emb)  # trailing newline
            x = jnp.where(is_vid[..., None], emb.astype(x.dtype), x)
        return x

    def embed_packed(self, input_ids, media: PackedMedia):
        """int[R, T] + the rows' media -> inputs_embeds [R, T, E]: the tower runs once over every tile of a row,
        and each media token reads its own pair's features (models/packed_media.py)."""
        cfg = self.config
        v = cfg.vision
        x = self.language_model.embed(input_ids)
        pixels = media_lib.decode_pixels(media.pixel_values, media.pixel_affine)
        r, n = pixels.shape[:2]
        feats = self._features(pixels.reshape((r * n,) + pixels.shape[2:]))  # [R * N, side^2, E]
        newline = self.image_newline.astype(jnp.float32)
        tiles = feats.reshape(r, n * feats.shape[1], feats.shape[2])
        is_img = input_ids == cfg.image_token_id
        idx, w, is_newline = media_lib.image_sources(media, cfg.image_grid_pinpoints, v.image_size,
                                                        v.patches_per_side, cfg.max_tiles)
        emb = sum(w[..., k, None] * _gather_rows(tiles, idx[..., k]).astype(jnp.float32) for k in range(4))
        emb = jnp.where(is_newline[..., None], newline, emb)
        x = jnp.where(is_img[..., None], emb.astype(x.dtype), x)
        if media.with_video:
            side, ps = v.patches_per_side, cfg.pooled_side
            grid = feats.reshape(r * n, side, side, feats.shape[-1]).astype(jnp.float32)
            pool = jnp.asarray(anyres.bilinear_matrix(side, ps))
            pooled = jnp.einsum("py,nyxe,qx->npqe", pool, grid, pool).reshape(r, n * ps * ps, -1)
            vidx, vnewline = media_lib.video_sources(media, ps)
            emb = jnp.where(vnewline[..., None], newline, _gather_rows(pooled, vidx))
            x = jnp.where((input_ids == cfg.video_token_id)[..., None], emb.astype(x.dtype), x)
        return x

    def _check(self, input_ids, image_sizes, num_tiles, num_frames):
        """Eager-only validation (skipped when traced; see the module docstring)."""
        if self.is_initializing():
            return
        concrete = _concrete(input_ids, image_sizes)
        if concrete is None:
            return
        ids, sizes = concrete
        cfg = self.config
        check_multimodal_inputs(cfg, ids, sizes, num_tiles, num_frames)
        if sizes is not None:
            # The in-graph (exact-integer) layout must agree with the float host geometry.
            sizes = sizes.reshape(-1, 2)
            with jax.ensure_compile_time_eval():  # concrete even when closed over inside a jit
                graph = np.asarray(anyres.image_layout_jnp(sizes, cfg.image_grid_pinpoints, cfg.vision.image_size,
                                                           cfg.vision.patches_per_side, cfg.max_tiles)["num_tokens"])
            for b, size in enumerate(sizes):
                if (size > 0).all():
                    size = (int(size[0]), int(size[1]))
                    host = anyres.num_image_tokens(size, cfg.image_grid_pinpoints, cfg.vision.image_size,
                                                   cfg.vision.patch_size, cfg.vision_aspect_ratio)
                    if host != graph[b]:
                        raise ValueError(f"example {b}: image size {size} is a float-rounding tie in "
                                         f"select_best_resolution ({host} host vs {graph[b]} in-graph features)")

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        image_sizes=None,
        pixel_values_videos=None,
        *,
        vision_features: VisionFeatures | None = None,
        positions=None,
        segment_ids=None,
        branch_ids=None,
        cache: KVCache | None = None,
        compute_logits: bool | str = True,
        packed_media: PackedMedia | None = None,
    ) -> ModelOutput:
        """Full forward: `encode_vision` (unless `vision_features` is given), merge, decoder.

        packed_media: the media of packed rows (replaces pixel_values / vision_features).
        Returns ModelOutput(logits f32[B, T, V] or None, hidden_states [B, T, E], cache).
        """
        check = True
        if packed_media is not None:
            x = self.embed_packed(input_ids, packed_media)
            return self.language_model(
                inputs_embeds=x, attention_mask=attention_mask, positions=positions, segment_ids=segment_ids,
                branch_ids=branch_ids, cache=cache, compute_logits=compute_logits,
            )
        if vision_features is None and (pixel_values is not None or pixel_values_videos is not None):
            # Validate before spending the vision tower's compute.
            self._check(input_ids, image_sizes, None if pixel_values is None else pixel_values.shape[1],
                        None if pixel_values_videos is None else pixel_values_videos.shape[1])
            vision_features, check = self.encode_vision(pixel_values, image_sizes, pixel_values_videos), False
        elif self.is_initializing():
            # Create the vision parameters even when init sees text only.
            v = self.config.vision
            self._features(jnp.zeros((1, v.num_channels, v.image_size, v.image_size), jnp.float32))
        x = self.embed_multimodal(input_ids, vision_features, check=check)
        return self.language_model(
            inputs_embeds=x, attention_mask=attention_mask, positions=positions, segment_ids=segment_ids,
            branch_ids=branch_ids, cache=cache, compute_logits=compute_logits,
        )

    def lm_head_weight(self, params) -> jax.Array:
        """The LM head as w[E, V] from this module's params."""
        return decoder_lib.lm_head_weight(self.config.text, nn.meta.unbox(params)["language_model"])

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        return decoder_lib.init_cache(self.config.text, batch, max_len, dtype)
