"""Which implementation a kernel call gets, chosen by the TARGET platform.

The target is the platform the program is compiled for, which is not always the
host's backend: an ahead-of-time compile for a TPU topology on a CPU host must get
the Mosaic kernels (interpret=False) and the tile / VMEM tables of the target TPU
generation, not the CPU choices. The target is, in order of precedence:

  1. the innermost `target_platform(...)` context:
       with kernels.target_platform("tpu", device_kind="TPU v5p"): ...
       with kernels.target_platform(devices=topology.devices): ...
       with kernels.target_platform(mesh=topology_mesh): ...
  2. the mesh set with `jax.set_mesh(mesh)` (its devices' platform and kind), so a
     compile inside `jax.set_mesh(topologies.make_mesh(...))` needs nothing else;
  3. the default backend (`jax.default_backend()`, `jax.devices()[0].device_kind`).

The choice happens when a function is traced, and the target is part of jax's
trace-cache key (the context sets a jax config state that is included in the trace
context, like the mesh), so one jitted function lowered for several targets in one
process is traced once per target.
"""

import contextlib
import dataclasses
from collections.abc import Mapping

import jax
from jax._src import config as jax_config  # a trace-context state; no public API offers one

from mm_rlhf_jax.kernels import chips

PLATFORMS = ("cpu", "gpu", "tpu")
# The platform each Pallas variant compiles for; elsewhere it runs in interpret mode.
NATIVE_PLATFORM = {"pallas_tpu": "tpu", "pallas_gpu": "gpu"}


@dataclasses.dataclass(frozen=True)
class Target:
    """The platform (and for TPUs the chip) kernels are traced for."""

    platform: str  # "cpu" | "gpu" | "tpu"
    device_kind: str | None = None  # jax's device_kind, e.g. "TPU v5 lite", "NVIDIA H100 80GB HBM3"

    @property
    def generation(self) -> str | None:
        """TPU generation with tile tables ("v4" | "v5e" | "v5p" | "v6e"), else None."""
        return chips.generation_of(self.device_kind) if self.platform == "tpu" else None


def _encode(target: Target) -> str:
    return f"{target.platform}|{target.device_kind or ''}"


def _decode(value: str) -> Target:
    platform, kind = value.split("|", 1)
    return Target(platform, kind or None)


# Thread-local and part of the trace context: jit re-traces when it changes.
_TARGET_STATE = jax_config.optional_string_state(
    "mm_rlhf_jax_kernels_target", None, "Target platform of mm_rlhf_jax kernels (set by target_platform).",
    include_in_trace_context=True)


def _normalise_platform(platform: str) -> str:
    platform = platform.lower()
    platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
    if platform not in PLATFORMS:
        raise ValueError(f"kernels target platform must be one of {PLATFORMS} (or cuda/rocm), got {platform!r}")
    return platform


def _from_devices(devices) -> Target:
    devices = list(devices)
    if not devices:
        raise ValueError("kernels.target_platform: empty device list")
    kinds = {(d.platform, d.device_kind) for d in devices}
    if len(kinds) > 1:
        raise ValueError(f"kernels.target_platform: devices of several kinds {sorted(kinds)}")
    platform, kind = kinds.pop()
    return Target(_normalise_platform(platform), kind)


@contextlib.contextmanager
def target_platform(platform: str | None = None, *, device_kind: str | None = None, devices=None, mesh=None):
    """Traces kernel calls inside the block for a target platform.

    Give exactly one of: `platform` ("cpu" | "gpu" | "tpu", with an optional
    `device_kind` such as "TPU v5p" / "TPU v5 lite" / "TPU v6 lite" / "TPU v4"
    selecting the tile tables), `devices` (e.g. `topology.devices`), or `mesh` (a
    `jax.sharding.Mesh`, e.g. from `jax.experimental.topologies.make_mesh`).
    Yields the `Target`.
    """
    given = [x is not None for x in (platform, devices, mesh)]
    if sum(given) != 1:
        raise ValueError("kernels.target_platform: give exactly one of platform, devices or mesh")
    if platform is not None:
        target = Target(_normalise_platform(platform), device_kind)
    else:
        if device_kind is not None:
            raise ValueError("kernels.target_platform: device_kind goes with platform, not devices / mesh")
        target = _from_devices(mesh.devices.flat if mesh is not None else devices)
    with _TARGET_STATE(_encode(target)):
        yield target


def _mesh_target() -> Target | None:
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh is None or mesh.empty else getattr(mesh, "abstract_device", None)
    if device is None:
        return None
    return Target(_normalise_platform(device.platform), device.device_kind)


def current_target() -> Target:
    """The target of kernel calls traced now (see the module docstring for the order)."""
    if _TARGET_STATE.value is not None:
        return _decode(_TARGET_STATE.value)
    target = _mesh_target()
    if target is not None:
        return target
    backend = _normalise_platform(jax.default_backend())
    return Target(backend, jax.devices()[0].device_kind if backend != "cpu" else None)


def resolve_impl(op: str, impl: str, registered, *, auto: Mapping[str, str], pallas: Mapping[str, str],
                 target: Target | None = None) -> str:
    """Maps "auto" / "pallas" to a registered impl name for the target platform.

    auto / pallas: platform -> impl (platforms missing from `auto` get "xla"; from
    `pallas`, an error). `registered` is the op's `Registry`; "reference" is always valid.
    """
    platform = (target or current_target()).platform
    if impl == "auto":
        return auto.get(platform, "xla")
    if impl == "pallas":
        if platform not in pallas:
            raise ValueError(f"{op}: no Pallas variant for platform {platform!r}; use impl='xla'")
        return pallas[platform]
    if impl == "reference" or impl in registered:
        return impl
    raise ValueError(f"{op}: unknown impl {impl!r}; use auto, pallas, xla, reference or one of {registered.names()}")


def resolve_interpret(impl: str, interpret, target: Target | None = None):
    """`interpret=None` -> interpret mode unless the target is the Pallas variant's own platform."""
    if interpret is not None:
        return interpret
    native = NATIVE_PLATFORM.get(impl)
    if native is None:  # not a Pallas kernel: the flag is unused
        return False
    return (target or current_target()).platform != native
