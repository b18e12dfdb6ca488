"""Prompt-only inputs for generation (critique generation, greedy-answer evals, rollouts).

A prompt is chat-templated up to the assistant header, with its media token
expanded exactly as in training; rollout.generate left-pads and batches them.
"""

from mm_rlhf_jax.data.example import ExampleEncoder
from mm_rlhf_jax.data.tokenize import critic_content, encode_turns, user_content


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
