"""Pre-PPO prompt selection (ByteDance RLHF, papers.md §2(a)): keep the hardest new prompts.

    s(x)     = mean reward of `num_samples` samples of the initial policy on x
    s~(x)    = s(x) normalised within x's domain (NORMALIZERS)
    P_new    = the lowest `fraction` of the newly collected pool by s~
    P_train  = P_original ∪ P_new

"Prompts with lower RM scores are more challenging and less prone to reward
hacking" (paper §3, translated). What the paper leaves open (§2(g).3) is a
config knob here, with these defaults:
  * the score: the hybrid router's reward (RTV where a verifier exists, else the
    GenRM), i.e. the same reward PPO will optimise;
  * samples per prompt: 4 (a single sample makes verifier scores 0/1 coin flips);
  * normalisation: per-domain z-score ("zscore"); "rank" (per-domain percentile)
    and "none" are registered alternatives;
  * selection: the bottom `fraction` of the *new* pool (default 0.1: Fig. 8 finds
    10% better than 20% and 50%); equal normalised scores are ordered by a seeded
    shuffle, so ties do not favour the start of the file.
"""

import dataclasses
import json
from typing import Callable, Sequence

import numpy as np

from mm_rlhf_jax import distributed, storage
from mm_rlhf_jax.data.prompts_pool import PromptRecord, write_prompt_pool
from mm_rlhf_jax.registry import Registry

NORMALIZERS: Registry[Callable[[np.ndarray], np.ndarray]] = Registry("score normaliser")


@NORMALIZERS.register("zscore")
def _zscore(s: np.ndarray) -> np.ndarray:
    std = s.std()
    return (s - s.mean()) / std if std > 1e-12 else np.zeros_like(s)


@NORMALIZERS.register("rank")
def _rank(s: np.ndarray) -> np.ndarray:
    """Average rank scaled to [0, 1] (ties share their mean rank); one prompt -> 0.5."""
    if len(s) == 1:
        return np.full(1, 0.5)
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(len(s))
    for v in np.unique(s):
        ranks[s == v] = ranks[s == v].mean()
    return ranks / (len(s) - 1)


NORMALIZERS.register("none")(lambda s: s.astype(np.float64))


def normalize_per_domain(scores: Sequence[float], domains: Sequence[str], method: str = "zscore") -> np.ndarray:
    """f64[N]: each score normalised among the scores of its own domain."""
    scores = np.asarray(scores, np.float64)
    if len(scores) != len(domains):
        raise ValueError(f"{len(scores)} scores but {len(domains)} domains")
    fn = NORMALIZERS.get(method)
    out = np.zeros_like(scores)
    domains = np.asarray(domains)
    for d in np.unique(domains):
        sel = domains == d
        out[sel] = fn(scores[sel])
    return out


def select_lowest(normalized: Sequence[float], fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of the round(fraction * N) lowest scores (at least 1 when fraction > 0)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"selection fraction must be in [0, 1], got {fraction}")
    normalized = np.asarray(normalized, np.float64)
    n = len(normalized)
    k = 0 if fraction == 0 or n == 0 else max(1, int(round(fraction * n)))
    tiebreak = np.random.default_rng(seed).permutation(n)
    order = np.lexsort((tiebreak, normalized))
    return np.sort(order[:k])


def score_prompts(records: Sequence[PromptRecord], generate: Callable, reward_fn: Callable,
                  num_samples: int) -> np.ndarray:
    """f32[N]: mean reward of num_samples policy samples per prompt.

    generate(records, num_samples) -> N lists of num_samples response texts;
    reward_fn(records, responses) -> rewards f32[M] (or an object with .rewards).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    samples = generate(list(records), num_samples)
    if len(samples) != len(records) or any(len(s) != num_samples for s in samples):
        raise ValueError(f"generate returned {[len(s) for s in samples][:8]}... samples for {len(records)} prompts; "
                         f"expected {num_samples} each")
    flat_r = [r for r in records for _ in range(num_samples)]
    flat_y = [y for s in samples for y in s]
    out = reward_fn(flat_r, flat_y)
    rewards = np.asarray(getattr(out, "rewards", out), np.float32)
    return rewards.reshape(len(records), num_samples).mean(-1)


@dataclasses.dataclass
class Selection:
    train_pool: list[PromptRecord]  # original prompts, then the selected new ones
    scores: np.ndarray  # f32[N_new] raw mean rewards of the new pool
    normalized: np.ndarray  # f64[N_new]
    selected: np.ndarray  # int[K] indices into the new pool

    def summary(self) -> dict:
        sel = np.zeros(len(self.scores), bool)
        sel[self.selected] = True
        return {"new_pool": int(len(self.scores)), "selected": int(sel.sum()),
                "train_pool": len(self.train_pool),
                "mean_score_new_pool": float(self.scores.mean()) if len(self.scores) else 0.0,
                "mean_score_selected": float(self.scores[sel].mean()) if sel.any() else 0.0}


def pre_ppo_select(original: Sequence[PromptRecord], new_pool: Sequence[PromptRecord], *, generate: Callable,
                   reward_fn: Callable, num_samples: int = 4, fraction: float = 0.1,
                   normalization: str = "zscore", seed: int = 0, output_dir: str | None = None) -> Selection:
    """Scores the new pool, keeps its lowest fraction per-domain-normalised, and (optionally) writes

      output_dir/selected.jsonl  the training pool: original records, then the selected new
                                 records with meta.pre_ppo = {score, normalized} (a prompt pool file)
      output_dir/scores.jsonl    every new-pool prompt: id, domain, score, normalized, selected
      output_dir/summary.json
    """
    scores = score_prompts(new_pool, generate, reward_fn, num_samples)
    normalized = normalize_per_domain(scores, [r.domain for r in new_pool], normalization)
    selected = select_lowest(normalized, fraction, seed)
    picked = [dataclasses.replace(new_pool[i], meta={**new_pool[i].meta, "pre_ppo": {
        "score": float(scores[i]), "normalized": float(normalized[i])}}) for i in selected]
    result = Selection(train_pool=list(original) + picked, scores=scores, normalized=normalized, selected=selected)
    if output_dir and distributed.is_primary():  # every process selects the same prompts; one writes
        chosen = set(selected.tolist())
        storage.write_atomic(storage.join(output_dir, "scores.jsonl"), "".join(
            json.dumps({"id": r.id, "domain": r.domain, "score": float(scores[i]),
                        "normalized": float(normalized[i]), "selected": i in chosen}) + "\n"
            for i, r in enumerate(new_pool)))
        storage.write_atomic(storage.join(output_dir, "summary.json"), json.dumps(
            {**result.summary(), "fraction": fraction, "num_samples": num_samples,
             "normalization": normalization}, indent=1))
        # written last: its presence marks a finished selection
        write_prompt_pool(storage.join(output_dir, "selected.jsonl"), result.train_pool)
    return result
