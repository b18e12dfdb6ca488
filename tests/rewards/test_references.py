"""Best-of-N GenRM references: the RM's best candidate, cached per prompt hash (hit / miss / resume / key)."""

import json
import os

import numpy as np
import pytest

from mm_rlhf_jax.data.prompts_pool import PromptRecord
from mm_rlhf_jax.rewards.references import BestOfNReferences


def rec(i, **kw):
    return PromptRecord(id=f"r{i}", prompt=f"prompt {i}", domain=kw.pop("domain", "open"), **kw)


class Calls:
    def __init__(self):
        self.generated, self.picked = [], []

    def generate(self, records, n):
        self.generated.append([r.id for r in records])
        return [[f"{r.prompt} cand{k}" for k in range(n)] for r in records]

    def pick(self, prompts, responses):
        """Score = the candidate number, except cand2 is unreadable (invalid) and must not win."""
        self.picked.append(len(responses))
        s = np.array([float(y[-1]) for y in responses], np.float32)
        return s, np.array([not y.endswith("cand2") for y in responses], bool)


def refs(calls, cache_dir, **kw):
    return BestOfNReferences(calls.generate, calls.pick, num_candidates=3, cache_dir=cache_dir,
                             fingerprint={"generator": "policy", **kw})


def test_best_candidate_miss_then_hit_then_resume(tmp_path):
    calls = Calls()
    r = refs(calls, str(tmp_path))
    recs = [rec(1), rec(2), rec(1)]  # a repeated prompt is generated once
    assert r.lookup(recs) == ["prompt 1 cand1", "prompt 2 cand1", "prompt 1 cand1"]  # cand2 invalid, cand1 > cand0
    assert calls.generated == [["r1", "r2"]] and calls.picked == [6] and (r.hits, r.misses) == (0, 2)
    assert r.lookup([rec(2)]) == ["prompt 2 cand1"] and calls.generated == [["r1", "r2"]]  # memory hit
    files = sorted(os.listdir(tmp_path))
    assert files == sorted(f"{r.key(x)}.json" for x in (rec(1), rec(2)))
    entry = json.load(open(tmp_path / f"{r.key(rec(1))}.json"))
    assert entry["candidates"] == ["prompt 1 cand0", "prompt 1 cand1", "prompt 1 cand2"]
    assert entry["reference"] == "prompt 1 cand1" and entry["scores"][2] == -np.inf
    # A resumed run (a fresh instance on the same directory) reads the files: no generation.
    calls2 = Calls()
    again = refs(calls2, str(tmp_path))
    assert again.lookup([rec(1), rec(3)]) == ["prompt 1 cand1", "prompt 3 cand1"]
    assert calls2.generated == [["r3"]] and (again.hits, again.misses) == (1, 1)
    # A different generator setting is a different key: never a stale reference.
    other = refs(Calls(), str(tmp_path), seed=1)
    assert other.key(rec(1)) != again.key(rec(1))
    assert other.lookup([rec(1)]) == ["prompt 1 cand1"] and other.misses == 1


def test_covers_only_reference_less_prompts_of_its_domains():
    r = BestOfNReferences(Calls().generate, Calls().pick, num_candidates=2, cache_dir="", fingerprint={},
                          domains=("open",))
    assert r.covers(rec(1))
    assert not r.covers(rec(2, domain="chat"))
    assert not r.covers(rec(3, ground_truth="moo")) and not r.covers(rec(4, reference="woof"))
    with pytest.raises(ValueError, match="num_candidates >= 1"):
        BestOfNReferences(Calls().generate, Calls().pick, num_candidates=0, cache_dir="", fingerprint={})
    bad = BestOfNReferences(lambda recs, n: [["only one"] for _ in recs], Calls().pick, num_candidates=2,
                            cache_dir="", fingerprint={})
    with pytest.raises(ValueError, match="expected 2 each"):
        bad.lookup([rec(1)])
