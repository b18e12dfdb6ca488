"""Chat conversations -> generated texts with the jitted KV-cache sampler (`rollout.sample`).

Prompts are rendered with the tokenizer's chat template (generation prompt
added), left-padded to a length bucket and generated in fixed-size batches, so
the sampler compiles once per bucket. Buckets are multiples of a quarter of the
prompt length's power of two (at most ~25% padding), so 128K-token prompts and
100-token prompts share the same code without a compile per length.
"""

import dataclasses
import functools
from typing import Callable, Protocol, Sequence

import jax
import numpy as np

from mm_rlhf_jax.rollout import left_pad, sample
from mm_rlhf_jax.rollout.strategies import SamplingConfig


@dataclasses.dataclass(frozen=True)
class Generation:
    text: str
    truncated: bool  # ran to max_new_tokens without a stop token
    num_tokens: int


class TextGenerator(Protocol):
    batch_size: int

    def __call__(self, conversations: Sequence[list[dict]], seed: int) -> list[Generation]: ...


def bucket_length(n: int, minimum: int = 64) -> int:
    """Smallest multiple of max(minimum, 2**floor(log2 n) / 4) that is >= n."""
    if n <= minimum:
        return minimum
    step = max(minimum, 1 << (int(n).bit_length() - 3))
    return -(-n // step) * step


def render_prompt(tokenizer, conversation: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class SamplerTextGenerator:
    """A TextGenerator over a Flax LM (Decoder / VLM text path) and its params.

    Args:
      module: the model; `module.apply(..., positions=, segment_ids=, cache=)` and `init_cache`.
      params: its parameters (already placed on the mesh).
      tokenizer: a transformers tokenizer with a chat template.
      max_new_tokens / sampling / stop_ids: decoding settings (stop_ids default: eos).
      batch_size: rows per sampler call (short calls are padded with repeats).
      max_prompt_tokens: prompts longer than this raise (documents are length-filtered first).
      put: host batch dict -> device arrays (e.g. sharded over the mesh's batch axes).
    """

    def __init__(self, module, params, tokenizer, *, max_new_tokens: int, sampling: SamplingConfig,
                 batch_size: int, stop_ids: Sequence[int] | None = None, max_prompt_tokens: int | None = None,
                 put: Callable[[dict], dict] = lambda b: b, min_bucket: int = 64):
        self.module, self.params, self.tokenizer = module, params, tokenizer
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.max_prompt_tokens, self.put, self.min_bucket = max_prompt_tokens, put, min_bucket
        stops = tuple(int(s) for s in (stop_ids if stop_ids is not None else [tokenizer.eos_token_id]))
        self.stop_ids = stops
        apply_fn = lambda p, ids, **kw: module.apply({"params": p}, ids, **kw)

        @jax.jit
        def generate(params, ids, mask, rng):
            return sample(apply_fn, params, ids, mask, functools.partial(module.init_cache), rng=rng,
                          max_new_tokens=max_new_tokens, stop_ids=stops, sampling=sampling)

        self._generate = generate

    def encode(self, conversation: list[dict]) -> list[int]:
        ids = render_prompt(self.tokenizer, conversation)
        if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds max_prompt_tokens={self.max_prompt_tokens} "
                             f"(first words: {conversation[-1]['content'][:80]!r})")
        return ids

    def __call__(self, conversations: Sequence[list[dict]], seed: int) -> list[Generation]:
        if len(conversations) > self.batch_size:
            raise ValueError(f"{len(conversations)} conversations for a generator of batch_size={self.batch_size}")
        if not conversations:
            return []
        encoded = [self.encode(c) for c in conversations]
        n = len(encoded)
        encoded = encoded + [encoded[0]] * (self.batch_size - n)  # static batch shape
        length = bucket_length(max(len(e) for e in encoded), self.min_bucket)
        ids, mask = left_pad(encoded, int(self.tokenizer.pad_token_id), length)
        batch = self.put({"ids": ids, "mask": mask})
        out = jax.device_get(self._generate(self.params, batch["ids"], batch["mask"], jax.random.PRNGKey(seed)))
        results = []
        for row in range(n):
            length_row = int(out.lengths[row])
            tokens = np.asarray(out.tokens[row])[:length_row].tolist()
            stopped = bool(tokens) and tokens[-1] in self.stop_ids
            text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            results.append(Generation(text=text, truncated=not stopped, num_tokens=length_row))
        return results
