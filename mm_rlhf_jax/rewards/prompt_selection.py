"""Pre-PPO prompt selection (ByteDance RLHF, papers.md §2(a)): keep the hardest new prompts.

    s(x)     = mean score of `num_samples` samples of the initial policy on x (the scorer's)
    s~(x)    = s(x) normalised within x's domain (NORMALIZERS)
    P_new    = the lowest `fraction` of each domain of the newly collected pool by s~ (SELECTIONS)
    P_train  = P_original ∪ P_new

"Prompts with lower RM scores are more challenging and less prone to reward
hacking" (paper §3, translated); the scores are "normalized within each
domain" (papers.md §2(a), [S]). What the paper leaves open (§2(g).3) is a
config knob here, with these defaults:
  * the scorer (`pre_ppo.scorer`): the hybrid router's reward (RTV where a
    verifier exists: 0/1 scores, so among prompts no sample solves the pick is
    a seeded draw), the learned RM (a continuous RM score on every prompt, the
    paper's wording), or the GenRM against its reference;
  * samples per prompt: 4 (a single sample makes verifier scores 0/1 coin flips);
  * normalisation: per-domain z-score ("zscore"); "rank" (per-domain percentile)
    and "none" are registered alternatives;
  * selection: "per_domain" keeps round(fraction * n_d) prompts of each domain d
    (at least one where fraction > 0), so every domain contributes its share
    whatever the ties or the skew of its scores; "global" keeps the lowest
    fraction of the whole new pool by normalised score (domains then contribute
    unevenly). Default fraction 0.1: Fig. 8 finds 10% better than 20% and 50%.
    Equal scores are ordered by a seeded shuffle, so ties do not favour the
    start of the file.
Per-domain statistics (counts, selected, score mean / std, thresholds, which
reward source scored the domain) go to `selection_stats.json`.
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


# name -> fn(normalized f64[N], domains str[N], fraction, seed) -> sorted selected indices int[K]
SELECTIONS: Registry[Callable[..., np.ndarray]] = Registry("Pre-PPO selection")
SELECTIONS.register("global")(lambda normalized, domains, fraction, seed: select_lowest(normalized, fraction, seed))


@SELECTIONS.register("per_domain")
def select_lowest_per_domain(normalized: Sequence[float], domains: Sequence[str], fraction: float,
                             seed: int = 0) -> np.ndarray:
    """select_lowest within each domain (its own quota round(fraction * n_d)); sorted indices into the pool."""
    normalized, domains = np.asarray(normalized, np.float64), np.asarray(domains)
    out = []
    for k, d in enumerate(sorted(set(domains.tolist()))):
        idx = np.flatnonzero(domains == d)
        out.append(idx[select_lowest(normalized[idx], fraction, seed + k)])  # per-domain tiebreak stream
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def domain_stats(scores: np.ndarray, normalized: np.ndarray, domains: Sequence[str], selected: np.ndarray,
                 routes: Sequence[str] | None = None) -> dict[str, dict]:
    """Per domain: count, selected, score mean / std (raw), the thresholds (the highest raw and normalised
    score kept; None when nothing was kept) and, with routes, samples per reward source."""
    domains = np.asarray(domains)
    keep = np.zeros(len(scores), bool)
    keep[np.asarray(selected, int)] = True
    out = {}
    for d in sorted(set(domains.tolist())):
        sel = domains == d
        kept = sel & keep
        row = {"count": int(sel.sum()), "selected": int(kept.sum()),
               "score_mean": float(scores[sel].mean()), "score_std": float(scores[sel].std()),
               "score_threshold": float(scores[kept].max()) if kept.any() else None,
               "normalized_threshold": float(normalized[kept].max()) if kept.any() else None,
               "score_mean_selected": float(scores[kept].mean()) if kept.any() else None}
        if routes is not None:
            per: dict[str, int] = {}
            for r in np.asarray(routes, object)[sel]:
                per[r] = per.get(r, 0) + 1
            row["sources"] = dict(sorted(per.items()))
        out[d] = row
    return out


def score_prompts(records: Sequence[PromptRecord], generate: Callable, reward_fn: Callable,
                  num_samples: int, *, with_routes: bool = False):
    """f32[N]: mean reward of num_samples policy samples per prompt (with_routes: also the source that
    scored each prompt, list[str] of N, "-" when reward_fn returns bare rewards).

    generate(records, num_samples) -> N lists of num_samples response texts;
    reward_fn(records, responses) -> rewards f32[M] (or a RewardBatch: .rewards, .routes).
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
    scores = rewards.reshape(len(records), num_samples).mean(-1)
    if not with_routes:
        return scores
    # A route depends on the record only, so a prompt's samples share it: the first one's stands for all.
    routes = getattr(out, "routes", None)
    return scores, ["-"] * len(records) if routes is None else list(routes[::num_samples])


@dataclasses.dataclass
class Selection:
    train_pool: list[PromptRecord]  # original prompts, then the selected new ones
    scores: np.ndarray  # f32[N_new] raw mean rewards of the new pool
    normalized: np.ndarray  # f64[N_new]
    selected: np.ndarray  # int[K] indices into the new pool
    domains: dict = dataclasses.field(default_factory=dict)  # domain_stats of the new pool

    def summary(self) -> dict:
        sel = np.zeros(len(self.scores), bool)
        sel[self.selected] = True
        return {"new_pool": int(len(self.scores)), "selected": int(sel.sum()),
                "train_pool": len(self.train_pool),
                "mean_score_new_pool": float(self.scores.mean()) if len(self.scores) else 0.0,
                "mean_score_selected": float(self.scores[sel].mean()) if sel.any() else 0.0}


def pre_ppo_select(original: Sequence[PromptRecord], new_pool: Sequence[PromptRecord], *, generate: Callable,
                   reward_fn: Callable, num_samples: int = 4, fraction: float = 0.1,
                   normalization: str = "zscore", selection: str = "per_domain", seed: int = 0,
                   output_dir: str | None = None, scorer: str = "") -> Selection:
    """Scores the new pool, keeps its lowest fraction per domain (SELECTIONS), and (optionally) writes

      output_dir/selected.jsonl         the training pool: original records, then the selected new
                                        records with meta.pre_ppo = {score, normalized} (a prompt pool file)
      output_dir/scores.jsonl           every new-pool prompt: id, domain, source, score, normalized, selected
      output_dir/selection_stats.json   per domain: count, selected, score mean / std, thresholds, sources
      output_dir/summary.json

    `scorer` only labels the files (the name of what reward_fn is).
    """
    select = SELECTIONS.get(selection)
    domains = [r.domain for r in new_pool]
    scores, routes = score_prompts(new_pool, generate, reward_fn, num_samples, with_routes=True)
    normalized = normalize_per_domain(scores, domains, normalization)
    selected = select(normalized, domains, fraction, seed)
    picked = [dataclasses.replace(new_pool[i], meta={**new_pool[i].meta, "pre_ppo": {
        "score": float(scores[i]), "normalized": float(normalized[i])}}) for i in selected]
    result = Selection(train_pool=list(original) + picked, scores=scores, normalized=normalized, selected=selected,
                       domains=domain_stats(scores, normalized, domains, selected, routes))
    if output_dir and distributed.is_primary():  # every process selects the same prompts; one writes
        chosen = set(selected.tolist())
        storage.write_atomic(storage.join(output_dir, "scores.jsonl"), "".join(
            json.dumps({"id": r.id, "domain": r.domain, "source": routes[i], "score": float(scores[i]),
                        "normalized": float(normalized[i]), "selected": i in chosen}) + "\n"
            for i, r in enumerate(new_pool)))
        settings = {"scorer": scorer, "fraction": fraction, "num_samples": num_samples,
                    "normalization": normalization, "selection": selection}
        storage.write_atomic(storage.join(output_dir, "selection_stats.json"), json.dumps(
            {**settings, "domains": result.domains}, indent=1))
        storage.write_atomic(storage.join(output_dir, "summary.json"), json.dumps(
            {**result.summary(), **settings}, indent=1))
        # written last: its presence marks a finished selection
        write_prompt_pool(storage.join(output_dir, "selected.jsonl"), result.train_pool)
    return result
