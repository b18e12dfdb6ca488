"""Per-implementation default tile sizes (see kernels/README.md for the reasoning).

Pallas TPU: tiles of >= 512 queries keep the q-tile arithmetic intensity (about
block_q FLOP/byte) above the v5e/v5p ridge points (the 128 defaults of jax's own
kernels ran at 3.7% of v5e peak, jax#24633); KV tiles are multiples of 128 lanes;
512 x 512 f32 score tiles keep the VMEM working set near 16 MiB. Untuned on
hardware (no TPU here): v6e likely wants 1024. Pallas GPU (Triton): power-of-two tiles sized for registers/SMEM at
head_dim <= 128 (FA2-style). XLA blocked (CPU): 512 x 512 keeps one f32 score tile
per head at 1 MiB, small enough for the caches of a CPU host. XLA dense (CPU, short
sequences): static query chunks of 128 rows; 64-256 measured within noise of each other
at T = 512 (bench/RESULTS.md), smaller chunks unroll more ops.
Blocks are clamped to the (padded) sequence lengths at call time.
"""

from mm_rlhf_jax.kernels.attention.common import BlockSizes

DEFAULT_BLOCK_SIZES = {
    "pallas_tpu": BlockSizes(block_q=512, block_kv=512, block_q_bwd=512, block_kv_bwd=512),
    "pallas_gpu": BlockSizes(block_q=128, block_kv=64, block_q_bwd=64, block_kv_bwd=64),
    "xla": BlockSizes(block_q=512, block_kv=512, block_q_bwd=512, block_kv_bwd=512),
    "xla_dense": BlockSizes(block_q=128, block_kv=128, block_q_bwd=128, block_kv_bwd=128),
}


def default_block_sizes(impl: str) -> BlockSizes:
    return DEFAULT_BLOCK_SIZES[impl]
