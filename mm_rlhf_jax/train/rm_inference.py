"""Critique-RM inference (MM-RLHF §3.2): greedy critique generation, then scalar scoring.

    critique c = RM.generate(critic_prompt(x, y))        (greedy: sampling several hurts, §5.3)
    reward     = RewardHead(h at the last token of [critic_prompt(x, y) ; c])

Generated critiques are decoded and re-encoded through the training
tokenization, so a scored sequence has exactly the training layout (chat
template suffix included) and the reward is read where training read it.

    rm = RewardModelInference(module, encoder_cfg, tokenizer, max_new_tokens=64, batch_size=16, mesh=mesh)
    rewards = rm.score_records(params, records, media_root=root)          # f32[N, 2], given critiques
    rewards, generated = rm.critique_then_score(params, records, media_root=root)

One instance compiles its generate and score functions once: every batch is
padded to fixed shapes (prompts to encoder_cfg.max_length), so repeated
evaluations and the score command reuse the same executables.
"""

import dataclasses
import functools

import jax
import numpy as np

from mm_rlhf_jax.data.example import ExampleEncoder
from mm_rlhf_jax.data.prompts import encode_critic_prompt
from mm_rlhf_jax.data.sources import RecordPairSource
from mm_rlhf_jax.data.tokenizer import special_ids
from mm_rlhf_jax.evals import generation
from mm_rlhf_jax.train import data_setup, rm_step


class RewardModelInference:
    """Jitted critique generation and scoring of pair records with one RM module."""

    def __init__(self, module, encoder_cfg, tokenizer, *, max_new_tokens: int, batch_size: int, mesh):
        self.module, self.encoder_cfg, self.tokenizer = module, encoder_cfg, tokenizer
        self.max_new_tokens, self.batch_size, self.mesh = max_new_tokens, batch_size, mesh
        self._score = jax.jit(functools.partial(rm_step.score_step, module=module))
        self._generate = None  # built on first use (scalar-mode RMs never generate)

    def put(self, batch):
        return data_setup.put_batch(batch, self.mesh)

    def generate_critiques(self, params, records, *, media_root: str) -> list[tuple[str, str]]:
        """(critique of chosen, critique of rejected) per pair record, greedy."""
        if self._generate is None:
            self._generate = generation.make_generate(self.module, max_new_tokens=self.max_new_tokens,
                                                      stop_ids=[special_ids(self.tokenizer).eos])
        encoder = ExampleEncoder(self.encoder_cfg)
        encoded = []
        for rec in records:
            encoded.append(encode_critic_prompt(encoder, rec, rec.chosen, media_root=media_root))
            encoded.append(encode_critic_prompt(encoder, rec, rec.rejected, media_root=media_root))
        texts = generation.generate_texts(self._generate, params, encoded, self.tokenizer,
                                          batch_size=self.batch_size, put=self.put,
                                          prompt_length=self.encoder_cfg.max_length)
        return list(zip(texts[0::2], texts[1::2]))

    def score_records(self, params, records, *, media_root: str, query_ids=None) -> np.ndarray:
        """Rewards f32[N, 2] of (chosen, rejected) for records in the encoder's format (reward / reward_scalar)."""
        source = RecordPairSource(records, media_root, query_ids)
        out = []
        for batch, n in data_setup.padded_batches(source, self.encoder_cfg, self.batch_size):
            out.append(np.asarray(jax.device_get(self._score(params, self.put(batch))))[:n])
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
