"""Trainable / frozen parameter split by path patterns.

Frozen parameters get neither gradients nor optimizer state: the step
differentiates only the trainable subtree (None at frozen leaves), so a frozen
vision tower costs no backward pass, no gradient buffer and no Adam moments.
"""

import re
from typing import Sequence

import flax.linen as nn
import jax


def param_path(path) -> str:
    """'language_model/layers_0/self_attn/q_proj/kernel' for a tree_util key path."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def trainable_mask(params, trainable: Sequence[str] = (".*",), frozen: Sequence[str] = ()):
    """bool pytree: a leaf is trainable if its path matches a `trainable` regex and no `frozen` regex.

    Raises ValueError if a pattern matches no parameter (a typo would otherwise
    silently freeze or train the wrong thing).
    """
    paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for pattern in list(trainable) + list(frozen):
        if not any(re.fullmatch(pattern, p) for p in paths):
            raise ValueError(f"parameter pattern {pattern!r} matches no parameter; e.g. {paths[:4]}")

    def is_trainable(path, _):
        p = param_path(path)
        return any(re.fullmatch(t, p) for t in trainable) and not any(re.fullmatch(f, p) for f in frozen)

    return jax.tree_util.tree_map_with_path(is_trainable, params)


def _is_box(x) -> bool:
    # Logical-partitioning boxes count as leaves so boxed (abstract) trees split like plain ones.
    return isinstance(x, nn.meta.AxisMetadata)


def split(params, mask):
    """(trainable, frozen) trees with None where a leaf belongs to the other part."""
    trainable = jax.tree.map(lambda p, m: p if m else None, params, mask, is_leaf=_is_box)
    frozen = jax.tree.map(lambda p, m: None if m else p, params, mask, is_leaf=_is_box)
    return trainable, frozen


def merge(trainable, frozen):
    return jax.tree.map(lambda t, f: f if t is None else t, trainable, frozen, is_leaf=lambda x: x is None)
