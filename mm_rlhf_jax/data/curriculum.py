"""Early emphasis on math and code prompts (ByteDance RLHF, papers.md §2(a), Figs. 4 and 6).

The paper gives math and code prompts a large share of early PPO batches and
adds the other prompts later, but publishes only a fraction-vs-step plot
(§2(g).5). The schedule here is a config knob: the share of each batch drawn
from the emphasised domains is piecewise linear through (step, share) points
and constant after the last one; a share < 0 stands for the pool's natural
share (what uniform sampling would give). Default (configs): 0.8 for the first
30% of training, then linearly down to the natural share at 60%.

`CurriculumSampler` is the PPO prompt iterator: batch k holds exactly the
scheduled number of emphasised prompts in cumulative terms (largest-remainder
rounding, so the realised share tracks the schedule with no drift), each group
is visited in seeded per-epoch permutations (every prompt once per epoch), and
its whole state is the step index, so resuming is exact.
"""

import functools
from typing import Callable, Sequence

import numpy as np

from mm_rlhf_jax.data.prompts_pool import PromptRecord


class Curriculum:
    def __init__(self, steps: Sequence[int] = (0,), shares: Sequence[float] = (-1.0,),
                 emphasized: Sequence[str] = ("math", "code")):
        steps, shares = [int(s) for s in steps], [float(s) for s in shares]
        if not steps or len(steps) != len(shares):
            raise ValueError(f"curriculum needs as many steps as shares, got steps={steps} shares={shares}")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"curriculum steps must increase strictly, got {steps}")
        if any(s > 1 for s in shares):
            raise ValueError(f"curriculum shares must be <= 1 (< 0 = natural share), got {shares}")
        self.steps, self.shares, self.emphasized = steps, shares, tuple(emphasized)

    def share(self, step: int, natural: float) -> float:
        """Emphasised share of batch `step`; `natural` replaces negative points."""
        ys = [natural if s < 0 else s for s in self.shares]
        return float(np.interp(step, self.steps, ys))


class CurriculumSampler:
    """Checkpointable iterator of prompt batches: {"records": [PromptRecord] * B, **encode(records)}."""

    def __init__(self, records: Sequence[PromptRecord], batch_size: int, curriculum: Curriculum, seed: int,
                 encode: Callable[[list[PromptRecord]], dict] | None = None):
        if not records:
            raise ValueError("the prompt pool is empty")
        self.batch_size, self.curriculum, self.seed, self.encode = batch_size, curriculum, seed, encode
        emph = set(curriculum.emphasized)
        self.groups = ([r for r in records if r.domain in emph], [r for r in records if r.domain not in emph])
        self.natural = len(self.groups[0]) / len(records)
        self.step = 0
        # Emphasised count of every batch so far and its running sum (extended lazily, replayed on resume).
        self._counts: list[int] = []
        self._used: list[int] = [0]  # _used[k] = emphasised prompts in batches < k
        self._target = 0.0

    def emphasized_count(self, step: int) -> int:
        """Emphasised prompts in batch `step` (cumulative largest-remainder rounding of the schedule)."""
        while len(self._counts) <= step:
            k = len(self._counts)
            self._target += self.curriculum.share(k, self.natural) * self.batch_size
            n = int(round(self._target)) - self._used[-1]
            if not self.groups[1]:
                n = self.batch_size
            elif not self.groups[0]:
                n = 0
            n = min(max(n, 0), self.batch_size)
            self._counts.append(n)
            self._used.append(self._used[-1] + n)
        return self._counts[step]

    @functools.lru_cache(maxsize=8)
    def _permutation(self, group: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, group, epoch]).permutation(len(self.groups[group]))

    def _take(self, group: int, start: int, count: int) -> list[PromptRecord]:
        pool = self.groups[group]
        out = []
        for p in range(start, start + count):
            epoch, i = divmod(p, len(pool))
            out.append(pool[self._permutation(group, epoch)[i]])
        return out

    def batch_records(self, step: int) -> list[PromptRecord]:
        n_emph = self.emphasized_count(step)
        used_e = self._used[step]
        used_o = step * self.batch_size - used_e
        recs = self._take(0, used_e, n_emph) + self._take(1, used_o, self.batch_size - n_emph)
        # Shuffle within the batch so minibatches mix domains.
        order = np.random.default_rng([self.seed, 2, step]).permutation(self.batch_size)
        return [recs[i] for i in order]

    def __next__(self) -> dict:
        recs = self.batch_records(self.step)
        self.step += 1
        return {"records": recs, **(self.encode(recs) if self.encode else {})}

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])
