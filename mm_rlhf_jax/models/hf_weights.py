"""Parameter-path <-> transformers-key mapping, with the layout change of each weight.

Flax paths mirror transformers' module names, so the mapping is by rule:
`layers_3` -> `layers.3`, `kernel` / `scale` / `embedding` -> `weight`, plus a
per-architecture prefix table (`language_model` -> `model.language_model.`, ...).
Layouts differ only by transposes and head splits:

  kind        flax shape       torch shape      example
  identity    same             same             norms, biases, embeddings
  transpose   [in, out]        [out, in]        nn.Linear weights
  heads_in    [E, H, D]        [H * D, E]       q/k/v_proj weight
  heads_out   [H, D, E]        [E, H * D]       o_proj / out_proj weight
  heads_bias  [H, D]           [H * D]          q/k/v_proj bias
  conv        [C * p * p, E]   [E, C, p, p]     SigLIP patch_embedding

`WeightSpec.read(reader, index)` reads only the torch-side region that a
device's slice of the flax array needs (whole heads; the conv reads whole),
so `jax.make_array_from_callback` loads each device's shard directly. A scanned
(stacked) parameter maps to one key per layer.
"""

import dataclasses
import re
from typing import Sequence

import numpy as np

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "weight": "weight", "bias": "bias"}
_HEADS_IN = {"q_proj", "k_proj", "v_proj"}
_HEADS_OUT = {"o_proj", "out_proj"}


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """How one flax parameter is stored in the checkpoint.

    keys: one torch key, or one per layer for a scanned parameter (stacked on axis 0).
    flax_shape: the (per-layer) flax shape.
    """

    path: str
    keys: tuple[str, ...]
    kind: str
    flax_shape: tuple[int, ...]
    stacked: bool = False
    conv_shape: tuple[int, ...] | None = None  # torch [E, C, p, p] for kind "conv"

    @property
    def torch_shape(self) -> tuple[int, ...]:
        s = self.flax_shape
        if self.kind == "transpose":
            return (s[1], s[0])
        if self.kind == "heads_in":
            return (s[1] * s[2], s[0])
        if self.kind == "heads_out":
            return (s[2], s[0] * s[1])
        if self.kind == "heads_bias":
            return (s[0] * s[1],)
        if self.kind == "conv":
            return self.conv_shape
        return s

    def to_flax(self, t: np.ndarray) -> np.ndarray:
        """Full torch-layout tensor (one layer) -> flax layout."""
        if self.kind == "transpose":
            return t.T
        if self.kind == "heads_in":
            e = t.shape[1]
            return t.T.reshape(e, self.flax_shape[1], self.flax_shape[2])
        if self.kind == "heads_out":
            return t.reshape(t.shape[0], self.flax_shape[0], self.flax_shape[1]).transpose(1, 2, 0)
        if self.kind == "heads_bias":
            return t.reshape(self.flax_shape)
        if self.kind == "conv":
            return t.reshape(t.shape[0], -1).T
        return t

    def to_torch(self, f: np.ndarray) -> np.ndarray:
        """Flax layout (one layer) -> torch layout."""
        if self.kind == "transpose":
            return f.T
        if self.kind == "heads_in":
            return f.reshape(f.shape[0], -1).T
        if self.kind == "heads_out":
            return f.transpose(2, 0, 1).reshape(f.shape[2], -1)
        if self.kind == "heads_bias":
            return f.reshape(-1)
        if self.kind == "conv":
            return f.T.reshape(self.conv_shape)
        return f

    def _read_layer(self, tensor: np.ndarray, index: Sequence[slice]) -> np.ndarray:
        """Reads flax-slice `index` of one layer from a (lazy) torch-layout tensor."""
        index = tuple(index)
        if self.kind == "identity":
            return np.asarray(tensor[index])
        if self.kind == "transpose":
            return np.asarray(tensor[index[1], index[0]]).T
        if self.kind in ("heads_in", "heads_out", "heads_bias"):
            # Read whole heads (a contiguous H*D range), then slice head_dim on the host.
            h_axis = {"heads_in": 1, "heads_out": 0, "heads_bias": 0}[self.kind]
            d = self.flax_shape[h_axis + 1]
            h = range(self.flax_shape[h_axis])[index[h_axis]]
            rows = slice(h.start * d, h.stop * d)
            if self.kind == "heads_in":
                region = np.asarray(tensor[rows, index[0]]).T.reshape(-1, len(h), d)
                return region[:, :, index[2]]
            if self.kind == "heads_out":
                region = np.asarray(tensor[index[2], rows])
                return region.reshape(region.shape[0], len(h), d).transpose(1, 2, 0)[:, index[1]]
            return np.asarray(tensor[rows]).reshape(len(h), d)[:, index[1]]
        return self.to_flax(np.asarray(tensor))[index]  # conv: small, read whole

    def read(self, get, index: Sequence[slice]) -> np.ndarray:
        """`get(key)` -> lazy torch tensor; returns the flax array region `index` (stacked over layers if scanned)."""
        index = tuple(index)
        if not self.stacked:
            return self._read_layer(get(self.keys[0]), index)
        layers = range(len(self.keys))[index[0]]
        return np.stack([self._read_layer(get(self.keys[i]), index[1:]) for i in layers])


def _kind(leaf: str, module: str, ndim: int) -> str:
    if leaf == "kernel" and module == "patch_embedding":
        return "conv"
    if leaf == "kernel" and ndim == 3:
        return "heads_in" if module in _HEADS_IN else "heads_out"
    if leaf == "kernel":
        return "transpose"
    if leaf == "bias" and ndim == 2:
        return "heads_bias"
    return "identity"


def weight_specs(flat_shapes: dict[tuple[str, ...], tuple[int, ...]],
                 prefixes: Sequence[tuple[tuple[str, ...], str]], scanned: bool,
                 conv_shape: tuple[int, ...] | None = None) -> list[WeightSpec]:
    """WeightSpecs for every parameter.

    Args:
      flat_shapes: flax param path -> shape (e.g. from the abstract param tree).
      prefixes: (flax path prefix, torch key prefix) pairs; the longest matching one
        is stripped from the path and replaced, e.g. ((("lm_head",), "lm_head."), ((), "model."))
        for a CausalLM. A path consumed entirely (image_newline) maps to the prefix itself.
      scanned: the decoder stacks its layers under "layers" (scan_layers=True).
      conv_shape: torch shape [E, C, p, p] of a patch-embedding conv, if any.
    """
    ordered = sorted(prefixes, key=lambda pp: -len(pp[0]))
    specs = []
    for path, shape in flat_shapes.items():
        match, prefix = next((m, t) for m, t in ordered if tuple(path[:len(m)]) == tuple(m))
        parts = list(path[len(match):])
        if not parts:
            specs.append(WeightSpec("/".join(path), (prefix,), "identity", tuple(shape)))
            continue
        leaf, module = parts[-1], parts[-2] if len(parts) > 1 else ""
        names = [re.sub(r"^layers_(\d+)$", r"layers.\1", p) for p in parts[:-1]] + [_LEAF_NAMES.get(leaf, leaf)]
        stacked = scanned and "layers" in parts[:-1]
        per_layer = tuple(shape[1:]) if stacked else tuple(shape)
        kind = _kind(leaf, module, len(per_layer))
        if stacked:
            i = names.index("layers")
            keys = tuple(prefix + ".".join(names[:i] + [f"layers.{n}"] + names[i + 1:]) for n in range(shape[0]))
        else:
            keys = (prefix + ".".join(names),)
        specs.append(WeightSpec("/".join(path), keys, kind, per_layer, stacked,
                                conv_shape if kind == "conv" else None))
    return specs
