"""Named device mesh, logical-axis sharding rules, and placement (the only host <-> device transfers)."""

from mm_rlhf_jax.sharding.mesh import MESH_AXES, make_mesh, replicated
from mm_rlhf_jax.sharding.rules import (
    SAMPLING_RULES,
    TRAIN_RULES,
    ShardingError,
    constrain,
    logical_shardings,
    rules_for,
    unbox_values,
)
