"""Critique-RM inference (MM-RLHF §3.2): greedy critique generation, then scalar scoring.

    critique c = RM.generate(critic_prompt(x, y))        (greedy: sampling several hurts, §5.3)
    reward     = RewardHead(h at the last token of [critic_prompt(x, y) ; c])

Generated critiques are decoded and re-encoded through the training
tokenization, so a scored sequence has exactly the training layout (chat
template suffix included) and the reward is read where training read it.
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


def generate_critiques(module, params, records, encoder: ExampleEncoder, tokenizer, *, media_root: str,
                       batch_size: int, max_new_tokens: int, mesh) -> list[tuple[str, str]]:
    """(critique of chosen, critique of rejected) per pair record, greedy."""
    encoded = []
    for rec in records:
        encoded.append(encode_critic_prompt(encoder, rec, rec.chosen, media_root=media_root))
        encoded.append(encode_critic_prompt(encoder, rec, rec.rejected, media_root=media_root))
    generate = generation.make_generate(module, max_new_tokens=max_new_tokens, stop_ids=[special_ids(tokenizer).eos])
    texts = generation.generate_texts(generate, params, encoded, tokenizer, batch_size=batch_size,
                                      put=lambda b: data_setup.put_batch(b, mesh))
    return list(zip(texts[0::2], texts[1::2]))


def score_records(module, params, records, encoder_cfg, *, media_root: str, batch_size: int, mesh,
                  query_ids=None) -> np.ndarray:
    """Rewards f32[N, 2] of (chosen, rejected) for records in the encoder's format (reward / reward_scalar)."""
    source = RecordPairSource(records, media_root, query_ids)
    score = jax.jit(functools.partial(rm_step.score_step, module=module))
    out = []
    for batch, n in data_setup.padded_batches(source, encoder_cfg, batch_size):
        out.append(np.asarray(jax.device_get(score(params, data_setup.put_batch(batch, mesh))))[:n])
    return np.concatenate(out)


def critique_then_score(module, params, records, encoder_cfg, tokenizer, *, media_root: str, batch_size: int,
                        max_new_tokens: int, mesh):
    """(rewards f32[N, 2], records carrying the generated critiques as chosen/rejected_reason)."""
    critiques = generate_critiques(module, params, records, ExampleEncoder(encoder_cfg), tokenizer,
                                   media_root=media_root, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                   mesh=mesh)
    # An empty generation still gets scored: the critique slot then holds only the template suffix.
    generated = [dataclasses.replace(r, chosen_reason=c or " ", rejected_reason=x or " ")
                 for r, (c, x) in zip(records, critiques)]
    rewards = score_records(module, params, generated, encoder_cfg, media_root=media_root, batch_size=batch_size,
                            mesh=mesh)
    return rewards, generated
