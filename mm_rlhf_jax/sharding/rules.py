"""Logical axis names and the rules tables that map them onto the mesh.

Every parameter carries logical names (via `nn.with_logical_partitioning`);
key activations are constrained with `constrain`. One table per layout:
training (weights and optimizer state split over fsdp x sequence x data, plus
tensor parallelism) and sampling (weights not FSDP-sharded, so a decode step
never all-gathers weights).

Parameters:   vocab, embed, mlp, heads, kv_heads, head_dim, layers, norm,
              vision_embed, vision_mlp, vision_heads, patch
Activations:  act_batch, act_seq, act_embed, act_heads, act_kv_heads,
              act_mlp, act_vocab
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Rules = tuple[tuple[str, Any], ...]

_ACTIVATIONS: Rules = (
    ("act_batch", ("data", "fsdp")),
    ("act_seq", "sequence"),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)

# Parameters (and their optimizer moments) are split over every axis that does not split heads:
# fsdp, and also sequence and data when a layout uses them (LongPO's sequence axis would otherwise
# hold a full copy of the f32 state per device). Weights are all-gathered per layer in the forward.
PARAM_AXES = ("fsdp", "sequence", "data")

TRAIN_RULES: Rules = _ACTIVATIONS + (
    ("vocab", "tensor"),
    ("embed", PARAM_AXES),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("vision_embed", PARAM_AXES),
    ("vision_mlp", "tensor"),
    ("vision_heads", "tensor"),
    ("patch", None),
)

SAMPLING_RULES: Rules = _ACTIVATIONS + (
    ("vocab", "tensor"),
    ("embed", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("vision_embed", None),
    ("vision_mlp", "tensor"),
    ("vision_heads", "tensor"),
    ("patch", None),
)

_TABLES = {"train": TRAIN_RULES, "sampling": SAMPLING_RULES}


class ShardingError(ValueError):
    """A dimension does not divide the mesh axes its logical name maps to."""


def rules_for(layout: str) -> Rules:
    try:
        return _TABLES[layout]
    except KeyError:
        raise KeyError(f"unknown sharding layout {layout!r}; known: {sorted(_TABLES)}") from None


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return int(np.prod([mesh.shape[a] for a in axes]))


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def unbox_values(tree):
    """Removes logical-partitioning boxes without adding sharding constraints.

    (nn.meta.unbox applies with_sharding_constraint inside a mesh context,
    which fails on ShapeDtypeStructs and is never wanted outside a trace.)
    """
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)


def logical_shardings(abstract_tree, mesh: Mesh, rules: Rules):
    """Maps a tree of logically-annotated (abstract) arrays to NamedShardings.

    `abstract_tree` is e.g. `jax.eval_shape(model.init, ...)`: leaves boxed in
    `nn.LogicallyPartitioned` get their mapped spec, other leaves are
    replicated. Raises ShardingError, naming the parameter, the dimension, the
    mesh axes and both sizes, if a dimension is not divisible: never silently
    replicates.
    """
    logical_specs = nn.get_partition_spec(abstract_tree)
    shapes = unbox_values(abstract_tree)

    def to_sharding(path, spec, leaf):
        if spec is None or not isinstance(spec, P):
            spec = P()
        mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules) if len(spec) else P()
        shape = getattr(leaf, "shape", ())
        for dim, (logical, axes) in enumerate(zip(tuple(spec), tuple(mesh_spec))):
            size = _axis_size(mesh, axes)
            if size > 1 and shape[dim] % size:
                raise ShardingError(
                    f"parameter {_path_str(path)!r} of shape {tuple(shape)}: dim {dim} "
                    f"(logical {logical!r} -> mesh axes {axes!r}) has size {shape[dim]}, "
                    f"not divisible by mesh size {size}"
                )
        return NamedSharding(mesh, mesh_spec)

    return jax.tree_util.tree_map_with_path(
        to_sharding, logical_specs, shapes, is_leaf=lambda x: isinstance(x, P) or x is None
    )


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation by logical names (no-op outside a rules context)."""
    return nn.with_logical_constraint(x, tuple(logical_axes))
