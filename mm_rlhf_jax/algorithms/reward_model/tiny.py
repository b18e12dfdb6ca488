"""A tiny random-init multimodal reward model and synthetic pair files of any size: the scoring machinery
at small scale (streaming, sharding, resume, memory) for tests and bench/scoring_memory.py.

    rm = TinyRM.build(workdir, mesh, batch_size=8)       # RewardModelInference + params + the synthetic files
    pairs = replicate_pairs(rm.train_pairs, storage.join(workdir, "data", "train", "big.jsonl"), 10_000)
    result = score_file(rm.inference, rm.params, rm.score_block(pairs, out), critique=True)

The parameters are a seeded random init (the same in every process that
builds it with the same arguments), so scores are arbitrary but reproducible:
what these exercise is the scoring machinery (streaming, sharding, resume,
memory), not learning.
"""

import dataclasses
import json

import flax.linen as nn
import jax

from mm_rlhf_jax import config_lib, storage
from mm_rlhf_jax.algorithms.reward_model import spec
from mm_rlhf_jax.algorithms.reward_model.inference import RewardModelInference
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.sharding import SAMPLING_RULES, TRAIN_RULES
from mm_rlhf_jax.train import pair_data


def tiny_config(*, num_queries: int = 8, batch_size: int = 8, max_critique_tokens: int = 3,
                mode: str = "critique"):
    """The reward_model:tiny preset shrunk to one layer of width 32 (vision tower too)."""
    c = config_lib.preset("reward_model", "tiny")
    c.reward.mode = mode
    c.reward.max_critique_tokens = max_critique_tokens
    c.data.synthetic_train, c.data.synthetic_heldout, c.data.synthetic_seed = num_queries, 2, 3
    c.data.eval_batch_size = batch_size
    c.model.tiny.update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                        vision_hidden_size=32, vision_intermediate_size=64, vision_num_layers=1, vision_num_heads=2)
    return c


@dataclasses.dataclass
class TinyRM:
    config: object
    inference: RewardModelInference
    params: object
    train_pairs: str  # the synthetic train split's dpo_pairs.jsonl (images next to it)

    @classmethod
    def build(cls, workdir: str, mesh, *, seed: int = 0, **kw) -> "TinyRM":
        c = tiny_config(**kw)
        files = pair_data.prepare_files(c.data, "", workdir)
        module, _ = spec.build_module(c)
        encoder_cfg = pair_data.encoder_config(c.data, files.tokenizer, module.trunk.config, "",
                                               spec.MODES[c.reward.mode])
        inference = RewardModelInference(module, encoder_cfg, cached_tokenizer(files.tokenizer), mesh,
                                         max_new_tokens=c.reward.max_critique_tokens,
                                         batch_size=c.data.eval_batch_size,
                                         param_shardings=hf.param_shardings(module, mesh, SAMPLING_RULES))
        with jax.set_mesh(mesh), nn.logical_axis_rules(TRAIN_RULES):
            params = hf.init_params(module, jax.random.PRNGKey(seed), mesh, TRAIN_RULES)
        return cls(c, inference, params, files.train_pairs)

    @property
    def critique(self) -> bool:
        return self.config.reward.mode == "critique"

    def score_block(self, pairs: str, output: str, part_batches: int = 1):
        return config_lib.score_block(input=pairs, output=output, part_batches=part_batches)


def replicate_pairs(src: str, dst: str, n: int) -> str:
    """n pair lines cycling through src's lines (ids made unique: `<id>#<k>`), written to dst.

    Keep dst in src's folder so the media paths still resolve against it.
    """
    lines = [line for line in storage.read_text(src).splitlines() if line.strip()]

    def rows():
        for k in range(n):
            obj = json.loads(lines[k % len(lines)])
            obj["id"] = f"{obj['id']}#{k // len(lines)}"
            yield json.dumps(obj) + "\n"

    storage.write_atomic_chunks(dst, rows())
    return dst
