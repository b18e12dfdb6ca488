"""LLaVA-OneVision (and its SigLIP tower) loaded through hf.load_pretrained match transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mm_rlhf_jax.models import hf
from mm_rlhf_jax.models.siglip import SiglipVisionModel

from .conftest import IMAGE_ID, assert_logits_match, text_batch, torch_logits, vlm_batch


@pytest.fixture(scope="module")
def llava(checkpoints):
    ckpt = checkpoints("llava")
    model, params = hf.load_pretrained(ckpt.path)
    return ckpt, model, params


def test_config_loaded(llava):
    _, model, _ = llava
    cfg = model.config
    assert cfg.image_grid_pinpoints == ((32, 32), (32, 64), (64, 32), (64, 64))
    assert (cfg.image_token_id, cfg.video_token_id, cfg.vision_aspect_ratio) == (500, 501, "anyres_max_2")
    assert (cfg.vision.patches_per_side, cfg.text.architecture, cfg.text.qkv_bias) == (4, "qwen2", True)


def test_siglip_hidden_states_match(llava):
    """hidden_states indexing (0 = embeddings, -1 = last layer before post_layernorm) and last_hidden_state."""
    ckpt, model, params = llava
    tower = SiglipVisionModel(model.config.vision)
    vparams = {"params": params["vision_tower"]}
    pixels = np.random.RandomState(0).randn(3, 3, 32, 32).astype(np.float32)
    with torch.no_grad():
        ref = ckpt.torch_model.model.vision_tower(torch.tensor(pixels), output_hidden_states=True)
    hidden = [h.numpy() for h in ref.hidden_states]
    assert len(hidden) == 3
    # Several layers concatenate on the feature axis, in the order asked.
    layers = (0, 1, -2, -1)
    feats = np.asarray(jax.jit(lambda p, x: tower.apply(p, x, layers))(vparams, pixels))
    for i, expected in enumerate([hidden[0], hidden[1], hidden[1], hidden[2]]):
        np.testing.assert_allclose(feats[..., 64 * i:64 * (i + 1)], expected, atol=2e-5, err_msg=f"layer {layers[i]}")
    last = jax.jit(lambda p, x: tower.apply(p, x, post_layernorm=True))(vparams, pixels)
    np.testing.assert_allclose(last, ref.last_hidden_state.numpy(), atol=2e-5)
    # image_size not a multiple of patch_size (real SigLIP: 384 px, patch 14): the valid conv drops the rest.
    odd = np.random.RandomState(1).randn(2, 3, 34, 34).astype(np.float32)
    with torch.no_grad():
        ref = ckpt.torch_model.model.vision_tower(torch.tensor(odd)).last_hidden_state.numpy()
    tower34 = SiglipVisionModel(model.config.vision.replace(image_size=34))
    np.testing.assert_allclose(tower34.apply(vparams, odd, post_layernorm=True), ref, atol=2e-5)


def test_text_only_logits(llava):
    ckpt, model, params = llava
    ids, mask = text_batch(seed=4)
    fwd = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m).logits)
    ref = torch_logits(ckpt.torch_model, input_ids=ids, attention_mask=mask)
    assert_logits_match(fwd(params, jnp.asarray(ids), jnp.asarray(mask)), ref, mask)


def test_images_and_video_logits(llava):
    """One batch: images on 1x2, 2x1 and 2x2 grids (the last unpadded and anyres_max-downscaled) and a video."""
    ckpt, model, params = llava
    batch = vlm_batch(seed=5)
    n_img = (batch.input_ids == IMAGE_ID).sum(-1)
    assert n_img[:3].tolist() == [52, 56, 46]  # 16 base + 4x(8+1), 8x(4+1), downscaled 6x(4+1)
    fwd = jax.jit(lambda p, *a: model.apply({"params": p}, *a).logits)
    ours = fwd(params, *(jnp.asarray(x) for x in (batch.input_ids, batch.attention_mask, batch.pixel_values,
                                                 batch.image_sizes, batch.pixel_values_videos)))
    ref = torch_logits(ckpt.torch_model, **batch.torch_inputs)
    assert_logits_match(ours, ref, batch.attention_mask)
    # The image tokens really carry image information: dropping the pixels changes those logits.
    blank = fwd(params, *(jnp.asarray(x) for x in (batch.input_ids, batch.attention_mask,
                                                  np.zeros_like(batch.pixel_values), batch.image_sizes,
                                                  batch.pixel_values_videos)))
    assert np.abs(np.asarray(blank) - ref)[:3].max() > 1e-2


def test_token_count_mismatch_raises(llava):
    _, model, params = llava
    batch = vlm_batch(seed=6)
    ids = batch.input_ids.copy()
    first = int(np.argmax(ids[1] == IMAGE_ID))
    ids[1, first] = 7  # one <image> token fewer in example 1
    args = (jnp.asarray(ids), jnp.asarray(batch.attention_mask), jnp.asarray(batch.pixel_values),
            jnp.asarray(batch.image_sizes), jnp.asarray(batch.pixel_values_videos))
    with pytest.raises(ValueError, match=r"example 1: image of size \(64, 32\) gives 56 image features, but "
                                         r"input_ids hold 55 <image> tokens"):
        model.apply({"params": params}, *args)
    # Inputs closed over by a jitted function are still concrete, so they are checked too ...
    with pytest.raises(ValueError, match="example 1: image of size"):
        jax.jit(lambda p: model.apply({"params": p}, *args).logits)(params)
    # ... while traced inputs cannot be (documented): tracing succeeds.
    traced = jax.eval_shape(lambda p, *a: model.apply({"params": p}, *a).logits, params, *args)
    assert traced.shape == (*ids.shape, 512)
    with pytest.raises(ValueError, match="example 0: input_ids hold 52 <image> tokens but no image"):
        model.apply({"params": params}, jnp.asarray(batch.input_ids))
    vids = batch.pixel_values_videos[:, :1]  # 1 frame: 5 features, but the ids hold 9 <video> tokens
    with pytest.raises(ValueError, match="example 3: a video of 1 frames gives 5 video features, but input_ids hold 9"):
        model.apply({"params": params}, jnp.asarray(batch.input_ids), *args[1:4], jnp.asarray(vids))


def test_vision_remat_gradients_equal(llava):
    """remat on the SigLIP tower changes memory use, not gradients."""
    _, model, params = llava
    pixels = jnp.asarray(np.random.RandomState(1).randn(2, 3, 32, 32).astype(np.float32))

    def grads(cfg):
        tower = SiglipVisionModel(cfg)
        loss = lambda p: jnp.sum(tower.apply({"params": p}, pixels, -1) ** 2)  # noqa: E731
        return jax.jit(jax.grad(loss))(params["vision_tower"])

    g0, g1 = grads(model.config.vision), grads(model.config.vision.replace(remat="full"))
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-6 * (1 + float(np.abs(a).max())))
    assert float(np.abs(g0["embeddings"]["patch_embedding"]["kernel"]).max()) > 0
