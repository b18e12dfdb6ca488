"""A trained reward model as a reward source: r(x, y) of (prompt, response) texts.

    rm = LearnedRM.from_workdir("runs/rm", mesh, batch_size=16)   # a reward_model run's workdir
    rm = LearnedRM.from_pretrained(pretrained_config("exported/rm", model_block), mesh, batch_size=16)
    scores, valid = rm.score(prompts, responses)                    # f32[N], bool[N]

The workdir's config.json rebuilds the RM exactly as its run built it (trunk:
the tiny architecture or its model.init_from HF / LLaVA-OV checkpoint through
train.model_factory; reward.mode: critique or scalar), its latest checkpoint
gives the parameters (`load` takes either kind of folder). A transformers folder carrying a reward
head (export.py's reward_head.safetensors beside the trunk, or the rm_head.* tensors of an
MM-RLHF-Reward LLaVA-NeXT checkpoint) is the trunk and head of that folder instead, in the mode its
reward_head.json names (critique without one: the release's RM is critique-based). Scoring is that run's own inference
(inference.RewardModelInference): critique mode generates a greedy critique
with the RM's LM head through the one Generator, then reads the RewardHead
at the last token of [critic prompt(x, y) ; critique]; scalar mode reads it at
the end of the critic prompt. Host <-> device moves are placement's (put_global_batch
/ fetch), so every process calls score with the same texts and gets the same values.

Batching: the RM's score step reads pair batches [B, 2, T]; a pair's two rows are
independent sequences (the step pools each row on its own), so responses are laid
out two per pair record, those to the same prompt together (one critic prompt's
media read once), an odd one out paired with itself. A response whose critic
prompt leaves no room within the RM's max_length gets `failure_value` and
valid=False (logged as the invalid fraction, as an unparsable GenRM verdict).
"""

import json
from typing import Sequence

import numpy as np

from mm_rlhf_jax import config_lib, distributed, storage
from mm_rlhf_jax.algorithms.reward_model import spec
from mm_rlhf_jax.algorithms.reward_model.inference import RewardModelInference
from mm_rlhf_jax.algorithms.reward_model.run import initial_params
from mm_rlhf_jax.data.errors import DataError
from mm_rlhf_jax.data.records import PairRecord
from mm_rlhf_jax.data.sources import RecordPairSource
from mm_rlhf_jax.data.tokenize import critic_content, encode_turns
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.sharding import SAMPLING_RULES, TRAIN_RULES
from mm_rlhf_jax.train import checkpoint, packed_data, pair_data, phase


def pair_layout(prompts: Sequence[str], keep: Sequence[bool]) -> list[tuple[int, int]]:
    """(i, j) index pairs covering every kept response once, responses to the same prompt together."""
    groups: dict[str, list[int]] = {}
    for i, (p, ok) in enumerate(zip(prompts, keep)):
        if ok:
            groups.setdefault(p, []).append(i)
    out = []
    for members in groups.values():
        for k in range(0, len(members), 2):
            out.append((members[k], members[k + 1] if k + 1 < len(members) else members[k]))
    return out


class LearnedRM:
    """score(prompts, responses) -> (scores f32[N], valid bool[N]); see the module docstring.

    inference: the RM's RewardModelInference; params: its parameters (training
    layout; the generator reshards them for critiques); critique: generate a
    critique before scoring (reward.mode == "critique").
    """

    def __init__(self, inference: RewardModelInference, params, *, critique: bool, failure_value: float = 0.0):
        self.inference, self.params, self.critique = inference, params, critique
        self.failure_value = failure_value
        self.critiques: list[str | None] = []  # of the last call (sample logs), None where not generated

    @classmethod
    def load(cls, path: str, model_block, mesh, *, batch_size: int, max_critique_tokens: int = 0,
             max_length: int = 0) -> "LearnedRM":
        """A reward_model workdir, or a transformers folder with a reward head (the trunk's numerics from
        model_block, max_length tokens per critic-prompt sequence; 0 = the reward_model default)."""
        if is_transformers_folder(path):
            return cls.from_pretrained(pretrained_config(path, model_block, max_length=max_length), mesh,
                                       batch_size=batch_size, max_critique_tokens=max_critique_tokens)
        return cls.from_workdir(path, mesh, batch_size=batch_size, max_critique_tokens=max_critique_tokens)

    @classmethod
    def from_pretrained(cls, cfg, mesh, *, batch_size: int, max_critique_tokens: int = 0) -> "LearnedRM":
        """cfg: pretrained_config(folder, ...); trunk and reward head loaded as a reward_model run starts."""
        module, _ = spec.build_module(cfg)
        params = initial_params(cfg, module, mesh, TRAIN_RULES)
        return cls._build(cfg, module, params, cfg.data.tokenizer, mesh, batch_size, max_critique_tokens)

    @classmethod
    def from_workdir(cls, path: str, mesh, *, batch_size: int, max_critique_tokens: int = 0) -> "LearnedRM":
        cfg = workdir_config(path)
        module, _ = spec.build_module(cfg)
        step = spec.train_step(cfg, module, mesh, TRAIN_RULES)
        ckpt = checkpoint.Checkpointer(storage.join(path, "checkpoints"), max_to_keep=cfg.train.max_checkpoints)
        try:
            latest = ckpt.latest_step()
            if latest is None:
                raise FileNotFoundError(f"reward_model workdir {path} has no checkpoint (checkpoints/ is empty); "
                                        "train it first")
            state, _ = ckpt.restore(latest, step.abstract_state)
        finally:
            ckpt.close()
        return cls._build(cfg, module, state.params, workdir_tokenizer(cfg, path), mesh, batch_size,
                          max_critique_tokens)

    @classmethod
    def _build(cls, cfg, module, params, tokenizer: str, mesh, batch_size: int, max_critique_tokens: int):
        """The RM run's own inference around `params` (what a reward_model run evaluates with)."""
        encoder_cfg = pair_data.encoder_config(cfg.data, tokenizer, module.trunk.config, cfg.model.init_from,
                                               spec.MODES[cfg.reward.mode])
        inference = RewardModelInference(module, encoder_cfg, cached_tokenizer(tokenizer), mesh,
                                         max_new_tokens=max_critique_tokens or cfg.reward.max_critique_tokens,
                                         batch_size=batch_size,
                                         param_shardings=hf.param_shardings(module, mesh, SAMPLING_RULES))
        return cls(inference, params, critique=cfg.reward.mode == "critique")

    def fits(self, prompt: str, response: str) -> bool:
        """Does the critic prompt over (prompt, response) leave room for a critique / fit the RM's length?"""
        enc = self.inference.encoder_cfg
        try:
            ids, _ = encode_turns(self.inference.tokenizer, critic_content(prompt, response, None), None,
                                  max_length=enc.max_length, media=None, system=enc.system_prompt)
        except DataError:
            return False
        return len(ids) < enc.max_length if self.critique else len(ids) <= enc.max_length

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if len(prompts) != len(responses):
            raise ValueError(f"learned RM: {len(prompts)} prompts but {len(responses)} responses")
        valid = np.array([self.fits(p, y) for p, y in zip(prompts, responses)], bool)
        layout = pair_layout(prompts, valid)
        scores = np.full(len(prompts), self.failure_value, np.float32)
        self.critiques = [None] * len(prompts)
        if not layout:
            return scores, valid
        records = [PairRecord(id=f"learned_rm-{k}", prompt=prompts[i], chosen=responses[i], rejected=responses[j])
                   for k, (i, j) in enumerate(layout)]
        rewards, generated = self.inference.rewards(self.params, records, media_root="", generate=self.critique)
        for k, (i, j) in enumerate(layout):
            scores[i], scores[j] = rewards[k, 0], rewards[k, 1]
            if generated is not None:
                self.critiques[i], self.critiques[j] = generated[k].chosen_reason, generated[k].rejected_reason
        return scores, valid


def is_transformers_folder(path: str) -> bool:
    """A checkpoint folder (config.json of a model: `architectures`), not a run's workdir."""
    cfg_file = storage.join(path, "config.json")
    return storage.exists(cfg_file) and "architectures" in json.loads(storage.read_text(cfg_file))


def pretrained_config(path: str, model_block, *, max_length: int = 0):
    """The reward_model config of transformers folder `path` with a reward head; errors when it has none."""
    if hf.load_reward_head(path) is None:
        raise ValueError(f"{path} is a transformers checkpoint without a reward head ({hf.REWARD_HEAD_FILE} or "
                         "rm_head.* tensors): export a trained reward_model run there (python -m "
                         "mm_rlhf_jax.export), or pass the run's workdir")
    info_file = storage.join(path, hf.REWARD_HEAD_INFO)
    info = json.loads(storage.read_text(info_file)) if storage.exists(info_file) else {}
    c = config_lib.schema("reward_model")
    c.model.update(model_block.to_dict())  # the caller's numerics; the architecture is the folder's
    c.model.init_from = path
    c.reward.mode = info.get("mode", "critique")
    c.reward.head_init = "checkpoint"
    c.data.synthetic, c.data.tokenizer = False, path  # export.py copies the run's tokenizer next to the weights
    if max_length:
        c.data.max_length = max_length
    return c


def workdir_config(path: str):
    """The reward_model config a workdir's run saved (config.json); other folders are errors saying why."""
    cfg_file = storage.join(path, "config.json")
    if not storage.exists(cfg_file):
        raise FileNotFoundError(f"{path} has no config.json: reward.learned_rm.init_from must be a reward_model "
                                "run's workdir")
    saved = json.loads(storage.read_text(cfg_file))
    if saved.get("algorithm") != "reward_model":
        hint = (" (a transformers checkpoint: LearnedRM.load / from_pretrained read it when it carries a reward "
                "head)" if "architectures" in saved else "")
        raise ValueError(f"{path}/config.json is not a reward_model run's config (algorithm "
                         f"{saved.get('algorithm')!r}){hint}")
    return config_lib.from_saved(saved)


def workdir_tokenizer(cfg, path: str) -> str:
    """The RM run's tokenizer: data.tokenizer, else model.init_from's, else the synthetic one in its workdir."""
    folder = cfg.data.tokenizer or cfg.model.init_from or storage.join(path, "tokenizer")
    if not storage.exists(folder):
        raise FileNotFoundError(f"reward_model workdir {path}: its tokenizer {folder} is missing")
    return folder


def train_workdir(ctx: phase.RunContext, cfg, pairs: Sequence[PairRecord], directory: str) -> str:
    """A reward_model workdir (config.json + checkpoints/) trained on in-memory pairs; resumes when re-run.

    cfg is a reward_model config (its data block names the tokenizer; synthetic
    off); the RM is trained with that algorithm's own train step, so
    LearnedRM.from_workdir loads it like any reward_model run's workdir.
    """
    if distributed.is_primary():
        storage.makedirs(directory)
        storage.write_atomic(storage.join(directory, "config.json"), cfg.to_json_best_effort(indent=1))
    module, _ = spec.build_module(cfg)
    encoder_cfg = pair_data.encoder_config(cfg.data, cfg.data.tokenizer, module.trunk.config, cfg.model.init_from,
                                           spec.MODES[cfg.reward.mode])
    data_iter = packed_data.train_iterator(RecordPairSource(pairs, ""), encoder_cfg, cfg.data, ctx.mesh)
    t = cfg.train
    phase.train_params(directory, ctx, spec.train_step(cfg, module, ctx.mesh, ctx.rules),
                       lambda: initial_params(cfg, module, ctx.mesh, ctx.rules), data_iter, seed=cfg.seed + 1,
                       steps=t.steps, log_every=t.log_every, checkpoint_every=t.checkpoint_every,
                       max_to_keep=t.max_checkpoints)
    distributed.barrier("learned_rm")
    return directory
