"""MM-DPO step: its numbers against a full-logits numpy reference, and no [B, T, V] buffer when compiled."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mm_rlhf_jax.models import hf
from mm_rlhf_jax.sharding import make_mesh
from mm_rlhf_jax.algorithms.mm_dpo import step as dpo_step
from mm_rlhf_jax.config_lib import dpo_block, optim_block
from mm_rlhf_jax.losses import preference
from mm_rlhf_jax.train import forward, partition, state as state_lib
from mm_rlhf_jax.train.optim import make_optimizer

from tests.train.pair_reference import assert_same_update, naive_logps, pair_batch, tiny_lm


def dpo_cfg(**kw):
    return dpo_block(**kw)


def test_step_loss_equals_hand_computed_mm_dpo():
    rng = np.random.default_rng(0)
    module = tiny_lm()
    params = module.init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))["params"]
    batch = pair_batch(rng, 3, 24, 300)
    logps, counts = jax.jit(functools.partial(forward.pair_logps, module))(params, batch)
    ref_logps = naive_logps(module, params, batch)
    np.testing.assert_allclose(logps, ref_logps, rtol=1e-4)
    np.testing.assert_array_equal(counts, batch["loss_mask"].sum(-1))

    c = dpo_cfg()
    loss, metrics = jax.jit(lambda p, b: dpo_step.dpo_terms(module, p, b, jax.random.PRNGKey(0), c, dpo_step.counts(b)))(params, batch)
    pc, pr = np.asarray(logps[:, 0], np.float64), np.asarray(logps[:, 1], np.float64)  # checked above
    rc, rr = batch["ref_logps"][:, 0], batch["ref_logps"][:, 1]
    beta = 0.1 * (1 + 0.5 * (1 - np.exp(-0.5 * batch["delta"])))  # MM-DPO's dynamic beta
    dpo = np.mean(np.logaddexp(0.0, -beta * ((pc - rc) - (pr - rr))))  # -log sigmoid
    sft = -pc.sum() / batch["loss_mask"][:, 0].sum()
    np.testing.assert_allclose(metrics["dpo/loss"], dpo, rtol=1e-5)
    np.testing.assert_allclose(metrics["dpo/sft_nll"], sft, rtol=1e-5)
    np.testing.assert_allclose(loss, dpo + 0.25 * sft, rtol=1e-5)
    np.testing.assert_allclose(metrics["dpo/beta"], beta.mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["rewards/margin"], np.mean(beta * ((pc - rc) - (pr - rr))), rtol=1e-4)

    # The release's anchor: the mean over pairs of each chosen answer's token-mean NLL.
    c = dpo_cfg(sft_norm="sequences")
    loss_s, m_s = jax.jit(lambda p, b: dpo_step.dpo_terms(module, p, b, jax.random.PRNGKey(0), c,
                                                          dpo_step.counts(b)))(params, batch)
    sft_seq = np.mean(-pc / batch["loss_mask"][:, 0].sum(-1))
    assert abs(sft_seq - sft) > 1e-3  # the pairs' answer lengths differ, so the two norms do
    np.testing.assert_allclose(m_s["dpo/sft_nll"], sft_seq, rtol=1e-5)
    np.testing.assert_allclose(loss_s, dpo + 0.25 * sft_seq, rtol=1e-5)
    with pytest.raises(ValueError, match="sft_norm"):
        dpo_step.dpo_terms(module, params, batch, jax.random.PRNGKey(0), dpo_cfg(sft_norm="mean"),
                           dpo_step.counts(batch))

    # The release's per-pair path: max(beta * (1 + w * ls_factor), 1e-3); the last pair hits the clamp.
    ls = np.asarray([0.39, 2.0, -30.0], np.float32)
    c = dpo_cfg(beta_mode="ls_factor", w=0.1)
    _, m_ls = jax.jit(lambda p, b: dpo_step.dpo_terms(module, p, b, jax.random.PRNGKey(0), c, dpo_step.counts(b)))(
        params, {**batch, "ls_factor": ls})
    beta_ls = np.maximum(0.1 * (1 + 0.1 * ls.astype(np.float64)), 1e-3)
    assert beta_ls[2] == 1e-3
    np.testing.assert_allclose(m_ls["dpo/loss"], np.mean(np.logaddexp(0.0, -beta_ls * ((pc - rc) - (pr - rr)))),
                               rtol=1e-5)
    np.testing.assert_allclose(m_ls["dpo/beta"], beta_ls.mean(), rtol=1e-6)

    c = dpo_cfg(beta_mode="constant")
    _, m_c = jax.jit(lambda p, b: dpo_step.dpo_terms(module, p, b, jax.random.PRNGKey(0), c, dpo_step.counts(b)))(params, batch)
    np.testing.assert_allclose(m_c["dpo/loss"], np.mean(np.logaddexp(0.0, -0.1 * ((pc - rc) - (pr - rr)))),
                               rtol=1e-5)


def _largest_buffer(hlo_text: str) -> int:
    """Element count of the largest array shape in an HLO module's text."""
    sizes = [int(np.prod([int(d) for d in dims.split(",")])) for dims in re.findall(r"[fs]\d+\[([\d,]+)\]", hlo_text)]
    return max(sizes)


@pytest.mark.parametrize("impl,expect_full", [("auto", False), ("reference", True)])
def test_compiled_train_step_never_holds_full_logits(impl, expect_full, monkeypatch):
    """The compiled DPO train step (one device) has no buffer as large as the [B*2*T, V] logits.

    The naive path (impl="reference") is compiled too, to show the check sees such a buffer when it exists.
    """
    b, t, vocab = 4, 257, 8192  # 2048 predicted tokens: above the chunked path's 1024-token chunks
    module = tiny_lm(vocab=vocab, hidden=16)
    if impl == "reference":
        real = forward.shifted_token_logprobs
        monkeypatch.setattr(forward, "shifted_token_logprobs", lambda *a, **k: real(*a, **{**k, "impl": "reference"}))
    mesh = make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    with jax.set_mesh(mesh):
        abstract = hf.abstract_params(module)
        from mm_rlhf_jax.sharding import TRAIN_RULES, unbox_values

        tx = make_optimizer(optim_block(), 10)
        mask = partition.trainable_mask(unbox_values(abstract), (".*",))
        shardings = state_lib.state_shardings(abstract, mesh, TRAIN_RULES, tx, mask)
        abstract_state = jax.eval_shape(
            lambda p: state_lib.create_state(p, tx, mask, jax.random.PRNGKey(0), shardings), unbox_values(abstract))
        batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                             pair_batch(np.random.default_rng(0), b, t, vocab))
        step = functools.partial(dpo_step.train_step, module=module, tx=tx, mask=mask, c=dpo_cfg())
        hlo = jax.jit(step).lower(abstract_state, batch).compile().as_text()
    full_logits = b * 2 * (t - 1) * vocab
    assert (_largest_buffer(hlo) >= full_logits) == expect_full, (_largest_buffer(hlo), full_logits)


@pytest.mark.parametrize("beta_mode,sft_norm", [("paper", "tokens"), ("constant", "tokens"), ("paper", "sequences")])
def test_accumulated_step_equals_the_full_batch_step(beta_mode, sft_norm):
    """4 microbatches scanned inside the step == one pass over the batch: loss, metrics and the update."""
    module = tiny_lm(dtype=jnp.float32)
    params = hf.init_params(module, jax.random.PRNGKey(0))
    batch = pair_batch(np.random.default_rng(3), 8, 24, 300)
    tx = optax.sgd(0.1)  # plain SGD: the update is the gradient (Adam would amplify float noise in ~0 grads)
    mask = jax.tree.map(lambda _: True, params)
    out = {}
    for k in (1, 4):
        state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                     rng=jax.random.PRNGKey(1))
        step = jax.jit(functools.partial(dpo_step.train_step, module=module, tx=tx, mask=mask,
                                         c=dpo_cfg(beta_mode=beta_mode, loss_type="ipo", sft_norm=sft_norm),
                                         microbatches=k))
        out[k] = jax.device_get(step(state, batch))
    (s1, m1), (s4, m4) = out[1], out[4]
    for key in m1:
        np.testing.assert_allclose(m4[key], m1[key], rtol=2e-5, atol=1e-6, err_msg=key)
    assert_same_update(jax.device_get(params), s4.params, s1.params)
    assert float(m1["train/grad_norm"]) > 0


def test_released_beta_is_one_beta_per_microbatch():
    """The release computes its batch-level beta per micro-step over the gathered device batch (32 pairs at
    per-device batch 1 on 32 GPUs): here one beta per microbatch of batch / microbatches pairs (rows j, j+k, ...)."""
    module = tiny_lm(dtype=jnp.float32)
    params = hf.init_params(module, jax.random.PRNGKey(0))
    batch = pair_batch(np.random.default_rng(4), 8, 24, 300)
    batch["ref_logps"] = batch["ref_logps"] * 0.0 + np.asarray(
        np.random.default_rng(5).normal(size=(8, 2)) * 20.0, np.float32)  # spread the implicit-reward margins
    tx, mask, c, k = optax.sgd(0.1), jax.tree.map(lambda _: True, params), dpo_cfg(beta_mode="released", w=0.5), 2
    state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                 rng=jax.random.PRNGKey(1))
    _, m = jax.jit(functools.partial(dpo_step.train_step, module=module, tx=tx, mask=mask, c=c, microbatches=k))(
        state, batch)
    logps = np.asarray(jax.jit(functools.partial(forward.pair_logps, module))(params, batch)[0])
    logits = (logps[:, 0] - batch["ref_logps"][:, 0]) - (logps[:, 1] - batch["ref_logps"][:, 1])
    key = jax.random.fold_in(jax.random.PRNGKey(1), 0)  # the step's key, as train_step derives it
    betas = [float(preference.released_beta(jnp.asarray(logits[j::k]), beta=0.1, w=0.5, key=key)) for j in range(k)]
    whole = float(preference.released_beta(jnp.asarray(logits), beta=0.1, w=0.5, key=key))
    assert abs(betas[0] - betas[1]) > 1e-4 and min(abs(b - whole) for b in betas) > 1e-5
    np.testing.assert_allclose(m["dpo/beta"], np.mean(betas), rtol=1e-5)
