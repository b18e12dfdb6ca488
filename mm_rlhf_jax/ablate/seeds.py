"""Seed S of a preset: every seed key of its config set to S, so each seed replicates the whole pipeline.

`seed` and every `*.seed` / `*_seed` key (model init, batch order, the synthetic data's draw) take the same
value, so a seed is an independent replicate with its own held-out split too. Used by the ablation runner
and bench/tiny_seeds.py.

    algo, flags = seed_flags("configs/mm_dpo.py:tiny", 3)   # "mm_dpo", ["--config.seed=3", ...]
"""

import os

import ml_collections

from mm_rlhf_jax import config_lib


def seed_keys(c: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Dotted keys of every seed of config c, in config order."""
    out = []
    for k, v in c.items():
        if isinstance(v, ml_collections.ConfigDict):
            out.extend(seed_keys(v, f"{prefix}{k}."))
        elif k == "seed" or k.endswith("_seed"):
            out.append(f"{prefix}{k}")
    return out


def load_spec(config_spec: str) -> tuple[str, ml_collections.ConfigDict]:
    """(algorithm, config) of "path/to/configs/<algo>.py:<preset>" (path relative to the working directory)."""
    path, _, arg = config_spec.partition(":")
    algo = os.path.splitext(os.path.basename(path))[0]
    return algo, config_lib.preset(algo, arg or "tiny", configs_dir=os.path.dirname(os.path.abspath(path)))


def seed_flags(config_spec: str, seed: int) -> tuple[str, list[str]]:
    """(algorithm, --config.<key>=seed for every seed key of the preset)."""
    algo, c = load_spec(config_spec)
    return algo, [f"--config.{k}={seed}" for k in seed_keys(c)]
