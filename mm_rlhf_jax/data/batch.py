"""The batch contract between the data pipeline and the train steps (numpy, host side).

Preference batches carry an explicit pair axis (index 0 = chosen, 1 = rejected);
chosen and rejected are never the two halves of the batch axis.

    input_ids            int32[B, 2, T]     right-padded token ids
    attention_mask       int32[B, 2, T]     1 = real token, 0 = padding (all padding at the end)
    loss_mask            f32[B, 2, T]       1 = response token t, predicted from position t-1's hidden state
    delta                f32[B]             reward margin r(chosen) - r(rejected); NaN if unknown
    ls_factor            f32[B]             the release's per-pair beta scaling field; NaN if absent
    ref_logps            f32[B, 2]          cached reference log-probs (sum over response tokens); NaN if absent
    is_tie               bool[B]            tie pair (reward-model tie loss only; DPO batches hold none)
    query_id             int32[B]           index of the pair's query id (ACC+ groups pairs by query)
    category             int32[B]           index into records.CATEGORIES; -1 if unknown
  with images (the pipeline has an image config):
    pixel_values         f32[B, P, 3, H, W] anyres tiles, base image first; zero patches pad to P
    image_sizes          int32[B, 2]        original (height, width); 0 where there is no image
    has_image            bool[B]
  with video enabled:
    pixel_values_videos  f32[B, F, 3, H, W] F sampled frames; zeros where there is no video
    has_video            bool[B]

Reward-model batches have the same keys, where each sequence is critic prompt + critique
and loss_mask covers the critique tokens, plus
    has_critique         bool[B]            False: no teacher critique, the critique loss skips it

Packed pair batches (data.packing = True; data/packing.py builds them): R rows of a token
budget T, each holding up to K pairs laid end to end. A pair is its two sequences' longest
common prefix (the prompt: system + media tokens + question; the critic prompt up to the
answer) once, then the rest of the chosen sequence (branch 1), then the rest of the rejected
one (branch 2). Attention lets a branch see its pair's prefix and itself, never the other
branch or another pair (kernels.attention segment_ids + branch_ids); RoPE positions restart
at 0 for every pair and both branches continue from the prefix, so every token sees exactly
the keys, at exactly the positions, it has in its unpacked sequence.

    input_ids            int32[R, T]        [prefix_1 | chosen_1 | rejected_1 | prefix_2 | ... | padding]
    positions            int32[R, T]        0..P-1 on a prefix, P.. on each of its branches; 0 on padding
    segment_ids          int32[R, T]        pair slot 1..K within the row; 0 = padding
    branch_ids           int32[R, T]        0 prefix, 1 chosen, 2 rejected
    pred_pos             int32[R, T]        the index whose hidden state predicts token t: t - 1, but the
                                            pair's last prefix token for its first rejected token
    chosen_mask          f32[R, T]          1 = token t is scored for the chosen sequence (its loss_mask)
    rejected_mask        f32[R, T]          the same for the rejected sequence (prefix tokens may be in both)
    seq_last             int32[R, K, 2]     index of the last token of the chosen / rejected sequence
    pair_valid           bool[R, K]         slot k holds a pair (the losses' counts come from it)
    pair_index           int32[R, K]        the pair's index in its stream (a pass: the source index); -1 empty
    delta, ls_factor     f32[R, K]          as above, per slot (0 on empty slots)
    ref_logps            f32[R, K, 2]
    is_tie, query_id, category, has_critique (reward kinds)    [R, K]
  with images / videos (each pair has at most one; the row's media tiles laid end to end):
    pixel_values         uint8[R, N, 3, S, S] slot k's anyres tiles (base first) or video frames at
                                            [media_offset, media_offset + media_tiles); N = the smallest
                                            tile bucket that holds the batch's fullest row
    pixel_affine         f32[R, 2, 3]       per channel (scale, shift): normalised = uint8 * scale + shift
    image_sizes          int32[R, K, 2]     original (H, W); (0, 0) = the slot has no image
    media_offset         int32[R, K]        first tile of slot k's media
    media_tiles          int32[R, K]        its tile / frame count
    media_ordinal        int32[R, T]        a media token's index among its pair's media tokens (0 elsewhere)
  with video enabled:
    has_video            bool[R, K]

Every per-pair sum is taken over the tokens of one slot, and the losses divide by counts
of valid slots and masked tokens of the whole batch, so a packed batch gives exactly the
losses and gradients of the same pairs unpacked (tests/algorithms/*/test_packed_step.py).
LongPO's samples (data/longpo/samples.py) are the one-pair-per-row case of this layout (a
shared document prompt, two branches, `prompt_last` / `rejected_first` for pred_pos) with
short-context reference inputs beside it; a second 128K-token sample never fits a row, so
they keep their own keys.
"""

from typing import TypedDict

import numpy as np

KINDS = ("preference", "reward", "reward_scalar")
PACKED_REWARD_KINDS = ("reward", "reward_scalar")


class PreferenceBatch(TypedDict, total=False):
    """Keys and shapes in the module docstring; image and video keys are present as groups."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    delta: np.ndarray
    ls_factor: np.ndarray
    ref_logps: np.ndarray
    is_tie: np.ndarray
    query_id: np.ndarray
    category: np.ndarray
    pixel_values: np.ndarray
    image_sizes: np.ndarray
    has_image: np.ndarray
    pixel_values_videos: np.ndarray
    has_video: np.ndarray


class RewardBatch(PreferenceBatch, total=False):
    has_critique: np.ndarray


# key -> (dtype, symbolic shape). Symbols are bound on first use and must agree across keys.
SPEC = {
    "input_ids": (np.int32, ("B", 2, "T")),
    "attention_mask": (np.int32, ("B", 2, "T")),
    "loss_mask": (np.float32, ("B", 2, "T")),
    "delta": (np.float32, ("B",)),
    "ls_factor": (np.float32, ("B",)),
    "ref_logps": (np.float32, ("B", 2)),
    "is_tie": (np.bool_, ("B",)),
    "query_id": (np.int32, ("B",)),
    "category": (np.int32, ("B",)),
    "pixel_values": (np.float32, ("B", "P", 3, "H", "W")),
    "image_sizes": (np.int32, ("B", 2)),
    "has_image": (np.bool_, ("B",)),
    "pixel_values_videos": (np.float32, ("B", "F", 3, "Hv", "Wv")),
    "has_video": (np.bool_, ("B",)),
    "has_critique": (np.bool_, ("B",)),
}
REQUIRED = ("input_ids", "attention_mask", "loss_mask", "delta", "ls_factor", "ref_logps", "is_tie", "query_id", "category")
GROUPS = {"image": ("pixel_values", "image_sizes", "has_image"), "video": ("pixel_values_videos", "has_video")}


def _shape_str(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def validate_batch(batch: dict, *, kind: str = "preference", check_values: bool = True) -> dict[str, int]:
    """Check keys, dtypes and shapes (and, with check_values, the masks); returns the bound sizes.

    Raises ValueError naming the offending key, its shape/dtype and what was expected.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown batch kind {kind!r}; expected one of {KINDS}")
    required = REQUIRED + (("has_critique",) if kind.startswith("reward") else ())
    missing = [k for k in required if k not in batch]
    if missing:
        raise ValueError(f"{kind} batch is missing keys {missing}; has {sorted(batch)}")
    for group, keys in GROUPS.items():
        present = [k for k in keys if k in batch]
        if present and len(present) != len(keys):
            raise ValueError(f"{kind} batch has {present} but not {sorted(set(keys) - set(present))}: "
                             f"the {group} keys come together")
    allowed = set(required) | {k for keys in GROUPS.values() for k in keys}
    unknown = sorted(set(batch) - allowed)
    if unknown:
        raise ValueError(f"{kind} batch has unknown keys {unknown}; the contract is in mm_rlhf_jax/data/batch.py")
    sizes: dict[str, int] = {}
    for key in batch:
        dtype, spec = SPEC[key]
        arr = batch[key]
        if not isinstance(arr, np.ndarray) and not hasattr(arr, "shape"):
            raise ValueError(f"batch[{key!r}] is a {type(arr).__name__}, expected an array {_shape_str(spec)}")
        if np.dtype(arr.dtype) != np.dtype(dtype):
            raise ValueError(f"batch[{key!r}] has dtype {arr.dtype}, expected {np.dtype(dtype).name}")
        if len(arr.shape) != len(spec):
            raise ValueError(f"batch[{key!r}] has shape {_shape_str(arr.shape)}, expected {_shape_str(spec)}")
        for dim, want in zip(arr.shape, spec):
            if isinstance(want, int):
                ok = dim == want
            else:
                ok = sizes.setdefault(want, int(dim)) == dim
            if not ok:
                bound = {s: sizes[s] for s in spec if isinstance(s, str) and s in sizes}
                raise ValueError(f"batch[{key!r}] has shape {_shape_str(arr.shape)}, expected {_shape_str(spec)} "
                                 f"with {bound}")
    if check_values:
        _check_masks(batch)
    return sizes


def _check_masks(batch: dict) -> None:
    att, loss = np.asarray(batch["attention_mask"]), np.asarray(batch["loss_mask"])
    if not np.isin(att, (0, 1)).all():
        raise ValueError("batch['attention_mask'] must hold only 0 and 1")
    if (np.diff(att, axis=-1) > 0).any():
        raise ValueError("batch['attention_mask'] is not right-padded (a 1 follows a 0)")
    if ((loss != 0) & (att == 0)).any():
        raise ValueError("batch['loss_mask'] marks padding positions as response tokens")
    if (loss[..., 0] != 0).any():
        raise ValueError("batch['loss_mask'][..., 0] must be 0: the first token has no position to predict it from")


# The packed contract (module docstring): key -> (dtype, symbolic shape).
PACKED_SPEC = {
    **{k: (np.int32, ("R", "T")) for k in ("input_ids", "positions", "segment_ids", "branch_ids", "pred_pos",
                                           "media_ordinal")},
    "chosen_mask": (np.float32, ("R", "T")),
    "rejected_mask": (np.float32, ("R", "T")),
    "seq_last": (np.int32, ("R", "K", 2)),
    "pair_valid": (np.bool_, ("R", "K")),
    "pair_index": (np.int32, ("R", "K")),
    "delta": (np.float32, ("R", "K")),
    "ls_factor": (np.float32, ("R", "K")),
    "ref_logps": (np.float32, ("R", "K", 2)),
    "is_tie": (np.bool_, ("R", "K")),
    "query_id": (np.int32, ("R", "K")),
    "category": (np.int32, ("R", "K")),
    "has_critique": (np.bool_, ("R", "K")),
    "pixel_values": (np.uint8, ("R", "N", 3, "S", "S")),
    "pixel_affine": (np.float32, ("R", 2, 3)),
    "image_sizes": (np.int32, ("R", "K", 2)),
    "media_offset": (np.int32, ("R", "K")),
    "media_tiles": (np.int32, ("R", "K")),
    "has_video": (np.bool_, ("R", "K")),
}
PACKED_REQUIRED = ("input_ids", "positions", "segment_ids", "branch_ids", "pred_pos", "chosen_mask", "rejected_mask",
                   "seq_last", "pair_valid", "pair_index", "delta", "ls_factor", "ref_logps", "is_tie", "query_id",
                   "category")
PACKED_MEDIA = ("pixel_values", "pixel_affine", "image_sizes", "media_offset", "media_tiles", "media_ordinal")


def is_packed(batch) -> bool:
    """A packed pair batch (pair slots per row) rather than the [B, 2, T] layout."""
    return "pair_valid" in batch


def validate_packed_batch(batch: dict, *, kind: str = "preference", check_values: bool = True) -> dict[str, int]:
    """Keys, dtypes, shapes (and with check_values the row layout) of a packed batch; returns the bound sizes.

    Raises ValueError naming the key (and row / slot) and what was expected.
    """
    required = PACKED_REQUIRED + (("has_critique",) if kind in PACKED_REWARD_KINDS else ())
    missing = [k for k in required if k not in batch]
    if missing:
        raise ValueError(f"packed {kind} batch is missing keys {missing}; has {sorted(batch)}")
    media = [k for k in PACKED_MEDIA if k in batch]
    if media and len(media) != len(PACKED_MEDIA):
        raise ValueError(f"packed batch has {media} but not {sorted(set(PACKED_MEDIA) - set(media))}: "
                         "the media keys come together")
    unknown = sorted(set(batch) - set(required) - set(PACKED_MEDIA) - {"has_video"})
    if unknown:
        raise ValueError(f"packed {kind} batch has unknown keys {unknown}; the contract is in "
                         "mm_rlhf_jax/data/batch.py")
    sizes = _check_shapes(batch, PACKED_SPEC)
    if check_values:
        _check_rows(batch)
    return sizes


def _check_shapes(batch: dict, spec: dict) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for key, arr in batch.items():
        dtype, shape = spec[key]
        if np.dtype(arr.dtype) != np.dtype(dtype):
            raise ValueError(f"batch[{key!r}] has dtype {arr.dtype}, expected {np.dtype(dtype).name}")
        if len(arr.shape) != len(shape) or any(
                (d != w) if isinstance(w, int) else (sizes.setdefault(w, int(d)) != d)
                for d, w in zip(arr.shape, shape)):
            bound = {s: sizes[s] for s in shape if isinstance(s, str) and s in sizes}
            raise ValueError(f"batch[{key!r}] has shape {_shape_str(arr.shape)}, expected {_shape_str(shape)} "
                             f"with {bound}")
    return sizes


def _check_rows(batch: dict) -> None:
    """Each slot's tokens are contiguous [prefix | chosen | rejected], positions and pred_pos as documented."""
    get = lambda k: np.asarray(batch[k])  # noqa: E731
    seg, br, pos, pred = get("segment_ids"), get("branch_ids"), get("positions"), get("pred_pos")
    cm, rm, valid, last = get("chosen_mask"), get("rejected_mask"), get("pair_valid"), get("seq_last")
    if ((cm != 0) & (seg == 0)).any() or ((rm != 0) & (seg == 0)).any():
        raise ValueError("batch['chosen_mask'] / ['rejected_mask'] mark padding tokens")
    if ((cm != 0) & (br == 2)).any() or ((rm != 0) & (br == 1)).any():
        raise ValueError("a response mask marks the other branch's tokens")
    for r, k in zip(*np.nonzero(valid)):
        where = np.nonzero(seg[r] == k + 1)[0]
        name = f"row {r} slot {k}"
        if not len(where) or (np.diff(where) != 1).any():
            raise ValueError(f"{name}: its tokens (segment_ids == {k + 1}) are missing or not contiguous")
        b = br[r, where]
        p, c = int((b == 0).sum()), int((b == 1).sum())
        if p < 1 or c < 1 or p + c == len(b) or (np.diff(b) < 0).any():
            raise ValueError(f"{name}: branch_ids must be [0 x P, 1 x C, 2 x R] with P, C, R >= 1, got {b.tolist()}")
        want = np.concatenate([np.arange(p + c), p + np.arange(len(b) - p - c)])
        if (pos[r, where] != want).any():
            raise ValueError(f"{name}: positions must run 0..P+C-1 then restart at P on the rejected branch")
        s = int(where[0])
        want_pred = np.concatenate([[s], np.arange(s, s + p + c - 1), [s + p - 1], np.arange(s + p + c, where[-1])])
        if (pred[r, where] != want_pred).any():
            raise ValueError(f"{name}: pred_pos must be t - 1, and the last prefix token for the first rejected one")
        if tuple(last[r, k]) != (s + p + c - 1, int(where[-1])):
            raise ValueError(f"{name}: seq_last {tuple(last[r, k])} is not the last chosen / rejected token "
                             f"{(s + p + c - 1, int(where[-1]))}")
    if (seg > valid.shape[1]).any():
        raise ValueError("batch['segment_ids'] holds a slot beyond pairs_per_row")
    used = np.zeros_like(valid)
    for r in range(seg.shape[0]):
        used[r, np.unique(seg[r][seg[r] > 0]) - 1] = True
    if (used != valid).any():
        r, k = (int(x[0]) for x in np.nonzero(used != valid))
        raise ValueError(f"row {r} slot {k}: pair_valid is {bool(valid[r, k])} but the slot has "
                         f"{'tokens' if used[r, k] else 'no tokens'}")
    if "media_offset" in batch:
        end = get("media_offset") + get("media_tiles")
        n = batch["pixel_values"].shape[1]
        if (end > n).any():
            r, k = (int(x[0]) for x in np.nonzero(end > n))
            raise ValueError(f"row {r} slot {k}: media tiles end at {int(end[r, k])} > {n} tiles per row")
