"""Kernels are chosen for the TARGET platform: a target_platform context, else the
ambient mesh's devices, else the default backend; tables follow the TPU generation."""

import jax
import jax.numpy as jnp
import pytest

from mm_rlhf_jax import kernels
from mm_rlhf_jax.kernels import chips, dispatch
from mm_rlhf_jax.kernels.attention import blocks as attention_blocks
from mm_rlhf_jax.kernels.token_logprobs import blocks as logprob_blocks
from mm_rlhf_jax.sharding import make_mesh

S = jax.ShapeDtypeStruct
_LOGPROB_SHAPES = (S((1, 16, 128), jnp.float32), S((128, 300), jnp.float32), S((1, 16), jnp.int32))


def _logprobs(h, w, l):
    return kernels.token_logprobs(h, w, l)


def _uses_pallas(fn, *shapes):
    return "pallas_call" in str(jax.jit(fn).trace(*shapes).jaxpr)


def test_default_target_is_the_host_backend():
    target = kernels.current_target()
    assert target.platform == jax.default_backend() == "cpu"
    assert target.generation is None


@pytest.mark.parametrize("kind, generation", [("TPU v4", "v4"), ("TPU v5 lite", "v5e"), ("TPU v5", "v5p"),
                                              ("TPU v5p", "v5p"), ("TPU v6 lite", "v6e"), ("TPU v4 lite", None)])
def test_device_kinds_map_to_generations(kind, generation):
    assert chips.generation_of(kind) == generation
    with kernels.target_platform("tpu", device_kind=kind) as target:
        assert kernels.current_target() == target and target.generation == generation


def test_context_selects_impl_interpret_and_nests():
    with kernels.target_platform("tpu", device_kind="TPU v5p"):
        assert dispatch.resolve_interpret("pallas_tpu", None) is False
        with kernels.target_platform("gpu"):
            assert kernels.current_target().platform == "gpu"
            assert dispatch.resolve_interpret("pallas_tpu", None) is True
            assert dispatch.resolve_interpret("pallas_gpu", None) is False
        assert kernels.current_target().generation == "v5p"
    assert kernels.current_target().platform == "cpu"
    assert dispatch.resolve_interpret("pallas_tpu", None) is True
    assert dispatch.resolve_interpret("pallas_tpu", pltpu_params := object()) is pltpu_params


def test_one_jitted_function_traces_once_per_target():
    """The target is part of jax's trace-cache key: re-lowering the same jitted
    function under another target must not reuse the CPU trace."""
    f = jax.jit(_logprobs)
    assert "pallas_call" not in str(f.trace(*_LOGPROB_SHAPES).jaxpr)  # CPU: chunked XLA
    with kernels.target_platform("tpu", device_kind="TPU v5 lite"):
        assert "pallas_call" in str(f.trace(*_LOGPROB_SHAPES).jaxpr)
    assert "pallas_call" not in str(f.trace(*_LOGPROB_SHAPES).jaxpr)


def test_mesh_devices_are_the_target():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1})
    with jax.set_mesh(mesh):
        assert kernels.current_target() == dispatch.Target("cpu", mesh.devices.flat[0].device_kind)
    with kernels.target_platform(mesh=mesh) as target:
        assert target.platform == "cpu"
    with kernels.target_platform(devices=jax.devices()[:2]) as target:
        assert target.platform == "cpu"


def test_tables_follow_the_target_generation():
    """Each generation has its own entry; unknown kinds fall back to v5p's; v4's fit 16 MiB."""
    for gen in chips.generations():
        assert gen in logprob_blocks.TPU_TABLES and gen in attention_blocks.TPU_TABLES
        for table in (logprob_blocks.TPU_TABLES[gen], attention_blocks.TPU_TABLES[gen]):
            assert table.vmem_limit_bytes < chips.CHIPS[gen].vmem_bytes
    assert logprob_blocks.tpu_table(None) == logprob_blocks.TPU_TABLES["v5p"]
    assert logprob_blocks.TPU_TABLES["v4"].blocks.block_n < logprob_blocks.TPU_TABLES["v6e"].blocks.block_n
    # Which tiles a traced call gets: the forward kernel's grid shows them (V=300 -> one 384 tile).
    seen = {}
    for kind in ("TPU v4", "TPU v6 lite"):
        with kernels.target_platform("tpu", device_kind=kind):
            jaxpr = str(jax.jit(_logprobs).trace(
                S((1, 4096, 128), jnp.bfloat16), S((128, 300), jnp.bfloat16), S((1, 4096), jnp.int32)).jaxpr)
        seen[kind] = jaxpr
    # v4: 512-token forward tiles -> 8 token blocks; v6e: 2048 -> 2.
    assert "grid=(8, 1, 1)" in seen["TPU v4"].replace("grid_mapping=GridMapping(grid=", "grid=")
    assert "grid=(2, 1, 1)" in seen["TPU v6 lite"].replace("grid_mapping=GridMapping(grid=", "grid=")


def test_bad_target_arguments():
    with pytest.raises(ValueError, match="exactly one of"):
        with kernels.target_platform():
            pass
    with pytest.raises(ValueError, match="must be one of"):
        with kernels.target_platform("tpuv5"):
            pass
    with pytest.raises(ValueError, match="device_kind goes with platform"):
        with kernels.target_platform(devices=jax.devices()[:1], device_kind="TPU v4"):
            pass


def test_auto_on_gpu_target():
    """GPU: attention auto -> cuDNN when it expresses the mask (bf16, no segments /
    branches / soft-cap / offset), else the Triton kernel; token_logprobs auto ->
    chunked XLA with 1024-token chunks (CPU: cache-sized ones)."""
    from mm_rlhf_jax.kernels.attention.api import select_impl

    gpu = dispatch.Target("gpu", "NVIDIA H100 80GB HBM3")
    q, q32 = S((1, 256, 4, 64), jnp.bfloat16), S((1, 256, 4, 64), jnp.float32)
    seg = S((1, 256), jnp.int32)
    assert select_impl("auto", q, q, target=gpu) == "cudnn"
    assert select_impl("auto", q, q, target=gpu, segment_ids=seg) == "pallas_gpu"
    assert select_impl("auto", q, q, target=gpu, branch_ids=seg) == "pallas_gpu"
    assert select_impl("auto", q, q, target=gpu, logit_soft_cap=30.0) == "pallas_gpu"
    assert select_impl("auto", q, q, target=gpu, q_offset=S((), jnp.int32)) == "pallas_gpu"
    assert select_impl("auto", q32, q32, target=gpu) == "pallas_gpu"
    assert select_impl("xla", q, q, target=gpu) == "xla"
    assert select_impl("auto", q, q, target=dispatch.Target("tpu", "TPU v4")) == "pallas_tpu"
    with kernels.target_platform("gpu"):
        assert not _uses_pallas(_logprobs, *_LOGPROB_SHAPES)
    assert logprob_blocks.xla_chunk("gpu", 152064) == 1024
    assert logprob_blocks.xla_chunk("cpu", 152064) == 64 and logprob_blocks.xla_chunk("cpu", 32000) == 512
