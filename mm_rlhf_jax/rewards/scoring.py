"""Scalar reward models as reward functions, and best-of-N references.

  BradleyTerryScorer  r(x, y) = RewardHead at the last token of a sequence built
                      from (x, y) by a registered layout:
                        "chat"           user x, assistant y (a standard BT RM)
                        "critic_prompt"  MM-RLHF's critic instruction over (x, y), no
                                         critique (this project's scalar RM format)
  CritiqueScorer      MM-RLHF critique RM: greedy critique c of (x, y) with the RM's
                      LM head, then r = RewardHead at the last token of
                      [critic_prompt(x, y) ; c] (the layout the RM was trained on)
  best_of_n           the candidate a scorer ranks highest per prompt: ByteDance's
                      GenRM reference for prompts without ground truth (papers.md §2)

Both scorers read a `ModelWithHeads(trunk, reward_head=RewardHead(...))`.
"""

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mm_rlhf_jax.data.prompts_pool import PromptRecord
from mm_rlhf_jax.data.tokenize import critic_content, encode_turns, pad_right
from mm_rlhf_jax.registry import Registry
from mm_rlhf_jax.rewards.genrm import TextGenerator, module_apply_fn

# name -> (prompt, response) -> (user text, assistant text)
LAYOUTS: Registry[Callable[[str, str], tuple[str, str | None]]] = Registry("reward-model layout")
LAYOUTS.register("chat")(lambda prompt, response: (prompt, response))
LAYOUTS.register("critic_prompt")(lambda prompt, response: (critic_content(prompt, response, None), None))


def _scores_fn(module):
    def fn(params, batch):
        out = module.apply({"params": params}, batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.rewards[:, 0]

    return jax.jit(fn)


class _SequenceScorer:
    """Rewards f32[N] of (user, assistant) turn pairs, in fixed-shape padded batches."""

    def __init__(self, module, params, tokenizer, *, max_length: int, batch_size: int, put=None):
        if getattr(module, "reward_head", None) is None:
            raise ValueError("a reward scorer needs ModelWithHeads(..., reward_head=RewardHead(...))")
        self.module, self.params, self.tokenizer = module, params, tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.put = put or (lambda b: {k: jnp.asarray(v) for k, v in b.items()})
        self._score = _scores_fn(module)

    def score_turns(self, turns: Sequence[tuple[str, str | None]]) -> np.ndarray:
        seqs = [encode_turns(self.tokenizer, user, assistant, max_length=self.max_length, media=None)
                for user, assistant in turns]
        out = []
        for start in range(0, len(seqs), self.batch_size):
            chunk = seqs[start:start + self.batch_size]
            n = len(chunk)
            chunk = chunk + [chunk[0]] * (self.batch_size - n)
            batch = pad_right(chunk, self.max_length, int(self.tokenizer.pad_token_id))
            batch = {k: batch[k] for k in ("input_ids", "attention_mask")}
            out.append(np.asarray(jax.device_get(self._score(self.params, self.put(batch))))[:n])
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), np.float32)


class BradleyTerryScorer(_SequenceScorer):
    def __init__(self, module, params, tokenizer, *, layout: str = "chat", max_length: int, batch_size: int,
                 put=None):
        super().__init__(module, params, tokenizer, max_length=max_length, batch_size=batch_size, put=put)
        self.layout = LAYOUTS.get(layout)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return self.score_turns([self.layout(p, y) for p, y in zip(prompts, responses)])


class CritiqueScorer(_SequenceScorer):
    """MM-RLHF critique RM inference (greedy critique: sampling several hurts, papers.md §1)."""

    def __init__(self, module, params, tokenizer, *, max_length: int, max_critique_tokens: int, batch_size: int,
                 put=None):
        super().__init__(module, params, tokenizer, max_length=max_length, batch_size=batch_size, put=put)
        self.generate = TextGenerator(module_apply_fn(module), module.init_cache, params, tokenizer,
                                      max_new_tokens=max_critique_tokens, max_prompt_length=max_length,
                                      batch_size=batch_size, put=put)
        self.critiques: list[str] = []  # of the last call, for logging

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        users = [critic_content(p, y, None) for p, y in zip(prompts, responses)]
        critiques = self.generate(users)
        too_long = [i for i, c in enumerate(critiques) if c is None]
        if too_long:
            raise ValueError(f"critic prompt of response {too_long[0]} is longer than max_length={self.max_length}")
        # An empty critique still gets scored: its slot then holds only the template suffix (as rm_inference).
        self.critiques = [c or " " for c in critiques]
        return self.score_turns(list(zip(users, self.critiques)))


def best_of_n(candidates: Sequence[Sequence[str]], scores: Sequence[np.ndarray]) -> list[str]:
    """The highest-scored candidate per prompt (first one on ties)."""
    if len(candidates) != len(scores):
        raise ValueError(f"{len(candidates)} candidate lists but {len(scores)} score lists")
    out = []
    for i, (cands, s) in enumerate(zip(candidates, scores)):
        s = np.asarray(s)
        if len(cands) == 0 or len(cands) != len(s):
            raise ValueError(f"prompt {i}: {len(cands)} candidates and {len(s)} scores")
        out.append(cands[int(np.argmax(s))])
    return out


def best_of_n_references(records: Sequence[PromptRecord], candidates: Sequence[Sequence[str]],
                         scorer: Callable[[Sequence[str], Sequence[str]], np.ndarray]) -> list[PromptRecord]:
    """Records with `reference` set to the scorer's best candidate (records with ground truth unchanged)."""
    flat_p = [r.prompt for r, cands in zip(records, candidates) for _ in cands]
    flat_y = [y for cands in candidates for y in cands]
    flat = scorer(flat_p, flat_y)
    bounds = np.cumsum([0] + [len(c) for c in candidates])
    best = best_of_n(candidates, [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
    return [r if r.ground_truth is not None else dataclasses.replace(r, reference=b) for r, b in zip(records, best)]

