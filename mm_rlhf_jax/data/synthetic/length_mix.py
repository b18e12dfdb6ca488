"""A synthetic MM-RLHF-like length mix: the token and tile counts of preference pairs at LLaVA-OV-7B geometry.

For padding-efficiency measurements (bench/packing_efficiency.py, tests) without
the MM-RLHF files. No histogram of the release is available offline, so the mix
draws from the ranges the project's scale plan names (issue #21, item 7):

  media      80% images, 10% videos, 10% text only (MM-RLHF has image, video and
             text-safety subsets). An image's size is drawn log-uniformly (width
             256-2304 px, aspect 1:2 to 2:1); its <image> token count is then exact,
             LLaVA-OV's anyres_max_9 geometry (anyres.num_image_tokens: 729 for the
             base tile + the unpadded grid + row newlines, 729-7,290 tokens) and its
             tiles 1 + rows * cols of the 36 pinpoints. A video is 10 frames pooled to
             14 x 14 (1,961 tokens, 10 tiles).
  prompt     20-300 words, log-uniform, at 1.3 tokens per word, plus a 20-token chat
             template (system turn and headers);
  responses  chosen and rejected drawn independently, 50-600 tokens, log-uniform.

A pair is then (prefix, chosen, rejected) tokens with prefix = template + media
tokens + prompt: what the packed layout stores, once per pair.
"""

import dataclasses

import numpy as np

from mm_rlhf_jax.models import anyres

TILE, PATCH, ASPECT = 384, 14, "anyres_max_9"
PINPOINTS = tuple((TILE * r, TILE * c) for r in range(1, 7) for c in range(1, 7))
VIDEO_FRAMES = 10
TEMPLATE_TOKENS = 20
TOKENS_PER_WORD = 1.3


@dataclasses.dataclass(frozen=True)
class PairLengths:
    prefix: int
    chosen: int
    rejected: int
    tiles: int  # vision-tower inputs: an image's anyres tiles or a video's frames (0 without media)
    media_tokens: int

    @property
    def packed(self) -> int:
        return self.prefix + self.chosen + self.rejected


def _log_uniform(rng, lo, hi, size=None):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


def sample(n: int, seed: int = 0) -> list[PairLengths]:
    """n pairs of the mix (module docstring); deterministic in seed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        kind = rng.choice(["image", "video", "text"], p=[0.8, 0.1, 0.1])
        media = tiles = 0
        if kind == "image":
            width = _log_uniform(rng, 256, 2304)
            height = width / _log_uniform(rng, 0.5, 2.0)
            size = (int(height), int(width))
            media = anyres.num_image_tokens(size, PINPOINTS, TILE, PATCH, ASPECT)
            tiles = anyres.num_tiles(size, PINPOINTS, TILE)
        elif kind == "video":
            media, tiles = anyres.num_video_tokens(VIDEO_FRAMES, TILE, PATCH), VIDEO_FRAMES
        words = _log_uniform(rng, 20, 300)
        prefix = TEMPLATE_TOKENS + media + int(round(words * TOKENS_PER_WORD))
        chosen, rejected = (int(round(x)) for x in _log_uniform(rng, 50, 600, 2))
        out.append(PairLengths(prefix, chosen, rejected, tiles, media))
    return out
