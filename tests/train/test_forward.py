"""forward.pair_logps scores only response tokens (gathered before the LM head, size picked
at run time): its sums and gradients against the full-sequence path and a full-logits reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mm_rlhf_jax.losses.logprobs import masked_sum, shifted_token_logprobs
from mm_rlhf_jax.train import forward

from tests.train.pair_reference import naive_logps, tiny_lm

T = 64  # gather sizes 8, 16, 32; longer responses take the full-sequence branch


def batch_with_responses(rng, lengths, t=T, float_weights=False):
    """[B, 2, t] pairs whose response of row (i, j) has lengths[i][j] tokens after a random prompt."""
    b = len(lengths)
    ids = rng.integers(7, 300, size=(b, 2, t)).astype(np.int32)
    att = np.ones((b, 2, t), np.int32)
    loss = np.zeros((b, 2, t), np.float32)
    for i in range(b):
        for j in range(2):
            start = int(rng.integers(1, t - lengths[i][j] + 1))
            loss[i, j, start:start + lengths[i][j]] = rng.uniform(0.5, 2.0) if float_weights else 1.0
    return {"input_ids": ids, "attention_mask": att, "loss_mask": loss}


def full_sequence_logps(module, params, batch):
    """The pre-gather path: LM head over every position, masked afterwards."""
    b, n, t = batch["input_ids"].shape
    hidden = forward.forward_pairs(module, params, batch).hidden_states
    lp = shifted_token_logprobs(hidden, module.lm_head_weight(params), batch["input_ids"].reshape(b * n, t))
    return masked_sum(lp, batch["loss_mask"].reshape(b * n, t))[0].reshape(b, n)


def test_gather_sizes():
    assert forward.gather_sizes(512) == (64, 128, 256)
    assert forward.gather_sizes(64) == (8, 16, 32)
    assert forward.gather_sizes(4) == ()  # too short to gather: full path only


@pytest.mark.parametrize("lengths,float_weights", [
    ([[3, 8], [5, 1]], False),      # all <= 8: smallest gather
    ([[20, 9], [31, 2]], True),     # <= 32: largest gather, weighted mask
    ([[50, 4], [12, 63]], False),   # a row longer than 32: full-sequence branch
])
def test_pair_logps_matches_full_path_and_reference(lengths, float_weights):
    rng = np.random.default_rng(sum(map(sum, lengths)))
    module = tiny_lm()
    params = module.init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))["params"]
    batch = batch_with_responses(rng, lengths, float_weights=float_weights)
    sums, counts = jax.jit(functools.partial(forward.pair_logps, module))(params, batch)
    np.testing.assert_allclose(counts, batch["loss_mask"].sum(-1), rtol=1e-6)
    if not float_weights:
        np.testing.assert_allclose(sums, naive_logps(module, params, batch), rtol=1e-4)  # as the MM-DPO step test
    full = jax.jit(functools.partial(full_sequence_logps, module))(params, batch)
    np.testing.assert_allclose(sums, full, rtol=1e-5)

    # Gradients: same as the full-sequence path, for the params and the hidden states alike.
    r = jnp.asarray(rng.normal(size=(2, 2)), jnp.float32)
    g = jax.jit(jax.grad(lambda p: jnp.sum(forward.pair_logps(module, p, batch)[0] * r)))(params)
    g_full = jax.jit(jax.grad(lambda p: jnp.sum(full_sequence_logps(module, p, batch) * r)))(params)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(g_full)):
        scale = float(jnp.abs(b).max()) + 1e-12
        assert float(jnp.abs(a - b).max()) <= 1e-5 * scale, jax.tree_util.keystr(path)
