"""The in-graph (jnp) anyres layout equals the host geometry; bilinear taps equal torch's interpolate."""

import jax
import numpy as np
import pytest
import torch

from mm_rlhf_jax.models import anyres

OV_PINPOINTS = tuple((384 * i, 384 * j) for i in range(1, 7) for j in range(1, 7))


def test_layout_matches_host_geometry_real_pinpoints():
    """LLaVA-OV 7B geometry (384 tiles, 27x27 patches, anyres_max_9) on 3000 random and edge sizes."""
    rng = np.random.RandomState(0)
    sizes = np.concatenate([rng.randint(10, 4000, (3000, 2)),
                            [[384, 384], [384, 2304], [2304, 384], [1, 1], [49, 4000], [768, 1152], [383, 385]]])
    layout = jax.jit(lambda s: anyres.image_layout_jnp(s, OV_PINPOINTS, 384, 27, 9))(sizes)
    layout = {k: np.asarray(v) for k, v in layout.items()}
    for b, (h, w) in enumerate(sizes):
        size = (int(h), int(w))
        grid = anyres.grid_shape(size, OV_PINPOINTS, 384)
        (uh, uw), pad = anyres.unpadded_shape(size, grid, 27)
        assert (layout["rows"][b], layout["cols"][b]) == grid, size
        assert (layout["height"][b], layout["width"][b]) == (uh, uw), size
        assert max(layout["off_y"][b], layout["off_x"][b]) == pad, size
        assert (layout["out_h"][b], layout["out_w"][b]) == anyres.downscaled_shape((uh, uw), 27, 9), size
        assert layout["num_tokens"][b] == anyres.num_image_tokens(size, OV_PINPOINTS, 384, 14, "anyres_max_9"), size


@pytest.mark.parametrize("in_size, out_size", [(54, 37), (162, 81), (27, 14), (7, 4), (4, 2), (5, 5), (3, 7)])
def test_bilinear_matrix_equals_torch(in_size, out_size):
    x = np.random.RandomState(in_size).randn(in_size).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.tensor(x)[None, None, None], size=(1, out_size), mode="bilinear")
    np.testing.assert_allclose(anyres.bilinear_matrix(in_size, out_size) @ x, ref.numpy()[0, 0, 0], atol=1e-6)


def test_token_sources_downscaled_map_by_hand():
    """A 2x2 grid on a 4-patch tile whose 8x6 unpadded map is resized to 6x4 (the tiny test image (60, 50))."""
    pinpoints = ((32, 32), (32, 64), (64, 32), (64, 64))

    @jax.jit
    def sources(sizes, ordinal):
        layout = anyres.image_layout_jnp(sizes, pinpoints, 32, 4, 2)
        return layout, anyres.image_token_sources(layout, ordinal, 4)

    layout, (idx, w, newline) = sources(np.array([[60, 50]]), np.arange(46)[None])
    assert {k: int(v[0]) for k, v in layout.items()} == dict(
        rows=2, cols=2, height=8, width=6, off_y=0, off_x=1, out_h=6, out_w=4, num_tokens=16 + 6 * 5)
    idx, w, newline = (np.asarray(a)[0] for a in (idx, w, newline))
    np.testing.assert_array_equal(idx[:16, 0], np.arange(16))  # base tile first, weight 1
    np.testing.assert_array_equal(w[:16], np.tile([1.0, 0, 0, 0], (16, 1)))
    np.testing.assert_array_equal(np.nonzero(newline)[0], 16 + 5 * np.arange(6) + 4)
    # Output row 0, col 1: y = max(0.5 * 8 / 6 - 0.5, 0) = 0.1667, x = 0.5 * 1.5 * 3 - 0.5 = 1.75 (+1 unpad offset):
    # rows 0/1 of tile 1 (top-left), columns 2/3 -> patch ids (y*4 + x) in tile 1 (flat offset 16).
    ly, lx = 0.5 * 8 / 6 - 0.5, (1 + 0.5) * 6 / 4 - 0.5 - 1
    np.testing.assert_array_equal(idx[17], [16 + 2, 16 + 3, 16 + 4 + 2, 16 + 4 + 3])
    np.testing.assert_allclose(w[17], [(1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx], atol=1e-6)
