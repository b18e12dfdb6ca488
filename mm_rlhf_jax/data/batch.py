"""The batch contract between the data pipeline and the train steps (numpy, host side).

Preference batches carry an explicit pair axis (index 0 = chosen, 1 = rejected);
chosen and rejected are never the two halves of the batch axis.

    input_ids            int32[B, 2, T]     right-padded token ids
    attention_mask       int32[B, 2, T]     1 = real token, 0 = padding (all padding at the end)
    loss_mask            f32[B, 2, T]       1 = response token t, predicted from position t-1's hidden state
    delta                f32[B]             reward margin r(chosen) - r(rejected); NaN if unknown
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
"""

from typing import TypedDict

import numpy as np

KINDS = ("preference", "reward", "reward_scalar")


class PreferenceBatch(TypedDict, total=False):
    """Keys and shapes in the module docstring; image and video keys are present as groups."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    delta: np.ndarray
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
REQUIRED = ("input_ids", "attention_mask", "loss_mask", "delta", "ref_logps", "is_tie", "query_id", "category")
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
