"""Named device mesh and logical-axis sharding rules."""

from mm_rlhf_jax.sharding.mesh import MESH_AXES, make_mesh, batch_sharding, replicated
from mm_rlhf_jax.sharding.rules import (
    SAMPLING_RULES,
    TRAIN_RULES,
    ShardingError,
    constrain,
    logical_shardings,
    rules_for,
    unbox_values,
)
