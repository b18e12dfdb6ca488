"""Pre-PPO selection on a synthetic pool with known difficulty (a scripted policy and verifier).

Pool: 40 math prompts and 40 code prompts. Prompt i of a domain is answered
correctly by exactly `count` of the policy's 80 samples: math count = 80 - i
(easy: 1.0 .. 0.51), code count = 39 - i (hard: 0.49 .. 0.0), so every score
is known in advance and each domain's scores are evenly spaced.
"""

import json
import os

import numpy as np
import pytest

from mm_rlhf_jax.data.prompts_pool import PromptRecord, load_prompt_pool
from mm_rlhf_jax.rewards.prompt_selection import (domain_stats, normalize_per_domain, pre_ppo_select,
                                                  score_prompts, select_lowest, select_lowest_per_domain)
from mm_rlhf_jax.rewards.router import RewardBatch

N_SAMPLES = 80


def pool():
    recs = [PromptRecord(id=f"m{i}", prompt=f"math {i}", domain="math", ground_truth="x", meta={"count": 80 - i})
            for i in range(40)]
    recs += [PromptRecord(id=f"c{i}", prompt=f"code {i}", domain="code", unit_tests="t", meta={"count": 39 - i})
             for i in range(40)]
    return recs


def generate(records, n):
    return [["right"] * r.meta["count"] + ["wrong"] * (n - r.meta["count"]) for r in records]


def reward_fn(records, responses):
    return np.array([float(y == "right") for y in responses], np.float32)


def test_normalizers_hand_computed():
    z = normalize_per_domain([1.0, 2.0, 3.0, 10.0, 10.0], ["a", "a", "a", "b", "b"], "zscore")
    np.testing.assert_allclose(z, [-np.sqrt(1.5), 0.0, np.sqrt(1.5), 0.0, 0.0])  # constant domain -> 0
    r = normalize_per_domain([3.0, 1.0, 3.0, 2.0, 5.0], ["a", "a", "a", "a", "b"], "rank")
    np.testing.assert_allclose(r, [2.5 / 3, 0.0, 2.5 / 3, 1.0 / 3, 0.5])  # ties share their mean rank
    np.testing.assert_allclose(normalize_per_domain([3.0, 1.0], ["a", "b"], "none"), [3.0, 1.0])
    with pytest.raises(KeyError, match="unknown score normaliser"):
        normalize_per_domain([1.0], ["a"], "minmax")


def test_select_lowest_counts_and_ties():
    assert select_lowest([0.3, 0.1, 0.2], 0.0).tolist() == []
    assert select_lowest([0.3, 0.1, 0.2], 0.1).tolist() == [1]  # at least one when fraction > 0
    assert select_lowest([0.3, 0.1, 0.2, 0.0], 0.5).tolist() == [1, 3]
    ties = np.zeros(100)
    a, b = select_lowest(ties, 0.1, seed=1), select_lowest(ties, 0.1, seed=2)
    assert len(a) == 10 and not np.array_equal(a, b)  # ties follow a seeded shuffle, not file order
    assert np.array_equal(a, select_lowest(ties, 0.1, seed=1))
    with pytest.raises(ValueError, match="fraction"):
        select_lowest([1.0], 1.5)


def test_scores_are_the_known_success_rates():
    recs = pool()
    s = score_prompts(recs, generate, reward_fn, N_SAMPLES)
    np.testing.assert_allclose(s, [r.meta["count"] / N_SAMPLES for r in recs], rtol=1e-6)
    with pytest.raises(ValueError, match="expected 3 each"):
        score_prompts(recs[:2], lambda r, n: [["x"]] * len(r), reward_fn, 3)


@pytest.mark.parametrize("normalization", ["zscore", "rank"])
def test_per_domain_selection_keeps_the_hardest_of_each_domain(tmp_path, normalization):
    original = [PromptRecord(id="o1", prompt="original", domain="math", ground_truth="1")]
    sel = pre_ppo_select(original, pool(), generate=generate, reward_fn=reward_fn, num_samples=N_SAMPLES,
                         fraction=0.1, normalization=normalization, seed=0, output_dir=str(tmp_path))
    picked = sorted(sel.train_pool[i].id for i in range(1, len(sel.train_pool)))
    # Evenly spaced scores in both domains: the 4 hardest of each domain (not 8 of the harder domain).
    assert picked == sorted([f"m{i}" for i in range(36, 40)] + [f"c{i}" for i in range(36, 40)])
    assert sel.train_pool[0].id == "o1"
    # Written files: the training pool (a valid prompt pool with scores in meta), all scores, a summary.
    written = load_prompt_pool(os.path.join(tmp_path, "selected.jsonl"))
    assert [r.id for r in written] == [r.id for r in sel.train_pool]
    m39 = next(r for r in written if r.id == "m39")
    assert m39.meta["pre_ppo"]["score"] == pytest.approx(41 / 80)
    rows = [json.loads(line) for line in open(os.path.join(tmp_path, "scores.jsonl"))]
    assert len(rows) == 80 and sum(r["selected"] for r in rows) == 8
    assert {r["id"]: r["score"] for r in rows}["c0"] == pytest.approx(39 / 80)
    summary = json.load(open(os.path.join(tmp_path, "summary.json")))
    assert summary["selected"] == 8 and summary["train_pool"] == 9
    assert summary["mean_score_selected"] < summary["mean_score_new_pool"]


def test_global_selection_without_normalisation_the_harder_domain_takes_everything():
    sel = pre_ppo_select([], pool(), generate=generate, reward_fn=reward_fn, num_samples=N_SAMPLES,
                         fraction=0.1, normalization="none", selection="global")
    assert sorted(r.id for r in sel.train_pool) == sorted(f"c{i}" for i in range(32, 40))


# Hand-computed per-domain selection on tied, skewed 0/1-style scores (the case a global bottom fraction gets
# wrong): domain a = 10 prompts, 8 at 0.0 and 2 at 1.0; domain b = 10 prompts at 0.5 .. 0.95 (distinct).
SKEWED = [0.0] * 8 + [1.0] * 2 + [0.5 + 0.05 * i for i in range(10)]
SKEWED_DOMAINS = ["a"] * 10 + ["b"] * 10


def test_per_domain_quota_on_ties_and_skew_hand_computed():
    z = normalize_per_domain(SKEWED, SKEWED_DOMAINS, "zscore")
    # a: mean 0.2, std 0.4 -> the zeros are -0.5, the ones 2.0; b: evenly spaced, lowest -1.5667
    np.testing.assert_allclose(z[:10], [-0.5] * 8 + [2.0] * 2)
    np.testing.assert_allclose(z[10], -4.5 / np.sqrt(8.25), rtol=1e-12)
    # 20% of each domain: 2 of a (a seeded pick among its 8 tied zeros) and b's two lowest (10, 11).
    sel = select_lowest_per_domain(z, SKEWED_DOMAINS, 0.2, seed=0)
    assert len(sel) == 4 and set(sel[2:].tolist()) == {10, 11} and all(i < 8 for i in sel[:2])
    # b's z-scores step by 0.05 / 0.1436 = 0.348 from -1.567: -1.567, -1.218, -0.870, -0.522, -0.174, ...
    # At fraction 0.5 the global cut (10 of 20) takes b's four below a's tied -0.5 and then 6 of a's 8 zeros;
    # per domain, 5 of each.
    g = select_lowest(z, 0.5, seed=0)
    assert sorted(i for i in g if i >= 10) == [10, 11, 12, 13] and sum(i < 10 for i in g) == 6
    pd = select_lowest_per_domain(z, SKEWED_DOMAINS, 0.5, seed=0)
    assert sum(i < 10 for i in pd) == 5 and sorted(i for i in pd if i >= 10) == [10, 11, 12, 13, 14]
    stats = domain_stats(np.asarray(SKEWED), z, SKEWED_DOMAINS, pd, ["verifier"] * 10 + ["learned_rm"] * 10)
    assert stats["a"] == {"count": 10, "selected": 5, "score_mean": pytest.approx(0.2),
                          "score_std": pytest.approx(0.4), "score_threshold": 0.0,
                          "normalized_threshold": pytest.approx(-0.5), "score_mean_selected": 0.0,
                          "sources": {"verifier": 10}}
    assert stats["b"]["selected"] == 5 and stats["b"]["score_threshold"] == pytest.approx(0.7)
    assert stats["b"]["score_mean"] == pytest.approx(0.725) and stats["b"]["sources"] == {"learned_rm": 10}


def test_selection_stats_file_and_routes(tmp_path):
    recs = [PromptRecord(id=f"p{i}", prompt=f"p {i}", domain=d, ground_truth="x")
            for i, d in enumerate(SKEWED_DOMAINS)]
    value = {r.prompt: s for r, s in zip(recs, SKEWED)}

    def scorer(records, responses):
        return RewardBatch(rewards=np.array([value[r.prompt] for r in records], np.float32),
                           routes=["verifier" if r.domain == "a" else "learned_rm" for r in records],
                           valid=np.ones(len(records), bool))

    sel = pre_ppo_select([], recs, generate=lambda r, n: [["y"] * n for _ in r], reward_fn=scorer, num_samples=2,
                         fraction=0.2, seed=0, output_dir=str(tmp_path), scorer="learned_rm")
    assert len(sel.selected) == 4
    stats = json.load(open(os.path.join(tmp_path, "selection_stats.json")))
    assert stats["scorer"] == "learned_rm" and stats["selection"] == "per_domain" and stats["fraction"] == 0.2
    assert {d: (s["count"], s["selected"], s["sources"]) for d, s in stats["domains"].items()} == {
        "a": (10, 2, {"verifier": 10}), "b": (10, 2, {"learned_rm": 10})}
    assert stats["domains"]["b"]["score_threshold"] == pytest.approx(0.55)
    rows = [json.loads(line) for line in open(os.path.join(tmp_path, "scores.jsonl"))]
    assert {r["source"] for r in rows} == {"verifier", "learned_rm"}
    with pytest.raises(KeyError, match="unknown Pre-PPO selection"):
        pre_ppo_select([], recs, generate=lambda r, n: [["y"] * n for _ in r], reward_fn=scorer, num_samples=1,
                       selection="quota")
