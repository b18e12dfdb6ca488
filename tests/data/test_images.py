"""Anyres image preprocessing equals transformers' LlavaOnevisionImageProcessorPil."""

import numpy as np
import pytest
from PIL import Image
from transformers import LlavaOnevisionImageProcessorPil

from mm_rlhf_jax.data import images
from mm_rlhf_jax.models import anyres

TINY = images.ImageProcessorConfig(tile_size=32, pinpoints=images.tiny_pinpoints(32))
TINY_HALF = images.ImageProcessorConfig(tile_size=32, pinpoints=((32, 32), (32, 64), (64, 32)),
                                        image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
REAL = images.ImageProcessorConfig()  # 384 tiles, the 36 LLaVA-OV pinpoints, CLIP mean/std


def reference(img, cfg):
    proc = LlavaOnevisionImageProcessorPil(**cfg.to_hf_dict())
    out = proc(images=[img], return_tensors="np")
    return out["pixel_values"][0], tuple(int(s) for s in out["image_sizes"][0])


@pytest.mark.parametrize("cfg, sizes", [
    (TINY, [(32, 32), (32, 64), (64, 32), (64, 64), (20, 50), (77, 33), (13, 7), (150, 90)]),
    (TINY_HALF, [(32, 64), (45, 31), (100, 260)]),
    (REAL, [(384, 384), (500, 300), (300, 900), (1000, 700), (60, 40)]),
], ids=["tiny", "tiny_half_mean", "real_384"])
def test_matches_transformers(cfg, sizes):
    rng = np.random.default_rng(0)
    for h, w in sizes:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref_pv, ref_size = reference(img, cfg)
        pv, size = images.preprocess_image(img, cfg)
        rows, cols = anyres.grid_shape((h, w), cfg.pinpoints, cfg.tile_size)
        assert pv.shape == ref_pv.shape == (1 + rows * cols, 3, cfg.tile_size, cfg.tile_size), (h, w)
        assert size == ref_size == (h, w)
        assert pv.dtype == np.float32
        np.testing.assert_allclose(pv, ref_pv, atol=1e-5, rtol=0, err_msg=f"image {(h, w)}")


def test_pil_modes_match_transformers():
    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 256, (40, 70, 4), dtype=np.uint8), mode="RGBA")
    gray = Image.fromarray(rng.integers(0, 256, (50, 30), dtype=np.uint8), mode="L")
    rgba_array = rng.integers(0, 256, (33, 20, 4), dtype=np.uint8)
    for img in (rgba, gray, rgba_array):
        ref_pv, _ = reference(img, TINY)
        pv, size = images.preprocess_image(img, TINY)
        assert size == np.asarray(img).shape[:2]
        np.testing.assert_allclose(pv, ref_pv, atol=1e-5, rtol=0)


def test_config_round_trip_and_padding():
    proc = LlavaOnevisionImageProcessorPil(**TINY_HALF.to_hf_dict())
    assert images.ImageProcessorConfig.from_hf_dict(proc.to_dict()) == TINY_HALF
    assert TINY.max_patches == 5 and REAL.max_patches == 37
    pv, _ = images.preprocess_image(np.zeros((32, 64, 3), np.uint8), TINY)
    padded = images.pad_patches(pv, 5)
    assert padded.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(padded[:3], pv)
    assert not padded[3:].any()
    with pytest.raises(ValueError, match="max_patches=2"):
        images.pad_patches(pv, 2)
    with pytest.raises(ValueError, match="not a multiple of tile_size=32"):
        images.ImageProcessorConfig(tile_size=32, pinpoints=((32, 48),))
    with pytest.raises(ValueError, match=r"got dtype uint8 shape \(4, 4, 2\)"):
        images.preprocess_image(np.zeros((4, 4, 2), np.uint8), TINY)


def test_image_token_counts_match_transformers_model_counts():
    # env.md §7: a transformers LlavaOnevision model with tile 32 / patch 8 produced 36 and 52
    # image features for image_sizes (32, 32) and (32, 64).
    assert images.num_image_tokens((32, 32), TINY, patch_size=8) == 36
    assert images.num_image_tokens((32, 64), TINY, patch_size=8) == 52
