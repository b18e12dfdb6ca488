"""Math/code-first curriculum: the schedule, the realised batch shares, epochs, and exact resume."""

import collections

import numpy as np
import pytest

from mm_rlhf_jax.data.prompts_pool import PromptRecord
from mm_rlhf_jax.data.curriculum import Curriculum, CurriculumSampler


def pool(n_math=60, n_code=40, n_general=300):
    out = [PromptRecord(id=f"m{i}", prompt="p", domain="math") for i in range(n_math)]
    out += [PromptRecord(id=f"c{i}", prompt="p", domain="code") for i in range(n_code)]
    out += [PromptRecord(id=f"g{i}", prompt="p", domain="general") for i in range(n_general)]
    return out


def test_schedule_interpolates_and_natural_share():
    cur = Curriculum((0, 10, 20), (0.8, 0.8, -1.0))
    assert cur.share(0, 0.25) == pytest.approx(0.8)
    assert cur.share(10, 0.25) == pytest.approx(0.8)
    assert cur.share(15, 0.25) == pytest.approx((0.8 + 0.25) / 2)
    assert cur.share(20, 0.25) == pytest.approx(0.25)
    assert cur.share(500, 0.25) == pytest.approx(0.25)
    for steps, shares in (((0, 5), (0.5,)), ((0, 5, 5), (1, 1, 1)), ((0,), (1.5,))):
        with pytest.raises(ValueError, match="curriculum"):
            Curriculum(steps, shares)


def test_realised_shares_follow_the_schedule():
    cur = Curriculum((0, 10, 20), (0.8, 0.8, -1.0))
    s = CurriculumSampler(pool(), 16, cur, seed=0)
    assert s.natural == pytest.approx(100 / 400)
    batches = [next(s)["records"] for _ in range(40)]
    emph = np.array([sum(r.domain in ("math", "code") for r in b) for b in batches])
    targets = np.array([cur.share(k, 0.25) * 16 for k in range(40)])
    # Largest-remainder rounding: every batch within one prompt of its target, cumulative error < 1.
    assert np.all(np.abs(emph - targets) <= 1.0)
    assert np.all(np.abs(np.cumsum(emph) - np.cumsum(targets)) <= 0.5 + 1e-9)
    assert emph[:10].mean() == pytest.approx(0.8 * 16, abs=0.2)
    assert emph[20:].mean() == pytest.approx(0.25 * 16, abs=0.2)
    assert all(len(b) == 16 for b in batches)


def test_each_prompt_once_per_epoch_and_exact_resume():
    cur = Curriculum((0,), (0.5,))
    recs = pool(n_math=24, n_code=8, n_general=32)
    a = CurriculumSampler(recs, 8, cur, seed=3)
    seen = [next(a)["records"] for _ in range(12)]
    emph = [r.id for b in seen for r in b if r.domain != "general"]
    # 12 batches x 4 emphasised prompts = 48 = one and a half epochs of the 32 emphasised prompts.
    assert sorted(emph[:32]) == sorted(r.id for r in recs if r.domain != "general")
    assert max(collections.Counter(emph).values()) == 2
    b = CurriculumSampler(recs, 8, cur, seed=3, encode=lambda rs: {"n": len(rs)})
    b.set_state({"step": 9})
    nxt = next(b)
    assert [r.id for r in nxt["records"]] == [r.id for r in seen[9]] and nxt["n"] == 8
    assert b.get_state() == {"step": 10}


def test_single_group_pools():
    only_math = CurriculumSampler(pool(n_general=0), 8, Curriculum((0,), (0.1,)), seed=0)
    assert all(r.domain != "general" for _ in range(5) for r in next(only_math)["records"])
    only_general = CurriculumSampler(pool(0, 0, 20), 8, Curriculum((0,), (0.9,)), seed=0)
    assert all(r.domain == "general" for _ in range(5) for r in next(only_general)["records"])
    with pytest.raises(ValueError, match="empty"):
        CurriculumSampler([], 8, Curriculum(), seed=0)
