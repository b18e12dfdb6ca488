"""kernels.decode_attention over a head-major KV cache == the dense reference on the [B, S, Hkv, D] view."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mm_rlhf_jax import kernels
from mm_rlhf_jax.kernels.attention.reference import mha_reference


@pytest.mark.parametrize("t,window", [(1, None), (3, None), (1, 5), (4, 3)])
def test_decode_attention_matches_reference(t, window):
    b, s, hq, hkv, d = 3, 20, 4, 2, 8
    ks = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(ks[0], (b, t, hq, d))
    k = jax.random.normal(ks[1], (b, s, hkv, d))
    v = jax.random.normal(ks[2], (b, s, hkv, d))
    offset = 12  # queries at slots 12 .. 12 + t - 1; later slots are empty
    kv_seg = np.zeros((b, s), np.int32)
    kv_seg[:, :offset + t] = 1
    kv_seg[0, :4] = 0  # row 0 left-padded
    kv_seg[1, 2:6] = 2  # a key segment row 1's queries must not see
    q_seg = np.ones((b, t), np.int32)
    q_seg[2, -1] = 0  # a padding query sees nothing
    got = kernels.decode_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), segment_ids=q_seg,
                                   kv_segment_ids=kv_seg, q_offset=jnp.int32(offset), sliding_window=window)
    want = mha_reference(q, k, v, segment_ids=q_seg, kv_segment_ids=kv_seg, q_offset=offset,
                         sliding_window=window)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.asarray(got[2, -1]).any()
