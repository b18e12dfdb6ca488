"""Token ids and loss masks on hand-written tiny examples, truncation and its errors."""

import numpy as np
import pytest

from mm_rlhf_jax.data.errors import DataError, Where
from mm_rlhf_jax.data.records import PairRecord
from mm_rlhf_jax.data.tokenize import CRITIC_PROMPT, Media, critic_content, tokenize_critique, tokenize_preference
from mm_rlhf_jax.data.tokenizer import load_tokenizer, special_ids

WHERE = Where("pairs.jsonl", 12)


@pytest.fixture(scope="module")
def tok(tiny_tok_dir):
    return load_tokenizer(tiny_tok_dir)


def pair(**over):
    fields = dict(id="q", prompt="What colour is the <image> circle?", chosen="The circle is red.",
                  rejected="blue.", image="x.png", chosen_reason="The answer is correct.",
                  rejected_reason="The answer is wrong.", where=WHERE)
    fields.update(over)
    return PairRecord(**fields)


def ids(tok, tokens):
    out = tok.convert_tokens_to_ids(tokens)
    assert tok.unk_token_id not in out, tokens
    return out


def image_media(tok, count=3):
    return Media("<image>", special_ids(tok).image, count, "image")


def test_preference_tokens_and_masks_hand_checked(tok):
    out = tokenize_preference(tok, pair(), max_length=24, media=image_media(tok))
    prompt = ["<|im_start|>", "user", "<image>", "<image>", "<image>", "What", "colour", "is", "the", "circle",
              "?", "<|im_end|>", "<|im_start|>", "assistant"]
    chosen = ["The", "circle", "is", "red", ".", "<|im_end|>"]
    rejected = ["blue", ".", "<|im_end|>"]
    pad = tok.pad_token_id
    for row, resp in ((0, chosen), (1, rejected)):
        n = len(prompt) + len(resp)
        expected = ids(tok, prompt + resp) + [pad] * (24 - n)
        np.testing.assert_array_equal(out["input_ids"][row], expected)
        np.testing.assert_array_equal(out["attention_mask"][row], [1] * n + [0] * (24 - n))
        np.testing.assert_array_equal(out["loss_mask"][row], [0] * len(prompt) + [1] * len(resp) + [0] * (24 - n))
    assert out["input_ids"].dtype == np.int32 and out["loss_mask"].dtype == np.float32
    assert out["input_ids"].shape == (2, 24)


def test_text_only_and_system_prompt(tok):
    expected = ["<|im_start|>", "system", "You", "are", "a", "helpful", "assistant", ".", "<|im_end|>",
                "<|im_start|>", "user", "What", "colour", "is", "the", "circle", "?", "<|im_end|>",
                "<|im_start|>", "assistant"]
    # 20 prompt tokens already fill max_length: no room for a response.
    with pytest.raises(DataError, match="no room") as info:
        tokenize_preference(tok, pair(image=None), max_length=20, system="You are a helpful assistant.")
    assert (info.value.file, info.value.line, info.value.field) == ("pairs.jsonl", 12, "prompt")
    out = tokenize_preference(tok, pair(image=None), max_length=22, system="You are a helpful assistant.")
    np.testing.assert_array_equal(out["input_ids"][0], ids(tok, expected + ["The", "circle"]))
    np.testing.assert_array_equal(out["loss_mask"][0], [0] * 20 + [1, 1])


def test_truncation_cuts_the_response_tail(tok):
    out = tokenize_preference(tok, pair(), max_length=17, media=image_media(tok))
    # 14 prompt tokens + the first 3 of the chosen response; the rejected response (3 tokens) just fits.
    np.testing.assert_array_equal(out["input_ids"][0, 14:], ids(tok, ["The", "circle", "is"]))
    assert out["loss_mask"][0].sum() == 3 and out["attention_mask"].sum(-1).tolist() == [17, 17]


def test_image_token_overflow_names_file_line_field(tok):
    with pytest.raises(DataError, match="image-token overflow: 40 <image> tokens end at position 42") as info:
        tokenize_preference(tok, pair(), max_length=30, media=image_media(tok, 40))
    assert (info.value.file, info.value.line, info.value.field) == ("pairs.jsonl", 12, "image")


def test_media_tokens_in_response_are_rejected(tok):
    with pytest.raises(DataError, match="response contains") as info:
        tokenize_preference(tok, pair(rejected="<image> blue."), max_length=40, media=image_media(tok))
    assert info.value.field == "rejected"


def test_critique_format_and_mask(tok):
    out = tokenize_critique(tok, pair(), max_length=128, media=image_media(tok, 2))
    assert bool(out["has_critique"])
    user = critic_content(pair().prompt, "The circle is red.", image_media(tok, 2))
    assert user.startswith("<image>\nYou are an unbiased and fair evaluator")
    assert user.endswith("[Question]: What colour is the  circle?\n[LMM Response]: The circle is red.\n\n[Evaluation]:")
    assert user[len("<image>\n"):] == CRITIC_PROMPT.format(question="What colour is the  circle?",
                                                           answer="The circle is red.")
    body = tok(user[len("<image>\n"):], add_special_tokens=False)["input_ids"]
    prompt = ids(tok, ["<|im_start|>", "user", "<image>", "<image>"]) + body + ids(
        tok, ["<|im_end|>", "<|im_start|>", "assistant"])
    critique = ids(tok, ["The", "answer", "is", "correct", ".", "<|im_end|>"])
    n = len(prompt) + len(critique)
    np.testing.assert_array_equal(out["input_ids"][0, :n], prompt + critique)
    np.testing.assert_array_equal(out["loss_mask"][0], [0] * len(prompt) + [1] * len(critique) + [0] * (128 - n))
    # Row 1 critiques the rejected response with its own reason.
    assert tok.decode(out["input_ids"][1][out["loss_mask"][1] > 0]) == "The answer is wrong . <|im_end|>"


def test_critique_without_reason_ends_at_assistant_header(tok):
    out = tokenize_critique(tok, pair(chosen_reason=None, rejected_reason=None), max_length=128,
                            media=image_media(tok, 2))
    assert not bool(out["has_critique"]) and out["loss_mask"].sum() == 0
    last = out["attention_mask"].sum(-1) - 1
    assert [out["input_ids"][r, last[r]] for r in range(2)] == ids(tok, ["assistant", "assistant"])
