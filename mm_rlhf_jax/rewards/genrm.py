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
from typing import Sequence

import numpy as np

from mm_rlhf_jax.registry import Registry
from mm_rlhf_jax.rewards.judge_score import parse_score
from mm_rlhf_jax.rollout.generate import Generator, chat_encoder

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
    length_bucket: int = 32  # the smallest prompt-length bucket (rollout.generate.bucket_length)


@dataclasses.dataclass
class GenRMScores:
    scores: np.ndarray  # f32[N] in [0, 1]; failure_value where invalid
    valid: np.ndarray  # bool[N]: a score was parsed
    outputs: list[str]  # the judge's decoded outputs


class GenRM:
    """A judge LM scoring (prompt, response) against a reference; see the module docstring.

    generator: a rollout.generate.Generator over the judge whose encode turns a
    judge prompt (a user text) into chat-templated ids, with
    max_new_tokens / batch_size from cfg (GenRM.build makes one); params: the judge's.
    """

    def __init__(self, generator: Generator, params, cfg: GenRMConfig):
        self.generator, self.params, self.cfg = generator, params, cfg
        self.template = JUDGE_TEMPLATES.get(cfg.template)

    @classmethod
    def build(cls, module, params, tokenizer, mesh, cfg: GenRMConfig) -> "GenRM":
        """A greedy judge over `module` (params already in the layout it samples in)."""
        gen = Generator(module, tokenizer, mesh, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                        encode=chat_encoder(tokenizer, max_length=cfg.max_prompt_length),
                        min_bucket=cfg.length_bucket)
        return cls(gen, params, cfg)

    def judge_texts(self, prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> list[str]:
        if not len(prompts) == len(responses) == len(references):
            raise ValueError(f"GenRM: {len(prompts)} prompts, {len(responses)} responses and {len(references)} "
                             "references must have the same length")
        return [self.template.format(prompt=p, reference=r, response=y)
                for p, y, r in zip(prompts, responses, references)]

    def judge(self, texts: Sequence[str]) -> list[str | None]:
        """The judge's greedy outputs; None for a judge prompt over max_prompt_length."""
        fits = [self.generator.fits(t) for t in texts]
        outputs = iter(self.generator.texts(self.params, [t for t, ok in zip(texts, fits) if ok]))
        return [next(outputs) if ok else None for ok in fits]

    def score(self, prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> GenRMScores:
        outputs = self.judge(self.judge_texts(prompts, responses, references))
        parsed = [None if o is None else parse_score(o) for o in outputs]
        valid = np.array([p is not None for p in parsed], bool)
        scores = np.array([self.cfg.failure_value if p is None else p for p in parsed], np.float32)
        return GenRMScores(scores=scores, valid=valid,
                           outputs=["<judge prompt too long>" if o is None else o for o in outputs])
