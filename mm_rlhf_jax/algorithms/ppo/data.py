"""Prompt pools of an RL run (PPO, Align-Pro): files named by the data block, or the synthetic tasks.

The synthetic reasoning tasks (data/synthetic/reasoning.py) are built once
into workdir/data (tokenizer, pools), so every host and every resumed run
reads the same files.
"""

import dataclasses

import ml_collections

from mm_rlhf_jax import storage
from mm_rlhf_jax.data.prompts_pool import PromptRecord, load_prompt_pool
from mm_rlhf_jax.data.synthetic import build_once, reasoning
from mm_rlhf_jax.data.tokenizer import resolve_tokenizer


@dataclasses.dataclass
class RLData:
    tokenizer: str
    sft: list[dict]  # synthetic demonstrations' source records (empty for real data)
    pool: list[PromptRecord]  # the original training prompts
    new_pool: list[PromptRecord]  # newly collected prompts for Pre-PPO ([] = no selection)
    heldout: list[PromptRecord]


def tokenizer(d: ml_collections.ConfigDict, init_from: str, workdir: str) -> str:
    """The run's tokenizer (data.tokenizer.resolve_tokenizer; synthetic runs: the reasoning tasks' one)."""
    synthetic = d.synthetic and not d.pool
    return resolve_tokenizer(d.tokenizer, init_from, storage.join(workdir, "data", "tokenizer"),
                             reasoning.build_tokenizer if synthetic else None)


def write_pools(workdir: str, splits: dict[str, list[dict]]) -> str:
    """The prompt-pool files of synthetic splits, written once into workdir/data/pools."""

    def build(folder):
        for name, recs in splits.items():
            reasoning.write_pool(storage.join(folder, f"{name}.jsonl"), recs)

    return build_once(storage.join(workdir, "data", "pools"), build)


def prepare(d: ml_collections.ConfigDict, init_from: str, workdir: str) -> RLData:
    """PPO's pools from its `data` block (config_lib.prompt_data_block)."""
    tok = tokenizer(d, init_from, workdir)
    if d.synthetic and not d.pool:
        sizes = {"sft": d.synthetic_sft, "train": d.synthetic_train, "new": d.synthetic_new,
                 "heldout": d.synthetic_heldout}
        splits = reasoning.make_splits(d.synthetic_seed, sizes, reasoning.TaskMix(*d.synthetic_mix),
                                       math_tasks=tuple(d.synthetic_math_tasks))
        if d.synthetic_open:  # the demonstrations keep their answers; the pools get open-ended prompts
            splits = {name: recs if name == "sft" else reasoning.open_prompts(recs, d.synthetic_open,
                                                                             d.synthetic_seed + k)
                      for k, (name, recs) in enumerate(splits.items())}
        folder = write_pools(workdir, splits)
        load = lambda name: load_prompt_pool(storage.join(folder, f"{name}.jsonl"))
        return RLData(tok, splits["sft"], load("train"), load("new") if d.synthetic_new else [], load("heldout"))
    if not d.pool or not d.heldout:
        raise ValueError("set data.pool and data.heldout (prompt-pool jsonl files), or data.synthetic=True")
    return RLData(tok, [], load_prompt_pool(d.pool), load_prompt_pool(d.new_pool) if d.new_pool else [],
                  load_prompt_pool(d.heldout))
