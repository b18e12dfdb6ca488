"""Chat-templated token ids and loss masks for preference pairs and critique-RM pairs.

A sequence is `prompt_ids + response_ids` where
  prompt_ids  = chat_template([system?, user], add_generation_prompt=True)
  response_ids = chat_template([..., assistant])[len(prompt text):]   (content + end of turn)
so the loss mask is 1 exactly on response tokens (TRL's prompt/completion split).
The user turn is "<image>\\n{prompt}" (or "<video>\\n..."), the media token first, as
MM-RLHF does (any "<image>" already in the prompt is removed first); the one
media token is then expanded to the number of visual tokens the model produces
for that image (`anyres.num_image_tokens`) or video (`anyres.num_video_tokens`).

Truncation keeps the prompt whole and cuts the response tail. It refuses, with
a DataError naming file, line and field, when the media tokens do not fit
(image-token overflow) or when no response token would be left.

Critique-RM format (MM-RLHF `make_conv_rm`): the user turn is the critic prompt
(evaluator instruction, `[Question]: q`, `[LMM Response]: a`, `[Evaluation]:`),
the assistant turn the critique, and the loss mask covers the critique. Without a
critique the sequence ends at the assistant header and its mask is empty.
"""

import dataclasses

import numpy as np

from mm_rlhf_jax.data.errors import DataError, Where
from mm_rlhf_jax.data.records import PairRecord
from mm_rlhf_jax.data.tokenizer import IMAGE_TOKEN, VIDEO_TOKEN, special_ids

CRITIC_PROMPT = (
    "You are an unbiased and fair evaluator tasked with assessing the quality of answers provided by a Large "
    "Multimodal Model (LMM). Given the following question and the LMM's response, please evaluate the correctness, "
    "clarity, and completeness of the answer. Provide a detailed explanation of your assessment, including specific "
    "points of strength and areas for improvement.\n\n"
    "[Question]: {question}\n"
    "[LMM Response]: {answer}\n\n"
    "[Evaluation]:"
)


@dataclasses.dataclass(frozen=True)
class Media:
    """The visual input of a sequence: its placeholder token and how many tokens it expands to."""

    token: str  # IMAGE_TOKEN or VIDEO_TOKEN
    token_id: int
    count: int
    field: str  # record field for errors: "image" or "video"


def strip_media_tokens(prompt: str) -> str:
    return prompt.replace(IMAGE_TOKEN, "").replace(VIDEO_TOKEN, "").strip()


def user_content(prompt: str, media: Media | None) -> str:
    text = strip_media_tokens(prompt)
    return f"{media.token}\n{text}" if media is not None else text


def critic_content(prompt: str, answer: str, media: Media | None) -> str:
    text = CRITIC_PROMPT.format(question=strip_media_tokens(prompt), answer=answer).strip()
    return f"{media.token}\n{text}" if media is not None else text


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []


def encode_turns(tok, user: str, assistant: str | None, *, max_length: int, media: Media | None,
                 system: str | None = None, where: Where = Where(), prompt_field: str = "prompt",
                 response_field: str = "chosen") -> tuple[np.ndarray, np.ndarray]:
    """(ids int32[L], loss_mask f32[L]) with L <= max_length, media tokens expanded.

    Args:
      user / assistant: turn contents; assistant None -> prompt with generation header only.
      prompt_field / response_field: record fields named in errors.
    """
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    prompt_text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    response_text = ""
    if assistant is not None:
        full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": assistant}], tokenize=False)
        if not full.startswith(prompt_text):
            raise ValueError("the chat template's rendering of [user, assistant] does not start with its "
                             f"generation prompt; cannot split prompt from response.\nprompt: {prompt_text!r}\n"
                             f"full: {full!r}")
        response_text = full[len(prompt_text):]
    prompt, response = _ids(tok, prompt_text), _ids(tok, response_text)
    ids = special_ids(tok)
    media_ids = {i for i in (ids.image, ids.video) if i is not None}
    if any(t in media_ids for t in response):
        raise DataError(where, response_field, "the response contains an <image>/<video> token")
    slots = [k for k, t in enumerate(prompt) if t in media_ids]
    expected = 1 if media is not None else 0
    if len(slots) != expected:
        raise DataError(where, prompt_field, f"the rendered prompt has {len(slots)} media placeholder tokens, "
                                             f"expected {expected}")
    media_end = 0
    if media is not None:
        k = slots[0]
        if prompt[k] != media.token_id:
            raise DataError(where, prompt_field, f"placeholder id {prompt[k]} is not {media.token} "
                                                 f"(id {media.token_id})")
        prompt = prompt[:k] + [media.token_id] * media.count + prompt[k + 1:]
        media_end = k + media.count
    if media_end > max_length:
        raise DataError(where, media.field, f"image-token overflow: {media.count} {media.token} tokens end at "
                                            f"position {media_end} > max_length={max_length}; raise max_length or "
                                            "use a smaller image grid")
    room = max_length - len(prompt)
    if room < (1 if assistant is not None else 0):
        raise DataError(where, prompt_field, f"prompt is {len(prompt)} tokens (with {media.count if media else 0} "
                                             f"media tokens), leaving no room for a {response_field} token "
                                             f"within max_length={max_length}")
    response = response[:room]
    out_ids = np.asarray(prompt + response, np.int32)
    mask = np.concatenate([np.zeros(len(prompt), np.float32), np.ones(len(response), np.float32)])
    return out_ids, mask


def pad_right(seqs: list[tuple[np.ndarray, np.ndarray]], length: int, pad_id: int) -> dict[str, np.ndarray]:
    """Stack (ids, mask) sequences, right-padded: input_ids/attention_mask int32[N, T], loss_mask f32[N, T]."""
    n = len(seqs)
    input_ids = np.full((n, length), pad_id, np.int32)
    attention = np.zeros((n, length), np.int32)
    loss = np.zeros((n, length), np.float32)
    for i, (ids, mask) in enumerate(seqs):
        input_ids[i, :len(ids)] = ids
        attention[i, :len(ids)] = 1
        loss[i, :len(ids)] = mask
    return {"input_ids": input_ids, "attention_mask": attention, "loss_mask": loss}


def tokenize_preference(tok, pair: PairRecord, *, max_length: int, media: Media | None = None,
                        system: str | None = None) -> dict[str, np.ndarray]:
    """input_ids / attention_mask int32[2, T], loss_mask f32[2, T]; row 0 chosen, row 1 rejected."""
    user = user_content(pair.prompt, media)
    seqs = [encode_turns(tok, user, text, max_length=max_length, media=media, system=system, where=pair.where,
                         prompt_field="prompt", response_field=field)
            for field, text in (("chosen", pair.chosen), ("rejected", pair.rejected))]
    return pad_right(seqs, max_length, int(tok.pad_token_id))


def tokenize_critique(tok, pair: PairRecord, *, max_length: int, media: Media | None = None,
                      system: str | None = None, with_critique: bool = True) -> dict[str, np.ndarray]:
    """Critique-RM sequences [2, T] (critic prompt + critique) and has_critique: bool.

    with_critique=False gives the scalar-only RM ablation: the critic prompt alone
    (up to the assistant header), scored without any critique.
    """
    seqs = []
    use_critique = with_critique and pair.has_critique
    for field, text, reason in (("chosen", pair.chosen, pair.chosen_reason),
                                ("rejected", pair.rejected, pair.rejected_reason)):
        user = critic_content(pair.prompt, text, media)
        seqs.append(encode_turns(tok, user, reason if use_critique else None, max_length=max_length,
                                 media=media, system=system, where=pair.where, prompt_field=field,
                                 response_field=f"{field}_reason"))
    out = pad_right(seqs, max_length, int(tok.pad_token_id))
    out["has_critique"] = np.bool_(use_critique)
    return out


def tokenize_scalar_reward(tok, pair: PairRecord, **kw) -> dict[str, np.ndarray]:
    """The scalar-only RM format: critic prompt over each answer, no critique."""
    return tokenize_critique(tok, pair, with_critique=False, **kw)
