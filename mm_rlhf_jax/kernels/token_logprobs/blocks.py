"""Per-implementation default tiles for token log-probs (see kernels/README.md).

Pallas TPU (after tokamax's linear-softmax-CE kernel, b=1024 h=512 v=2048, with the
vocab tile halved so that the f32 [bn, bv] logits tile and its elementwise
temporaries stay near 4 MiB each in VMEM): forward tiles 1024 tokens x 1024 vocab x
512 hidden, so a W slab is reused by 1024 tokens (arithmetic intensity ~1024
FLOP/byte, above every TPU ridge point); backward tiles keep a full-H f32
accumulator in VMEM, so they shrink with H. Untuned on hardware (no TPU here). Pallas GPU (Triton): register tiles.
XLA chunked (CPU): chunks of tokens whose f32 [chunk, V] logits hold ~2^25 floats
(128 MiB), at most 1024 tokens.
"""

from mm_rlhf_jax.kernels.token_logprobs.common import BlockSizes

_CHUNK_FLOATS = 1 << 25


def default_block_sizes(impl: str, hidden_size: int, vocab_size: int) -> BlockSizes:
    if impl == "pallas_tpu":
        bwd_v = 512 if hidden_size <= 4096 else 256
        return BlockSizes(block_n=1024, block_v=1024, block_h=512, block_n_bwd=256, block_v_bwd=bwd_v)
    if impl == "pallas_gpu":
        return BlockSizes(block_n=64, block_v=128, block_h=64, block_n_bwd=64, block_v_bwd=64)
    if impl == "xla":
        chunk = 1024
        while chunk > 8 and chunk * vocab_size > _CHUNK_FLOATS:
            chunk //= 2
        return BlockSizes(block_n=chunk, block_v=vocab_size, block_h=hidden_size, block_n_bwd=chunk,
                          block_v_bwd=vocab_size)
    raise KeyError(f"token_logprobs: no block table for impl {impl!r}")
