"""TPU generations the kernels have tile and VMEM tables for, keyed by jax's device kind.

The per-core figures come from the chips' public specs (the same numbers as jax's
`pallas/mosaic/tpu_info.py`); they are used only to size tiles and the scoped VMEM
limit of each `pallas_call`, and every table entry is checked by compiling the
kernels through Mosaic for that generation (tests/kernels/test_tpu_compile.py).
"""

import dataclasses

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TensorCore as a Pallas kernel sees it (v4 / v5p megacore chips: per core)."""

    generation: str  # "v4" | "v5e" | "v5p" | "v6e"
    vmem_bytes: int  # physical VMEM per core
    bf16_flops: float  # peak bf16 FLOP/s per chip
    hbm_bytes_per_s: float  # HBM bandwidth per chip

    @property
    def ridge_flop_per_byte(self) -> float:
        """Arithmetic intensity at which a kernel stops being bandwidth-bound."""
        return self.bf16_flops / self.hbm_bytes_per_s


CHIPS = {
    "v4": Chip("v4", 16 * MiB, 2.75e14, 1.23e12),
    "v5e": Chip("v5e", 128 * MiB, 1.97e14, 8.2e11),
    "v5p": Chip("v5p", 64 * MiB, 4.59e14, 2.46e12),
    "v6e": Chip("v6e", 128 * MiB, 9.2e14, 1.64e12),
}

# jax's `device.device_kind` strings (real chips and `jax.experimental.topologies`
# devices report the same ones) -> generation.
_KINDS = {
    "TPU v4": "v4",
    "TPU v5 lite": "v5e",
    "TPU v5e": "v5e",
    "TPU v5": "v5p",
    "TPU v5p": "v5p",
    "TPU v6 lite": "v6e",
    "TPU v6e": "v6e",
}


def generation_of(device_kind: str | None) -> str | None:
    """'TPU v5 lite' -> 'v5e'; None for non-TPU or unknown kinds (e.g. 'cpu', 'TPU v4 lite')."""
    if device_kind is None:
        return None
    return _KINDS.get(device_kind.strip())


def generations() -> tuple[str, ...]:
    return tuple(CHIPS)
