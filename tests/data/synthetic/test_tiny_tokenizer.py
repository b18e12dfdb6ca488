"""The tiny tokenizer: fixed size and ids, deterministic, covers the synthetic data, Qwen2-style chat."""

import os

from mm_rlhf_jax.data.tokenizer import load_tokenizer, special_ids
from mm_rlhf_jax.data.validation import load_queries
from mm_rlhf_jax.data.synthetic import tiny_tokenizer


def test_size_special_ids_and_chat_template(tiny_tok_dir):
    tok = load_tokenizer(tiny_tok_dir)
    assert len(tok) == tiny_tokenizer.TINY_VOCAB_SIZE == 512
    assert tok.convert_ids_to_tokens(list(range(7))) == list(tiny_tokenizer.SPECIAL_TOKENS)
    ids = special_ids(tok)
    assert (ids.pad, ids.eos, ids.image, ids.video) == (0, 3, 5, 6)
    assert tok.bos_token_id == 2 and tok.unk_token_id == 1
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>\nHi"},
            {"role": "assistant", "content": "red."}]
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<image>\nHi<|im_end|>\n"
        "<|im_start|>assistant\nred.<|im_end|>\n")
    assert tok.apply_chat_template(msgs[1:2], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\n<image>\nHi<|im_end|>\n<|im_start|>assistant\n")
    # Specials are single tokens even without surrounding spaces; words split from punctuation.
    assert tok.convert_ids_to_tokens(tok("<|im_start|>user\n<image><image>red.", add_special_tokens=False)[
        "input_ids"]) == ["<|im_start|>", "user", "<image>", "<image>", "red", "."]


def test_deterministic_build(tiny_tok_dir, tmp_path):
    again = tiny_tokenizer.build_tiny_tokenizer(str(tmp_path / "again"))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        with open(os.path.join(tiny_tok_dir, name), "rb") as a, open(os.path.join(again, name), "rb") as b:
            assert a.read() == b.read(), name


def test_vocab_order_and_overflow():
    vocab = tiny_tokenizer.build_vocab(["b a a", "c b a"], vocab_size=12)
    # specials, then by (-count, word): a x3, b x2, c x1, then fillers
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][7:] == [
        "a", "b", "c", "<unused_0>", "<unused_1>"]
    try:
        tiny_tokenizer.build_vocab(["a b c d e f"], vocab_size=10)
    except ValueError as e:
        assert "6 distinct words" in str(e)
    else:
        raise AssertionError("an oversized corpus must be rejected")


def test_synthetic_texts_have_no_unknown_tokens(tiny_tok_dir, synthetic_dir):
    tok = load_tokenizer(tiny_tok_dir)
    texts = []
    for split in ("train", "heldout"):
        for q in load_queries(os.path.join(synthetic_dir, split, "data.jsonl"), check_media=False):
            texts += [q.prompt] + [r.text for r in q.responses] + [r.reason for r in q.responses]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    unknown = [t for t, i in zip(texts, ids) if tok.unk_token_id in i]
    assert not unknown, unknown[:3]
    assert tok.decode(tok("The circle is red.", add_special_tokens=False)["input_ids"]) == "The circle is red ."
