"""One source element -> one compact pair for packing: shared prefix once, then the two branches, nothing padded.

The two sequences are exactly the unpacked encoder's (same chat template,
truncation and media expansion: `ExampleEncoder`), so packing changes the
layout and never the tokens. They are split at their longest common token
prefix: for DPO that is the prompt (system + media tokens + question, and any
leading response tokens both answers share), for the critique RM the critic
prompt up to the answer. The prefix stops one token short of the shorter
sequence, so each branch keeps at least its last token (the reward model reads
its score there).

    ids              int32[L]   prefix (P tokens) + chosen branch (C) + rejected branch (R), L = P + C + R
    chosen_mask      f32[L]     the chosen sequence's loss mask at its packed indices (0 on the rejected branch)
    rejected_mask    f32[L]     the rejected sequence's, on the prefix and the rejected branch
    media_ordinal    int32[L]   index of a media token among its sequence's media tokens (0 elsewhere)
    lengths          int32[3]   (P, C, R)
    tiles            uint8[n, 3, S, S]  the image's anyres tiles (base first) or the video's frames; n = 0 without
    image_size       int32[2]   original (H, W); (0, 0) without an image
    is_video         bool
    delta, ls_factor f32[] (NaN if unknown);  ref_logps f32[2];  is_tie, has_critique bool;  query_id, category int32

Pixels stay uint8 (a quarter of the f32 bytes); data/packing.py attaches the
per-channel affine map the device applies.
"""

import numpy as np

from mm_rlhf_jax.data.errors import DataError
from mm_rlhf_jax.data.example import _TOKENIZERS, ExampleEncoder
from mm_rlhf_jax.data.records import category_index


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two 1-D arrays."""
    n = min(len(a), len(b))
    diff = np.nonzero(a[:n] != b[:n])[0]
    return int(diff[0]) if len(diff) else n


def media_ordinals(ids: np.ndarray, media_ids) -> np.ndarray:
    """int32[L]: for each media token, its index among the sequence's media tokens (0 elsewhere)."""
    is_media = np.isin(ids, list(media_ids))
    return np.where(is_media, np.cumsum(is_media) - 1, 0).astype(np.int32)


def compact_tokens(input_ids, attention_mask, loss_mask, media_ids=()) -> dict[str, np.ndarray]:
    """One unpacked pair (int32[2, T] right-padded ids / attention, f32[2, T] loss mask) -> its packed tokens:
    ids, chosen_mask, rejected_mask, media_ordinal [L] and lengths (P, C, R) (module docstring).

    Raises ValueError when the sequences share no first token (there is no prefix to share).
    """
    n_c, n_r = (int(x) for x in np.asarray(attention_mask).sum(-1))
    ids_c, ids_r = np.asarray(input_ids[0, :n_c]), np.asarray(input_ids[1, :n_r])
    mask_c, mask_r = np.asarray(loss_mask[0, :n_c], np.float32), np.asarray(loss_mask[1, :n_r], np.float32)
    p = min(common_prefix(ids_c, ids_r), n_c - 1, n_r - 1)
    if p < 1:
        raise ValueError("the chosen and rejected sequences share no first token, so they have no common prefix "
                         "to pack them after")
    ord_c, ord_r = media_ordinals(ids_c, media_ids), media_ordinals(ids_r, media_ids)
    return {
        "ids": np.concatenate([ids_c, ids_r[p:]]).astype(np.int32),
        "chosen_mask": np.concatenate([mask_c, np.zeros(n_r - p, np.float32)]),
        "rejected_mask": np.concatenate([mask_r[:p], np.zeros(n_c - p, np.float32), mask_r[p:]]),
        "media_ordinal": np.concatenate([ord_c, ord_r[p:]]),
        "lengths": np.asarray([p, n_c - p, n_r - p], np.int32),
    }


class PackedPairEncoder(ExampleEncoder):
    """Callable element -> compact pair dict (module docstring); `cfg` is the unpacked EncoderConfig.

    row_length / max_row_tiles > 0: a pair must fit one packed row (else a DataError naming the record).
    """

    def __init__(self, cfg, *, row_length: int = 0, max_row_tiles: int = 0):
        super().__init__(cfg)
        self.row_length, self.max_row_tiles = row_length, max_row_tiles

    def _media(self, element, rec):
        """(uint8[n, 3, S, S] tiles, (H, W), is_video, Media | None)."""
        cfg = self.cfg
        empty = np.zeros((0, 3, cfg.image.tile_size, cfg.image.tile_size) if cfg.image else (0, 3, 0, 0), np.uint8)
        if rec.image is not None:
            if cfg.image is None:
                raise DataError(rec.where, "image", "record has an image but the pipeline has no image config")
            tiles, size, media = self._image_tiles(element, rec)
            return tiles.transpose(0, 3, 1, 2), size, False, media
        if rec.video is not None:
            if not cfg.video:
                raise DataError(rec.where, "video", "record has a video but the pipeline has video disabled")
            frames, media = self._video_frames(element, rec)
            return frames.transpose(0, 3, 1, 2), (0, 0), True, media
        return empty, (0, 0), False, None

    def __call__(self, element: dict) -> dict:
        cfg, rec = self.cfg, element["record"]
        tiles, size, is_video, media = self._media(element, rec)
        tok = _TOKENIZERS[cfg.kind](self.tokenizer, rec, max_length=cfg.max_length, media=media,
                                    system=cfg.system_prompt)
        media_ids = [media.token_id] if media is not None else []
        try:
            out = compact_tokens(tok["input_ids"], tok["attention_mask"], tok["loss_mask"], media_ids)
        except ValueError as e:
            raise DataError(rec.where, "prompt", str(e)) from None
        p, c, n_r = (int(x) for x in out["lengths"])
        if self.row_length and p + c + n_r > self.row_length:
            raise DataError(rec.where, "prompt", f"the packed pair is {p + c + n_r} tokens (prefix {p}, chosen {c}, "
                                                 f"rejected {n_r}) > data.pack_length={self.row_length}")
        if self.max_row_tiles and tiles.shape[0] > self.max_row_tiles:
            raise DataError(rec.where, "video" if is_video else "image",
                            f"{tiles.shape[0]} tiles > the {self.max_row_tiles} tiles a packed row holds "
                            "(data.pack_tiles)")
        nan = np.float32(np.nan)
        ref = (rec.reference_chosen_logp, rec.reference_rejected_logp)
        return {
            **out,
            "tiles": np.ascontiguousarray(tiles),
            "image_size": np.asarray(size, np.int32),
            "is_video": np.bool_(is_video),
            "delta": np.float32(rec.delta) if rec.delta is not None else nan,
            "ls_factor": np.float32(rec.ls_factor) if rec.ls_factor is not None else nan,
            "ref_logps": np.asarray([nan if v is None else v for v in ref], np.float32),
            "is_tie": np.bool_(rec.is_tie),
            "has_critique": np.bool_(tok.get("has_critique", False)),
            "query_id": np.int32(element["query_id"]),
            "category": np.int32(category_index(rec.resolved_category())),
        }
