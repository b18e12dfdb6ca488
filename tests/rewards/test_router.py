"""Hybrid reward router: source order, per-domain verifiers, GenRM references (given and best-of-N), the
learned-RM fall-through, transforms, routing counts, errors."""

import numpy as np
import pytest

from mm_rlhf_jax.data.errors import Where
from mm_rlhf_jax.data.prompts_pool import PromptRecord
from mm_rlhf_jax.registry import Registry
from mm_rlhf_jax.rewards import router as router_mod
from mm_rlhf_jax.rewards.genrm import GenRMScores
from mm_rlhf_jax.rewards.router import RewardContext, RewardRouter, reward_metrics


class FakeGenRM:
    """Records its calls; scores 0.75 when the response contains the reference, else 0.25."""

    def __init__(self):
        self.calls = []

    def score(self, prompts, responses, references):
        self.calls.append((list(prompts), list(responses), list(references)))
        s = np.array([0.75 if r in y else 0.25 for y, r in zip(responses, references)], np.float32)
        return GenRMScores(scores=s, valid=np.ones(len(s), bool), outputs=[""] * len(s))


def rec(i, domain, **fields):
    return PromptRecord(id=f"r{i}", prompt=f"prompt {i}", domain=domain, where=Where("pool.jsonl", i), **fields)


RECORDS = [
    rec(1, "math", ground_truth="9"),
    rec(2, "code", unit_tests="assert f(2) == 4"),
    rec(3, "general", ground_truth="moo"),
    rec(4, "general", reference="The answer is woof ."),
    rec(5, "code", ground_truth="def f(x): return x"),  # code without tests: no verifier -> GenRM with ground truth
]
RESPONSES = ["The answer is 9 .", "def f ( x ): return x * 2", "The answer is moo .", "woof woof", "pass"]


def test_routes_rewards_and_genrm_arguments():
    genrm = FakeGenRM()
    router = RewardRouter(RewardContext(genrm=genrm, num_workers=2))
    out = router(RECORDS, RESPONSES)
    assert out.routes == ["verifier", "verifier", "genrm_ground_truth", "genrm_reference", "genrm_ground_truth"]
    # math: "9" == "9"; code: f(2) = 4 passes in the sandbox; GenRM: the fake's rule.
    np.testing.assert_allclose(out.rewards, [1.0, 1.0, 0.75, 0.25, 0.25])
    assert out.valid.all()
    # One GenRM call per route, each with the original prompts and its reference field.
    assert genrm.calls[0] == (["prompt 3", "prompt 5"], ["The answer is moo .", "pass"], ["moo", "def f(x): return x"])
    assert genrm.calls[1] == (["prompt 4"], ["woof woof"], ["The answer is woof ."])
    wrong = router(RECORDS[:2], ["The answer is 8 .", "def f ( x ): return x + 3"])
    np.testing.assert_allclose(wrong.rewards, [0.0, 0.0])


def test_order_and_transforms():
    genrm = FakeGenRM()
    ctx = RewardContext(genrm=genrm)
    # GenRM first: even the math record is judged by the GenRM; the reference route catches the rest.
    router = RewardRouter(ctx, order=("genrm_ground_truth", "verifier", "genrm_reference"),
                          transforms={"genrm_ground_truth": (2.0, -1.0), "genrm_reference": (0.1, 0.0)})
    out = router(RECORDS, RESPONSES)
    assert out.routes == ["genrm_ground_truth", "verifier", "genrm_ground_truth", "genrm_reference",
                          "genrm_ground_truth"]
    np.testing.assert_allclose(out.rewards, [2 * 0.75 - 1, 1.0, 2 * 0.75 - 1, 0.1 * 0.25, 2 * 0.25 - 1])
    assert router.check(RECORDS) == {"genrm_ground_truth": 3, "verifier": 1, "genrm_reference": 1}


def test_unroutable_record_and_bad_configs_are_errors():
    router = RewardRouter(RewardContext())  # no GenRM: only verifiable records route
    with pytest.raises(ValueError, match=r"record 'r3' \(pool.jsonl:3, domain 'general', prompt 'prompt 3'\)"):
        router(RECORDS[2:3], ["moo"])
    with pytest.raises(ValueError, match="record 'r5'"):
        router.check([RECORDS[0], RECORDS[4]])
    with pytest.raises(KeyError, match="unknown reward source 'genrm'"):
        RewardRouter(RewardContext(), order=("verifier", "genrm"))
    with pytest.raises(KeyError, match="unknown verifier 'algebra'"):
        RewardRouter(RewardContext(verifiers={"math": "algebra"}))
    with pytest.raises(ValueError, match="not in the order"):
        RewardRouter(RewardContext(), order=("verifier",), transforms={"genrm_reference": (1.0, 0.0)})
    with pytest.raises(ValueError, match="2 records but 1 responses"):
        router(RECORDS[:2], ["x"])


def test_verifier_calls_are_cached(monkeypatch):
    calls = []
    fake = Registry("verifier")
    fake.register("math")(lambda y, ref: calls.append((y, ref)) or float(y == ref))
    monkeypatch.setattr(router_mod, "VERIFIERS", fake)
    router = RewardRouter(RewardContext(verifiers={"math": "math"}, num_workers=1), order=("verifier",))
    recs = [rec(i, "math", ground_truth="3") for i in range(4)]
    out = router(recs, ["3", "4", "3", "3"])
    np.testing.assert_allclose(out.rewards, [1, 0, 1, 1])
    assert sorted(calls) == [("3", "3"), ("4", "3")]  # repeated (response, reference) pairs run once


def test_reward_metrics_by_domain_and_route():
    router = RewardRouter(RewardContext(genrm=FakeGenRM(), num_workers=1))
    batch = router(RECORDS, RESPONSES)
    m = reward_metrics(batch, RECORDS)
    assert m["reward/mean"] == pytest.approx(np.mean([1.0, 1.0, 0.75, 0.25, 0.25]))
    assert m["reward/domain/general"] == pytest.approx(0.5)
    assert m["reward/domain/code"] == pytest.approx(0.625)
    assert m["reward/route/verifier"] == pytest.approx(1.0)
    assert m["reward/route/genrm_reference"] == pytest.approx(0.25)
    assert m["reward/invalid_fraction"] == 0.0


class FakeLearnedRM:
    """Scores len(response) / 10; records its calls."""

    def __init__(self):
        self.calls = []

    def score(self, prompts, responses):
        self.calls.append((list(prompts), list(responses)))
        return np.array([len(y) / 10 for y in responses], np.float32), np.ones(len(responses), bool)


class FakeReferences:
    """Best-of-N references: covers reference-less records of `domains`; the reference is "ref:<prompt>"."""

    def __init__(self, domains=()):
        self.domains, self.looked_up = domains, []

    def covers(self, rec):
        return rec.ground_truth is None and rec.reference is None and (not self.domains or rec.domain in self.domains)

    def lookup(self, recs):
        self.looked_up.append([r.id for r in recs])
        return [f"ref:{r.prompt}" for r in recs]


OPEN = [rec(6, "open"), rec(7, "chat"), rec(8, "open")]  # no ground truth, no reference, no tests


def test_learned_rm_is_the_fall_through():
    rm, genrm = FakeLearnedRM(), FakeGenRM()
    # Not in the order: appended, so prompts nothing else applies to reach it.
    router = RewardRouter(RewardContext(genrm=genrm, learned_rm=rm, num_workers=1),
                          order=("verifier", "genrm_ground_truth"))
    assert router.order == ("verifier", "genrm_ground_truth", "learned_rm")
    recs = RECORDS[:3] + OPEN
    ys = ["The answer is 9 .", "def f ( x ): return x * 2", "moo", "abcd", "ab", "abcdefgh"]
    out = router(recs, ys)
    assert out.routes == ["verifier", "verifier", "genrm_ground_truth", "learned_rm", "learned_rm", "learned_rm"]
    np.testing.assert_allclose(out.rewards, [1.0, 1.0, 0.75, 0.4, 0.2, 0.8])
    assert rm.calls == [(["prompt 6", "prompt 7", "prompt 8"], ["abcd", "ab", "abcdefgh"])]  # one batched call
    # Listed first, it scores everything (an RM-only PPO).
    only = RewardRouter(RewardContext(learned_rm=rm), order=("learned_rm", "verifier"))
    assert set(only(recs, ys).routes) == {"learned_rm"}


def test_best_of_n_reference_route_and_domains():
    genrm, rm, refs = FakeGenRM(), FakeLearnedRM(), FakeReferences(domains=("open",))
    router = RewardRouter(RewardContext(genrm=genrm, learned_rm=rm, references=refs, num_workers=1))
    out = router(RECORDS[3:4] + OPEN, ["woof", "x ref:prompt 6", "hello", "nope"])
    # reference field first; open prompts: best-of-N; "chat" is not a covered domain -> learned RM.
    assert out.routes == ["genrm_reference", "genrm_best_of_n", "learned_rm", "genrm_best_of_n"]
    np.testing.assert_allclose(out.rewards, [0.25, 0.75, 0.5, 0.25])
    assert refs.looked_up == [["r6", "r8"]]
    assert genrm.calls[-1] == (["prompt 6", "prompt 8"], ["x ref:prompt 6", "nope"], ["ref:prompt 6", "ref:prompt 8"])
    assert router.check_by_domain(RECORDS[3:4] + OPEN) == {
        "chat": {"learned_rm": 1}, "general": {"genrm_reference": 1}, "open": {"genrm_best_of_n": 2}}


def test_no_source_error_names_the_prompt_and_every_source_tried():
    router = RewardRouter(RewardContext(num_workers=1))  # nothing but verifiers
    with pytest.raises(ValueError) as e:
        router(OPEN[:1], ["x"])
    msg = str(e.value)
    assert "record 'r6' (pool.jsonl:6, domain 'open', prompt 'prompt 6')" in msg
    assert ("sources tried: verifier, genrm_ground_truth (no GenRM configured (genrm.enabled)), genrm_reference "
            "(no GenRM configured (genrm.enabled)), genrm_best_of_n (no GenRM configured (genrm.enabled))") in msg
    assert "reward.learned_rm" in msg
    # A GenRM without best-of-N references: that source says so.
    with pytest.raises(ValueError, match=r"genrm_best_of_n \(no best-of-N references configured"):
        RewardRouter(RewardContext(genrm=FakeGenRM())).check(OPEN[:1])
    # A restricted router (Pre-PPO's scorer) has no fall-through.
    full = RewardRouter(RewardContext(genrm=FakeGenRM(), learned_rm=FakeLearnedRM()))
    genrm_only = full.restricted(("genrm_ground_truth",))
    assert genrm_only.order == ("genrm_ground_truth",)
    with pytest.raises(ValueError, match="sources tried: genrm_ground_truth;"):
        genrm_only.check(OPEN[:1])


def test_route_counts_in_metrics():
    router = RewardRouter(RewardContext(genrm=FakeGenRM(), learned_rm=FakeLearnedRM(), num_workers=1))
    recs = RECORDS + OPEN
    m = reward_metrics(router(recs, RESPONSES + ["a", "b", "c"]), recs)
    routes = {k: v for k, v in m.items() if k.startswith("reward/routes/")}
    assert routes == {"reward/routes/math/verifier": 1.0, "reward/routes/code/verifier": 1.0,
                      "reward/routes/code/genrm_ground_truth": 1.0, "reward/routes/general/genrm_ground_truth": 1.0,
                      "reward/routes/general/genrm_reference": 1.0, "reward/routes/open/learned_rm": 2.0,
                      "reward/routes/chat/learned_rm": 1.0}
