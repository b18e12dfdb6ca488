"""Micro settings of every algorithm as command-line overrides, shared by the tests and the CLI.

    python -m tests.launch.micro mm_dpo WORKDIR     # prints the --config.x=y flags
    launch/local_multiprocess.sh 2 configs/mm_dpo.py:tiny runs/mp --cpu_devices 4 \
        $(python -m tests.launch.micro mm_dpo runs/mp)

MM-DPO, the reward model and LongPO reuse the micro configs of their run tests
(tests/algorithms/<algo>/test_run.py): the flags are whatever those configs
change in the tiny preset. PPO (the hybrid preset: verifiers + a tiny GenRM,
Pre-PPO) and Align-Pro have their micro settings here. Every batch is 8 rows,
one per device of an 8-device mesh.
"""

import ast
import sys

from mm_rlhf_jax import config_lib

# algorithm -> (preset, overrides for that preset); the first three come from the run tests.
_OWN = {
    "ppo": ("tiny_hybrid", {
        "data.synthetic_sft": 32, "data.synthetic_train": 16, "data.synthetic_new": 16, "data.synthetic_heldout": 8,
        "model.tiny.hidden_size": 32, "model.tiny.intermediate_size": 64, "model.tiny.num_layers": 1,
        "model.tiny.num_heads": 2, "model.tiny.num_kv_heads": 1,
        "warm_start.steps": 2, "warm_start.batch_size": 8, "warm_start.log_every": 1,
        "genrm.warm_start.steps": 2, "genrm.warm_start.batch_size": 8, "genrm.warm_start.num_examples": 16,
        "genrm.batch_size": 8, "genrm.max_new_tokens": 3,
        "ppo.prompts_per_step": 4, "ppo.samples_per_prompt": 2, "ppo.num_minibatches": 1, "ppo.epochs": 1,
        "ppo.max_new_tokens": 4, "ppo.eval_batch_size": 8, "pre_ppo.num_samples": 1, "pre_ppo.fraction": 0.25,
        "reward.num_workers": 1, "eval.num_prompts": 8,
        "train.steps": 4, "train.log_every": 1, "train.eval_every": 0, "train.checkpoint_every": 2,
    }),
    "align_pro": ("tiny", {
        "data.synthetic_sft": 32, "data.synthetic_train": 16, "data.synthetic_heldout": 8,
        "model.tiny.hidden_size": 32, "model.tiny.intermediate_size": 64, "model.tiny.num_layers": 1,
        "model.tiny.num_heads": 2, "model.tiny.num_kv_heads": 1,
        "warm_start.steps": 2, "warm_start.batch_size": 8, "warm_start.log_every": 1,
        "frozen.warm_start.steps": 2, "frozen.warm_start.batch_size": 8, "frozen.batch_size": 8,
        "frozen.max_new_tokens": 3,
        "ppo.prompts_per_step": 4, "ppo.samples_per_prompt": 2, "ppo.num_minibatches": 1, "ppo.epochs": 1,
        "ppo.max_new_tokens": 4, "ppo.eval_batch_size": 8,
        "reward.num_workers": 1, "eval.num_prompts": 8,
        "train.steps": 4, "train.log_every": 1, "train.eval_every": 0, "train.checkpoint_every": 2,
    }),
}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _test_config(algorithm: str, workdir: str):
    """The run test's micro config (imported lazily: those modules import the training stack)."""
    if algorithm == "mm_dpo":
        from tests.algorithms.mm_dpo.test_run import micro_config

        return micro_config()
    if algorithm == "reward_model":
        from tests.algorithms.reward_model.test_run import micro_config

        return micro_config("critique", workdir)
    if algorithm == "longpo":
        from tests.algorithms.longpo.test_run import micro_config

        return micro_config()
    raise KeyError(algorithm)


def preset(algorithm: str) -> str:
    return _OWN[algorithm][0] if algorithm in _OWN else "tiny"


def overrides(algorithm: str, workdir: str, extra: dict | None = None) -> dict:
    """{dotted config key: value} turning `preset(algorithm)` into the micro settings (then `extra`)."""
    if algorithm in _OWN:
        out = dict(_OWN[algorithm][1])
    else:
        base = _flat(config_lib.preset(algorithm, "tiny").to_dict())
        out = {k: v for k, v in _flat(_test_config(algorithm, workdir).to_dict()).items() if base.get(k) != v}
    return {**out, **(extra or {})}


def _value(v) -> str:
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)


def flags(algorithm: str, workdir: str, extra: dict | None = None) -> list[str]:
    """--config.key=value flags of the micro settings (sorted, so the command line is reproducible)."""
    return [f"--config.{k}={_value(v)}" for k, v in sorted(overrides(algorithm, workdir, extra).items())]


def config(algorithm: str, workdir: str, extra: dict | None = None):
    """The micro config itself (what `main` builds from the preset plus flags())."""
    c = config_lib.preset(algorithm, preset(algorithm))
    for k, v in overrides(algorithm, workdir, extra).items():
        node = c
        *path, leaf = k.split(".")
        for p in path:
            node = node[p]
        node[leaf] = ast.literal_eval(_value(v)) if isinstance(v, (tuple, list)) else v
    return c


if __name__ == "__main__":
    print(" ".join(flags(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "runs/micro")))
