"""Prompt-only inputs for generation (critique generation, greedy-answer evals, rollouts).

A prompt is chat-templated up to the assistant header, with its media token
expanded exactly as in training, and left-padded in batches so every row ends
at the same position (what rollout.sample expects).
"""

import numpy as np

from mm_rlhf_jax.data.example import ExampleEncoder
from mm_rlhf_jax.data.tokenize import critic_content, encode_turns, user_content
from mm_rlhf_jax.rollout.sampler import left_pad


def encode_prompt(encoder: ExampleEncoder, rec, *, media_root: str, text: str | None = None) -> dict:
    """{"prompt_ids": int32[L], pixel arrays...} for one record; `text` overrides the user turn's text."""
    element = {"record": rec, "media_root": media_root, "image": None, "video": None}
    arrays, media = encoder.media_arrays(element, rec)
    user = user_content(rec.prompt if text is None else text, media)
    ids, _ = encode_turns(encoder.tokenizer, user, None, max_length=encoder.cfg.max_length, media=media,
                          system=encoder.cfg.system_prompt, where=rec.where)
    return {"prompt_ids": ids, **arrays}


def encode_critic_prompt(encoder: ExampleEncoder, rec, answer: str, *, media_root: str) -> dict:
    """The critique-RM prompt (MM-RLHF critic instruction over `answer`) up to the assistant header."""
    element = {"record": rec, "media_root": media_root, "image": None, "video": None}
    arrays, media = encoder.media_arrays(element, rec)
    ids, _ = encode_turns(encoder.tokenizer, critic_content(rec.prompt, answer, media), None,
                          max_length=encoder.cfg.max_length, media=media, system=encoder.cfg.system_prompt,
                          where=rec.where)
    return {"prompt_ids": ids, **arrays}


def collate_prompts(encoded: list[dict], pad_id: int, length: int | None = None) -> dict:
    """Left-padded prompt_ids / prompt_mask int32[B, L] plus the stacked pixel arrays."""
    ids, mask = left_pad([e["prompt_ids"].tolist() for e in encoded], pad_id, length)
    out = {"prompt_ids": ids, "prompt_mask": mask}
    for k in encoded[0]:
        if k != "prompt_ids":
            out[k] = np.stack([e[k] for e in encoded])
    return out
