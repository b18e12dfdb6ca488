"""Align-Pro: the frozen-model environment and the with/without-prompter eval, on a scripted frozen model.

The scripted frozen model understands only the canonical phrasing: it answers
max / min of the numbers when the prompt says "largest" / "smallest", and the
first number otherwise. So every reward below is known by hand, and the real
math verifier (through the reward router) checks answers against the ORIGINAL
record's ground truth, never against the rewrite.
"""

import re

import numpy as np
import pytest

from mm_rlhf_jax.data.prompts_pool import records_from_dicts
from mm_rlhf_jax.rewards.router import RewardContext, RewardRouter
from mm_rlhf_jax.data.synthetic import reasoning as tasks
from mm_rlhf_jax import config_lib
from mm_rlhf_jax.algorithms.align_pro.env import AlignProEnv, reward_summary
from mm_rlhf_jax.algorithms.align_pro.run import make_eval_fn


class ScriptedFrozen:
    """rollout.generate.Generator stand-in: fits() by word count; records every call."""

    def __init__(self, max_words=20):
        self.max_words, self.calls = max_words, []

    def fits(self, text):
        return len(text.split()) <= self.max_words

    def texts(self, params, texts, *, seed=0):
        assert params == "frozen-params"
        self.calls.append(list(texts))
        out = []
        for t in texts:
            nums = [int(v) for v in re.findall(r"\b\d\b", t)]
            v = max(nums) if "largest" in t else min(nums) if "smallest" in t else nums[0]
            out.append(f"The answer is {v} .")
        return out


def records(n=12):
    split = tasks.make_splits(0, {"x": n}, tasks.TaskMix(1.0, 0.0, 0.0), math_tasks=("largest", "smallest"))["x"]
    return records_from_dicts(tasks.paraphrased(split))


def first_number_right(r):
    return float(r.meta["numbers"][0] == int(r.ground_truth))


def opposite(r):
    task = {"largest": "smallest", "smallest": "largest"}[r.meta["task"]]
    return tasks.math_record(task, tuple(r.meta["numbers"]), "x")["prompt"]


@pytest.fixture
def env():
    router = RewardRouter(RewardContext(num_workers=1), order=("verifier",))
    return AlignProEnv(ScriptedFrozen(), "frozen-params", router, template="Q : {prompt}", overflow_reward=-0.5)


def test_env_scores_the_frozen_answer_against_the_original_record(env):
    recs = records()[:4]
    long = "Among " + " , ".join(["1"] * 30) + " ?"
    rewrites = [recs[0].meta["canonical"], opposite(recs[1]), recs[2].prompt, long]
    out = env(recs, rewrites)
    # canonical rewrite: right; the opposite task's canonical prompt: the frozen answer is right for the
    # rewrite but wrong for the original prompt; a copy: the first number; too long: overflow_reward.
    np.testing.assert_allclose(out.rewards, [1.0, 0.0, first_number_right(recs[2]), -0.5])
    assert out.routes == ["verifier", "verifier", "verifier", "overflow"]
    assert env.overflow_fraction == pytest.approx(0.25)
    # The frozen model sees the rewrites in its template, and never the overflowing one.
    assert env.frozen.calls == [[f"Q : {t}" for t in rewrites[:3]]]
    assert out.details[3] == "<too long for the frozen model>" and out.details[0].startswith("The answer is")


def test_env_all_overflow_calls_no_model(env):
    recs = records()[:2]
    out = env(recs, ["a " * 40] * 2)
    np.testing.assert_allclose(out.rewards, [-0.5, -0.5])
    assert env.frozen.calls == [] and env.overflow_fraction == 1.0


def test_eval_reports_mean_and_variance_with_and_without_the_prompter(env):
    recs = records(12)
    seen = []

    class Prompter:  # rollout.generate.Generator stand-in over (record, prompter text) items
        def texts(self, params, items, *, seed=0, progress=None):  # Generator.texts signature
            seen.append([t for _, t in items])
            # params picks the policy: "good" rewrites canonically, "bad" flips the task on every other prompt.
            return [r.meta["canonical"] if params == "good" or i % 2 else opposite(r)
                    for i, (r, _) in enumerate(items)]

    eval_fn = make_eval_fn(10, "Rewrite : {prompt}", Prompter(), env, recs)
    base = np.array([first_number_right(r) for r in recs[:10]])
    good, bad = eval_fn("good"), eval_fn("bad")
    assert seen[0] == [f"Rewrite : {r.prompt}" for r in recs[:10]]
    for out in (good, bad):
        assert out["heldout_prompts"] == 10
        assert out["reward_mean_without_prompter"] == pytest.approx(base.mean())
        assert out["reward_variance_without_prompter"] == pytest.approx(base.var())
    assert good["reward_mean_with_prompter"] == 1.0 and good["reward_variance_with_prompter"] == 0.0
    bad_r = np.array([0.0, 1.0] * 5)
    assert bad["reward_mean_with_prompter"] == pytest.approx(bad_r.mean())
    assert bad["reward_variance_with_prompter"] == pytest.approx(bad_r.var())  # population variance: 0.25
    assert good["examples"][0]["rewrite"] == recs[0].meta["canonical"]


def test_reward_summary_by_hand():
    from mm_rlhf_jax.rewards.router import RewardBatch

    s = reward_summary(RewardBatch(rewards=np.array([1.0, 0.0, 0.5, 0.5], np.float32), routes=["v"] * 4,
                                   valid=np.ones(4, bool)))
    assert s == {"mean": pytest.approx(0.5), "variance": pytest.approx(0.125)}


@pytest.mark.slow  # the tiny preset end to end: frozen model + prompter warm starts, 60 PPO steps (6-13 min)
@pytest.mark.target
def test_tiny_align_pro_beats_the_no_prompter_baseline(tmp_path):
    import json

    from mm_rlhf_jax.main import get_algorithm

    result = get_algorithm("align_pro")(config_lib.preset("align_pro", "tiny"), str(tmp_path))
    assert result == json.load(open(tmp_path / "eval.json"))
    assert result["reward_mean_with_prompter"] >= result["reward_mean_without_prompter"] + 0.2
    assert result["reward_mean_with_prompter"] >= result["initial_reward_mean_with_prompter"] + 0.2
