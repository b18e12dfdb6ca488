"""Critique-RM inference (MM-RLHF §3.2): greedy critique generation, then scalar scoring.

    critique c = RM.generate(critic_prompt(x, y))        (greedy: sampling several hurts, §5.3)
    reward     = RewardHead(h at the last token of [critic_prompt(x, y) ; c])

Generated critiques are decoded and re-encoded through the training
tokenization, so a scored sequence has exactly the training layout (chat
template suffix included) and the reward is read where training read it.

    rm = RewardModelInference(module, encoder_cfg, tokenizer, mesh, max_new_tokens=64, batch_size=16)
    rewards = rm.score_records(params, records, media_root=root)          # f32[N, 2], given critiques
    rewards, generated = rm.critique_then_score(params, records, media_root=root)

One instance compiles its generate and score functions once: critic prompts
are left-padded to encoder_cfg.max_length and batches padded to batch_size, so
repeated evaluations and the score command reuse the same executables.
"""

import dataclasses
import functools

import jax
import numpy as np

from mm_rlhf_jax.algorithms.reward_model import step as step_lib
from mm_rlhf_jax.data.example import ExampleEncoder
from mm_rlhf_jax.data.prompts import encode_critic_prompt
from mm_rlhf_jax.data.sources import RecordPairSource
from mm_rlhf_jax.data.tokenizer import special_ids
from mm_rlhf_jax.rollout.generate import Generator
from mm_rlhf_jax.sharding import placement
from mm_rlhf_jax.train import pair_data


class RewardModelInference:
    """Jitted critique generation and scoring of pair records with one RM module."""

    def __init__(self, module, encoder_cfg, tokenizer, mesh, *, max_new_tokens: int, batch_size: int,
                 param_shardings=None):
        self.module, self.encoder_cfg, self.tokenizer = module, encoder_cfg, tokenizer
        self.batch_size, self.mesh = batch_size, mesh
        self._score = jax.jit(functools.partial(step_lib.score_step, module=module))
        self.generator = Generator(module, tokenizer, mesh, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   stop_ids=[special_ids(tokenizer).eos], prompt_length=encoder_cfg.max_length,
                                   param_shardings=param_shardings)

    def generate_critiques(self, params, records, *, media_root: str) -> list[tuple[str, str]]:
        """(critique of chosen, critique of rejected) per pair record, greedy."""
        encoder = ExampleEncoder(self.encoder_cfg)
        prompts = []
        for rec in records:
            prompts.append(encode_critic_prompt(encoder, rec, rec.chosen, media_root=media_root))
            prompts.append(encode_critic_prompt(encoder, rec, rec.rejected, media_root=media_root))
        texts = self.generator.texts(params, prompts)
        return list(zip(texts[0::2], texts[1::2]))

    def score_records(self, params, records, *, media_root: str, query_ids=None) -> np.ndarray:
        """Rewards f32[N, 2] of (chosen, rejected) for records in the encoder's format (reward / reward_scalar)."""
        source = RecordPairSource(records, media_root, query_ids)
        out = []
        for batch, n in pair_data.padded_batches(source, self.encoder_cfg, self.batch_size):
            out.append(placement.fetch(self._score(params, placement.put_global_batch(batch, self.mesh)))[:n])
        return np.concatenate(out)

    def critique_then_score(self, params, records, *, media_root: str):
        """(rewards f32[N, 2], records carrying the generated critiques as chosen/rejected_reason)."""
        critiques = self.generate_critiques(params, records, media_root=media_root)
        # An empty generation still gets scored: the critique slot then holds only the template suffix.
        generated = [dataclasses.replace(r, chosen_reason=c or " ", rejected_reason=x or " ")
                     for r, (c, x) in zip(records, critiques)]
        return self.score_records(params, generated, media_root=media_root), generated

    def rewards(self, params, records, *, media_root: str, generate: bool):
        """(rewards f32[N, 2], generated records or None): critique-then-score, or the records as they are."""
        if generate:
            return self.critique_then_score(params, records, media_root=media_root)
        return self.score_records(params, records, media_root=media_root), None
