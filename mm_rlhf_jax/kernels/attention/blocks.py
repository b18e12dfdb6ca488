"""Default attention tiles per implementation and (Pallas TPU) per TPU generation.

Pallas TPU: tiles of >= 512 queries keep the q-tile arithmetic intensity (about
block_q FLOP/byte) above the v4 / v5e / v5p ridge points (the 128 defaults of jax's
own kernels ran at 3.7% of v5e peak, jax#24633); v6e's ridge is ~560 FLOP/B, so
its forward takes 1024-query tiles (its 128 MiB of VMEM holds the larger f32 score
tile). KV tiles are multiples of 128 lanes. v4 has 16 MiB of VMEM per core; the
512 x 512 tiles with the block-sparse fast path fit it, as the Mosaic compile tests
check for every generation (tests/kernels/test_tpu_compile.py). Targets that are
not a known TPU generation (interpret mode on CPU, new chips) use the v5p entry.
Untuned on hardware: no TPU was available, only the compiler.

Pallas GPU (Triton): power-of-two tiles sized for registers/SMEM at head_dim <= 128
(FA2-style). XLA blocked (CPU): 512 x 512 keeps one f32 score tile per head at
1 MiB, small enough for the caches of a CPU host. XLA dense (CPU, short sequences):
static query chunks of 128 rows; 64-256 measured within noise of each other at
T = 512 (bench/RESULTS.md), smaller chunks unroll more ops.
Blocks are clamped to the (padded) sequence lengths at call time.
"""

import dataclasses

from mm_rlhf_jax.kernels.attention.common import BlockSizes
from mm_rlhf_jax.kernels.chips import MiB


@dataclasses.dataclass(frozen=True)
class TpuTable:
    blocks: BlockSizes
    vmem_limit_bytes: int  # scoped VMEM limit of every pallas_call


TPU_TABLES = {
    "v4": TpuTable(BlockSizes(block_q=512, block_kv=512, block_q_bwd=512, block_kv_bwd=512), 15 * MiB),
    "v5e": TpuTable(BlockSizes(block_q=512, block_kv=512, block_q_bwd=512, block_kv_bwd=512), 64 * MiB),
    "v5p": TpuTable(BlockSizes(block_q=512, block_kv=512, block_q_bwd=512, block_kv_bwd=512), 48 * MiB),
    "v6e": TpuTable(BlockSizes(block_q=1024, block_kv=512, block_q_bwd=512, block_kv_bwd=512), 64 * MiB),
}
DEFAULT_GENERATION = "v5p"

DEFAULT_BLOCK_SIZES = {
    "pallas_gpu": BlockSizes(block_q=128, block_kv=64, block_q_bwd=64, block_kv_bwd=64),
    "xla": BlockSizes(block_q=512, block_kv=512, block_q_bwd=512, block_kv_bwd=512),
    "xla_dense": BlockSizes(block_q=128, block_kv=128, block_q_bwd=128, block_kv_bwd=128),
}


def tpu_table(generation: str | None) -> TpuTable:
    return TPU_TABLES.get(generation, TPU_TABLES[DEFAULT_GENERATION])


def default_block_sizes(impl: str, generation: str | None = None) -> BlockSizes | None:
    """The impl's tiles (pallas_tpu: of the TPU generation); None for impls without tiles."""
    if impl == "pallas_tpu":
        return tpu_table(generation).blocks
    return DEFAULT_BLOCK_SIZES.get(impl)
