"""A tiny, deterministic word-level tokenizer with a Qwen2-style chat template.

Built offline with the `tokenizers` library and saved as a transformers
folder (`AutoTokenizer.from_pretrained(path, local_files_only=True)` loads it):

- pre-tokenizer `Whitespace` (words and punctuation runs; whitespace is dropped);
- special tokens with fixed ids: 0 `<pad>`, 1 `<unk>`, 2 `<s>` (bos, never added
  automatically, as in Qwen2), 3 `<|im_end|>` (eos: generation stops at the end of
  the assistant turn), 4 `<|im_start|>`, 5 `<image>`, 6 `<video>`;
- the words of a corpus (the synthetic task texts, the MM-RLHF critic prompt,
  the chat role names) ordered by (-count, word). We count them ourselves with the
  library's pre-tokenizer instead of `WordLevelTrainer`, whose order for equal
  counts follows hash-map iteration and changes from run to run;
- unused `<unused_k>` entries up to exactly TINY_VOCAB_SIZE.

TINY_VOCAB_SIZE is the `vocab_size` the tiny model configs must use.

Chat template (Qwen2 layout without the default system message, to keep the tiny
sequences short): `<|im_start|>{role}\n{content}<|im_end|>\n` per message, and
`<|im_start|>assistant\n` as the generation prompt.
"""

import collections
import os
from typing import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers

TINY_VOCAB_SIZE = 512
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "<|im_end|>", "<|im_start|>", "<image>", "<video>")
PAD, UNK, BOS, EOS, IM_START, IMAGE, VIDEO = SPECIAL_TOKENS
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def base_corpus() -> list[str]:
    """Texts every tiny tokenizer covers: the synthetic task, the critic prompt, chat roles."""
    from mm_rlhf_jax.data.tokenize import CRITIC_PROMPT  # the RM's fixed instruction text
    from mm_rlhf_jax.data.synthetic.mmrlhf_texts import corpus

    return corpus() + [CRITIC_PROMPT, "system user assistant", "You are a helpful assistant."]


def build_vocab(texts: Iterable[str], vocab_size: int = TINY_VOCAB_SIZE) -> dict[str, int]:
    """token -> id: specials, then corpus words by (-count, word), then `<unused_k>` fillers."""
    pre = pre_tokenizers.Whitespace()
    counts: collections.Counter = collections.Counter()
    for text in texts:
        counts.update(piece for piece, _ in pre.pre_tokenize_str(text))
    for tok in SPECIAL_TOKENS:
        counts.pop(tok, None)
    words = sorted(counts, key=lambda w: (-counts[w], w))
    if len(SPECIAL_TOKENS) + len(words) > vocab_size:
        raise ValueError(f"corpus has {len(words)} distinct words; with {len(SPECIAL_TOKENS)} special tokens "
                         f"that exceeds vocab_size={vocab_size}")
    tokens = list(SPECIAL_TOKENS) + words
    tokens += [f"<unused_{k}>" for k in range(vocab_size - len(tokens))]
    return {t: i for i, t in enumerate(tokens)}


def build_tiny_tokenizer(path: str, texts: Iterable[str] | None = None, vocab_size: int = TINY_VOCAB_SIZE) -> str:
    """Write the tiny tokenizer (tokenizer.json, config, chat template) to `path`; returns `path`."""
    from transformers import PreTrainedTokenizerFast

    vocab = build_vocab(base_corpus() if texts is None else texts, vocab_size)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens(list(SPECIAL_TOKENS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
        additional_special_tokens=[IM_START, IMAGE, VIDEO], model_max_length=4096)
    tok.chat_template = CHAT_TEMPLATE
    os.makedirs(path, exist_ok=True)
    tok.save_pretrained(path)
    return path
