"""Align-Pro's environment: the frozen model answers the prompter's rewrite; the router scores the answer."""

import numpy as np

from mm_rlhf_jax.data.prompts_pool import PromptRecord
from mm_rlhf_jax.rewards.router import RewardBatch
from mm_rlhf_jax.rollout.generate import Generator


class AlignProEnv:
    """env(records, rewrites) -> RewardBatch: the frozen model answers each rewrite, scored on the original record.

    A rewrite that does not fit the frozen model's prompt length earns
    `overflow_reward` (counted in `overflow_fraction`) instead of crashing the run.
    """

    def __init__(self, frozen: Generator, frozen_params, router, *, template: str, overflow_reward: float):
        self.frozen, self.params, self.router = frozen, frozen_params, router
        self.template, self.overflow_reward = template, overflow_reward
        self.calls, self.overflow_fraction = 0, 0.0

    def answers(self, texts: list[str]) -> tuple[list[str | None], np.ndarray]:
        prompts = [self.template.format(prompt=t) for t in texts]
        fits = np.array([self.frozen.fits(p) for p in prompts], bool)
        out: list[str | None] = [None] * len(texts)
        ok = [p for p, f in zip(prompts, fits) if f]
        if ok:
            # A different seed per call (only matters when the frozen model samples).
            answers = iter(self.frozen.texts(self.params, ok, seed=self.calls))
            out = [next(answers) if f else None for f in fits]
        self.calls += 1
        return out, fits

    def __call__(self, records: list[PromptRecord], rewrites: list[str]) -> RewardBatch:
        answers, fits = self.answers(rewrites)
        rewards = np.full(len(records), self.overflow_reward, np.float32)
        routes = ["overflow"] * len(records)
        valid = fits.copy()
        idx = np.nonzero(fits)[0]
        if len(idx):
            batch = self.router([records[i] for i in idx], [answers[i] for i in idx])
            rewards[idx], valid[idx] = batch.rewards, batch.valid
            for j, i in enumerate(idx):
                routes[i] = batch.routes[j]
        self.overflow_fraction = float(1.0 - fits.mean())
        return RewardBatch(rewards=rewards, routes=routes, valid=valid,
                           details=["<too long for the frozen model>" if a is None else a for a in answers])


def reward_summary(batch: RewardBatch) -> dict:
    """mean and (population) variance of rewards: Align-Pro's eval statistics."""
    r = np.asarray(batch.rewards, np.float64)
    return {"mean": float(r.mean()), "variance": float(r.var())}
