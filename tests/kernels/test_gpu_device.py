"""Compiled (not interpreted) GPU kernels against the references; needs a CUDA device.

Run on a GPU host with `pytest -q -m gpu tests/kernels`."""

import jax
import jax.numpy as jnp
import pytest

from .helpers import check_attention, ragged_segments
from .test_token_logprobs import _check

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA device")]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_attention_pallas_gpu_compiled(dtype):
    t = 1000
    check_attention("pallas_gpu", dtype, b=2, t=t, hq=8, hkv=2, d=128, segment_ids=ragged_segments(0, 2, t),
                    interpret=False)


def test_attention_pallas_gpu_compiled_all_options():
    check_attention("pallas_gpu", jnp.float32, b=1, t=300, hq=4, hkv=4, d=64, sliding_window=100,
                    logit_soft_cap=20.0, branch_ids=ragged_segments(1, 1, 300) % 3, interpret=False)


def test_token_logprobs_pallas_gpu_compiled():
    _check("pallas_gpu", "gpu_f32", jnp.float32, seed=0, b=2, t=300, h=512, v=5000, entropy=True,
           temperature=0.9, default_blocks=True)


@pytest.mark.parametrize("window", [None, 100])
def test_attention_auto_is_cudnn_and_exact(window):
    """`auto` on a GPU sends unpacked causal bf16 attention to cuDNN (window included)."""
    check_attention("auto", jnp.bfloat16, b=2, t=512, hq=8, hkv=2, d=128, sliding_window=window)
