"""Generation evals: greedy answers of a (multimodal) policy, checked by a registered answer checker."""

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mm_rlhf_jax.data.prompts import collate_prompts
from mm_rlhf_jax.registry import Registry
from mm_rlhf_jax.rollout import sample
from mm_rlhf_jax.rollout.strategies import SamplingConfig

# name -> f(generated text, query record) -> bool
ANSWER_CHECKERS: Registry[Callable] = Registry("answer checker")


@ANSWER_CHECKERS.register("synthetic")
def _synthetic(text, query):
    from mm_rlhf_jax.data.synthetic.mmrlhf import is_correct

    return is_correct(text, query)


PIXEL_KEYS = ("pixel_values", "image_sizes", "pixel_values_videos")


def prefill_inputs(batch: dict) -> dict:
    """Vision kwargs for the sampler's prefill ((0, 0) image size = no image)."""
    out = {k: batch[k] for k in PIXEL_KEYS if k in batch}
    if "image_sizes" in out and "has_image" in batch:
        out["image_sizes"] = jnp.where(batch["has_image"][:, None], out["image_sizes"], 0)
    return out


def make_generate(module, *, max_new_tokens: int, stop_ids: Sequence[int], sampling=SamplingConfig("greedy"),
                  cache_dtype=None):
    """A jitted (params, batch, rng) -> SampleOutput for collated prompt batches."""
    apply_fn = lambda p, ids, **kw: module.apply({"params": p}, ids, compute_logits=True, **kw)
    init_cache = functools.partial(module.init_cache, dtype=cache_dtype)

    @jax.jit
    def generate(params, batch, rng):
        return sample(apply_fn, params, batch["prompt_ids"], batch["prompt_mask"], init_cache,
                      max_new_tokens=max_new_tokens, stop_ids=tuple(stop_ids), rng=rng, sampling=sampling,
                      prefill_kwargs=prefill_inputs(batch))

    return generate


def generate_texts(generate, params, encoded: list[dict], tokenizer, *, batch_size: int, put, rng=None,
                   prompt_length: int | None = None) -> list[str]:
    """Decodes generations for encoded prompts (see data.prompts), in fixed-shape padded batches."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    length = prompt_length or max(len(e["prompt_ids"]) for e in encoded)
    texts = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        n = len(chunk)
        chunk = chunk + [chunk[0]] * (batch_size - n)  # static shapes: pad with a repeat
        batch = collate_prompts(chunk, int(tokenizer.pad_token_id), length)
        out = jax.device_get(generate(params, put(batch), jax.random.fold_in(rng, start)))
        for row in range(n):
            tokens = np.asarray(out.tokens[row])[: int(out.lengths[row])]
            texts.append(tokenizer.decode(tokens.tolist(), skip_special_tokens=True).strip())
    return texts


def answer_correct(texts: Sequence[str], queries, checker: str) -> np.ndarray:
    """bool[N]: whether each generated text answers its query right (ANSWER_CHECKERS[checker])."""
    check = ANSWER_CHECKERS.get(checker)
    return np.asarray([bool(check(t, q)) for t, q in zip(texts, queries)], bool)


def accuracy_by_category(correct, queries) -> dict[str, float]:
    """{query category: mean of `correct` over its queries} (sorted keys)."""
    correct, cats = np.asarray(correct, bool), np.asarray([q.category for q in queries], object)
    return {str(cat): float(correct[cats == cat].mean()) for cat in sorted(set(cats.tolist()))}
