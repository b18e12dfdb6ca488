"""The batch contract: validate_batch accepts the documented layout and names what is wrong."""

import numpy as np
import pytest

from mm_rlhf_jax.data.batch import validate_batch


def good(b=2, t=6, p=3, f=4, hw=8, kind="preference"):
    att = np.zeros((b, 2, t), np.int32)
    att[..., :4] = 1
    loss = np.zeros((b, 2, t), np.float32)
    loss[..., 2:4] = 1
    out = {
        "input_ids": np.ones((b, 2, t), np.int32), "attention_mask": att, "loss_mask": loss,
        "delta": np.full(b, np.nan, np.float32), "ls_factor": np.full(b, np.nan, np.float32), "ref_logps": np.zeros((b, 2), np.float32),
        "is_tie": np.zeros(b, bool), "query_id": np.arange(b, dtype=np.int32), "category": np.zeros(b, np.int32),
        "pixel_values": np.zeros((b, p, 3, hw, hw), np.float32), "image_sizes": np.zeros((b, 2), np.int32),
        "has_image": np.ones(b, bool),
        "pixel_values_videos": np.zeros((b, f, 3, hw, hw), np.float32), "has_video": np.zeros(b, bool),
    }
    if kind == "reward":
        out["has_critique"] = np.ones(b, bool)
    return out


def test_good_batches_and_bound_sizes():
    sizes = validate_batch(good())
    assert sizes == {"B": 2, "T": 6, "P": 3, "H": 8, "W": 8, "F": 4, "Hv": 8, "Wv": 8}
    assert validate_batch(good(kind="reward"), kind="reward")["T"] == 6
    text_only = {k: v for k, v in good().items() if "pixel" not in k and k not in ("image_sizes", "has_image",
                                                                                      "has_video")}
    assert validate_batch(text_only) == {"B": 2, "T": 6}


@pytest.mark.parametrize("mutate, kind, match", [
    (lambda b: b.pop("ref_logps"), "preference", r"missing keys \['ref_logps'\]"),
    (lambda b: None, "reward", r"missing keys \['has_critique'\]"),
    (lambda b: b.update(loss_mask=np.zeros((2, 6), np.float32)), "preference",
     r"batch\['loss_mask'\] has shape \[2, 6\], expected \[B, 2, T\]"),
    (lambda b: b.update(input_ids=np.ones((4, 6), np.int32)), "preference",
     r"batch\['input_ids'\] has shape \[4, 6\], expected \[B, 2, T\]"),
    (lambda b: b.update(delta=np.zeros(3, np.float32)), "preference",
     r"batch\['delta'\] has shape \[3\], expected \[B\] with \{'B': 2\}"),
    (lambda b: b.update(input_ids=np.ones((2, 2, 6), np.int64)), "preference",
     r"batch\['input_ids'\] has dtype int64, expected int32"),
    (lambda b: b.pop("has_image"), "preference", "the image keys come together"),
    (lambda b: b.update(chosen_input_ids=b["input_ids"]), "preference", r"unknown keys \['chosen_input_ids'\]"),
    (lambda b: b["attention_mask"].__setitem__((0, 1, 0), 0), "preference", "not right-padded"),
    (lambda b: b["loss_mask"].__setitem__((1, 0, 5), 1.0), "preference", "marks padding"),
    (lambda b: (b["loss_mask"].__setitem__((1, 0, 0), 1.0)), "preference", r"loss_mask'\]\[\.\.\., 0\] must be 0"),
])
def test_bad_batches_name_key_and_shape(mutate, kind, match):
    b = good()
    mutate(b)
    with pytest.raises(ValueError, match=match):
        validate_batch(b, kind=kind)
