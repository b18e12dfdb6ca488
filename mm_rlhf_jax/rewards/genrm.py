"""Generative reward model (GenRM): a judge LM scores a response against a reference answer.

ByteDance's hybrid-reward RLHF (papers.md §2(a)) judges prompts without a
programmatic verifier with a GenRM that sees a reference: the ground truth
where one exists, else the SFT best-of-N response picked by a Bradley-Terry RM.

    judge prompt = JUDGE_TEMPLATES[template].format(prompt=x, reference=y_ref, response=y)
    output       = greedy judge generation through the KV-cache sampler (rollout.sample)
    score        = parse_score(output) in [0, 1]   (0.5 = as good as the reference)

The paper does not publish its judge prompt or output format (papers.md §2(g)),
so the format is ours: the judge ends with "Score: <s>", s a number in [0, 1]
(also accepted: "s/10"-style fractions and percentages, which are rescaled).
An output with no parsable score in [0, 1] gets `failure_value` (config,
default 0.0: an unjudgeable response earns nothing, so the policy cannot
profit from confusing the judge) and is flagged `valid=False` so the failure
rate is logged, never hidden.
"""

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mm_rlhf_jax.data.errors import DataError
from mm_rlhf_jax.data.tokenize import encode_turns
from mm_rlhf_jax.registry import Registry
from mm_rlhf_jax.rewards.judge_score import parse_score
from mm_rlhf_jax.rollout import left_pad, sample
from mm_rlhf_jax.rollout.strategies import SamplingConfig

JUDGE_TEMPLATES: Registry[str] = Registry("GenRM judge template")
JUDGE_TEMPLATES.register("default")(
    "You are a strict grader. Compare the response to the reference answer for the question below. "
    "Judge correctness first, then completeness and clarity.\n\n"
    "[Question]\n{prompt}\n\n[Reference answer]\n{reference}\n\n[Response]\n{response}\n\n"
    "Give a score between 0 and 1, where 0.5 means exactly as good as the reference, 1 means clearly "
    "better and 0 means wrong or useless. End with a line of the form \"Score: <number>\".")
# Short wording for the tiny word-level tokenizer (data/synthetic/reasoning.JUDGE_WORDS).
JUDGE_TEMPLATES.register("tiny")(
    "Question : {prompt} Reference : {reference} Response : {response} Judge the response against the reference .")

@dataclasses.dataclass(frozen=True)
class GenRMConfig:
    template: str = "default"  # a JUDGE_TEMPLATES name
    max_new_tokens: int = 32
    max_prompt_length: int = 1024  # judge prompts longer than this fail (failure_value, valid=False)
    batch_size: int = 8  # judge prompts per generation call (padded with repeats to a fixed shape)
    failure_value: float = 0.0
    length_bucket: int = 32  # prompt lengths are padded up to a multiple (fewer recompilations)


@dataclasses.dataclass
class GenRMScores:
    scores: np.ndarray  # f32[N] in [0, 1]; failure_value where invalid
    valid: np.ndarray  # bool[N]: a score was parsed
    outputs: list[str]  # the judge's decoded outputs


class TextGenerator:
    """Greedy generation for chat-templated user texts through rollout.sample (judges, critique RMs).

    apply_fn(params, ids, *, positions, segment_ids, cache, **kw) -> object with .logits and .cache.
    Prompts are left-padded to a length bucket and batches padded with repeats, so
    a few compiled shapes serve every call. A prompt over max_prompt_length yields None.
    """

    def __init__(self, apply_fn: Callable[..., Any], init_cache: Callable, params, tokenizer, *,
                 max_new_tokens: int, max_prompt_length: int, batch_size: int, length_bucket: int = 32,
                 put: Callable[[dict], dict] | None = None):
        self.params, self.tokenizer = params, tokenizer
        self.max_prompt_length, self.batch_size, self.length_bucket = max_prompt_length, batch_size, length_bucket
        self.put = put or (lambda b: {k: jnp.asarray(v) for k, v in b.items()})
        self._generate = jax.jit(functools.partial(
            sample, apply_fn, init_cache=init_cache, max_new_tokens=max_new_tokens,
            stop_ids=(int(tokenizer.eos_token_id),), sampling=SamplingConfig("greedy")))

    def encode(self, text: str) -> list[int] | None:
        try:
            ids, _ = encode_turns(self.tokenizer, text, None, max_length=self.max_prompt_length, media=None)
        except DataError:
            return None
        return ids.tolist() if len(ids) <= self.max_prompt_length else None

    def __call__(self, texts: Sequence[str]) -> list[str | None]:
        encoded = [self.encode(t) for t in texts]
        todo = [i for i, e in enumerate(encoded) if e is not None]
        outputs: list[str | None] = [None] * len(texts)
        bs, bucket = self.batch_size, self.length_bucket
        pad_id = int(self.tokenizer.pad_token_id)
        for start in range(0, len(todo), bs):
            rows = todo[start:start + bs]
            seqs = [encoded[i] for i in rows]
            seqs += [seqs[0]] * (bs - len(seqs))  # fixed batch shape
            length = min(-(-max(map(len, seqs)) // bucket) * bucket, self.max_prompt_length)
            ids, mask = left_pad(seqs, pad_id, length)
            batch = self.put({"prompt_ids": ids, "prompt_mask": mask})
            out = jax.device_get(self._generate(self.params, batch["prompt_ids"], batch["prompt_mask"],
                                                rng=jax.random.PRNGKey(0)))
            for j, i in enumerate(rows):
                toks = np.asarray(out.tokens[j])[: int(out.lengths[j])].tolist()
                outputs[i] = self.tokenizer.decode(toks, skip_special_tokens=True).strip()
        return outputs


def module_apply_fn(module):
    """The sampler's apply_fn for a Flax model (Decoder, LLaVA-OV, ModelWithHeads)."""
    return lambda p, ids, **kw: module.apply({"params": p}, ids, compute_logits=True, **kw)


class GenRM:
    """A judge LM scoring (prompt, response) against a reference; see the module docstring."""

    def __init__(self, apply_fn: Callable[..., Any], init_cache: Callable, params, tokenizer, cfg: GenRMConfig,
                 *, put: Callable[[dict], dict] | None = None):
        self.cfg = cfg
        self.template = JUDGE_TEMPLATES.get(cfg.template)
        self.generate = TextGenerator(apply_fn, init_cache, params, tokenizer, max_new_tokens=cfg.max_new_tokens,
                                      max_prompt_length=cfg.max_prompt_length, batch_size=cfg.batch_size,
                                      length_bucket=cfg.length_bucket, put=put)

    @classmethod
    def from_module(cls, module, params, tokenizer, cfg: GenRMConfig, *, put=None) -> "GenRM":
        return cls(module_apply_fn(module), module.init_cache, params, tokenizer, cfg, put=put)

    def judge_texts(self, prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> list[str]:
        if not len(prompts) == len(responses) == len(references):
            raise ValueError(f"GenRM: {len(prompts)} prompts, {len(responses)} responses and {len(references)} "
                             "references must have the same length")
        return [self.template.format(prompt=p, reference=r, response=y)
                for p, y, r in zip(prompts, responses, references)]

    def score(self, prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> GenRMScores:
        outputs = self.generate(self.judge_texts(prompts, responses, references))
        parsed = [None if o is None else parse_score(o) for o in outputs]
        valid = np.array([p is not None for p in parsed], bool)
        scores = np.array([self.cfg.failure_value if p is None else p for p in parsed], np.float32)
        return GenRMScores(scores=scores, valid=valid,
                           outputs=["<judge prompt too long>" if o is None else o for o in outputs])
