"""Default tiles for token log-probs, per implementation and (Pallas TPU) per TPU generation.

Pallas TPU, (tokens, vocab, hidden) forward and (tokens, vocab) for each backward
kernel. Why these sizes (research/kernels.md section 1, bench/SCALE.md):
- forward: W is streamed once per token tile and h once per vocab tile, so the
  arithmetic intensity is bn*bv/(bn+bv) FLOP/B for bf16 operands; it must clear the
  chip's ridge point (v4 ~224, v5e ~240, v5p ~187, v6e ~560 FLOP/B);
- dh keeps an f32 [bn, H] accumulator and dw an f32 [H, bv] one in VMEM, so dh
  takes the smaller token tile and dw the smaller vocab tile;
- v4 has 16 MiB of VMEM per core (v5p 64, v5e / v6e 128), so it gets the small
  tiles; every entry is checked by compiling through Mosaic for its generation at
  Qwen2-7B's head (H 3584, V 152064) in tests/kernels/test_tpu_compile.py.
Targets that are not a known TPU generation (interpret mode on CPU, new chips)
use the v5p entry. Untuned on hardware: no TPU was available, only the compiler.

XLA chunked: chunks of tokens with f32 [chunk, V] logits. CPU: at most 2^24
floats (64 MiB) and 1024 tokens (512 at V = 32K): the backward holds two such
buffers, so at N = 8192, H = 1024, V = 32000 the fwd+bwd temporaries are 136 MiB,
~15x below naive logits, at no cost in step time (bench/kernels_cpu.py, SCALE.md);
accelerators: 1024 tokens at any V (a 128-token chunk at V = 152K would re-read W
from HBM at ~128 FLOP/B).
"""

import dataclasses

from mm_rlhf_jax.kernels.chips import MiB
from mm_rlhf_jax.kernels.token_logprobs.common import BlockSizes


@dataclasses.dataclass(frozen=True)
class TpuTable:
    blocks: BlockSizes
    vmem_limit_bytes: int  # scoped VMEM limit of every pallas_call


TPU_TABLES = {
    "v4": TpuTable(BlockSizes(block_n=512, block_v=512, block_h=512, block_n_bwd=256, block_v_bwd=512,
                              block_n_dw=512, block_v_dw=256), 15 * MiB),
    "v5e": TpuTable(BlockSizes(block_n=1024, block_v=1024, block_h=512, block_n_bwd=512, block_v_bwd=1024,
                               block_n_dw=1024, block_v_dw=512), 96 * MiB),
    "v5p": TpuTable(BlockSizes(block_n=1024, block_v=1024, block_h=512, block_n_bwd=512, block_v_bwd=1024,
                               block_n_dw=1024, block_v_dw=512), 48 * MiB),
    "v6e": TpuTable(BlockSizes(block_n=2048, block_v=1024, block_h=512, block_n_bwd=1024, block_v_bwd=1024,
                               block_n_dw=1024, block_v_dw=1024), 96 * MiB),
}
DEFAULT_GENERATION = "v5p"

_CPU_CHUNK_FLOATS = 1 << 24
_ACCELERATOR_CHUNK = 1024


def tpu_table(generation: str | None) -> TpuTable:
    return TPU_TABLES.get(generation, TPU_TABLES[DEFAULT_GENERATION])


def xla_chunk(platform: str, vocab_size: int) -> int:
    if platform != "cpu":
        return _ACCELERATOR_CHUNK
    chunk = 1024
    while chunk > 8 and chunk * vocab_size > _CPU_CHUNK_FLOATS:
        chunk //= 2
    return chunk


def default_block_sizes(impl: str, hidden_size: int, vocab_size: int, *, platform: str = "cpu",
                        generation: str | None = None) -> BlockSizes:
    if impl == "pallas_tpu":
        return tpu_table(generation).blocks
    if impl == "pallas_gpu":
        return BlockSizes(block_n=64, block_v=128, block_h=64, block_n_bwd=64, block_v_bwd=64)
    if impl == "xla":
        chunk = xla_chunk(platform, vocab_size)
        return BlockSizes(block_n=chunk, block_v=vocab_size, block_h=hidden_size, block_n_bwd=chunk,
                          block_v_bwd=vocab_size)
    raise KeyError(f"token_logprobs: no block table for impl {impl!r}")
