"""MM-DPO run with data.packing on a micro synthetic set: packed training, reference precompute and evals."""

import json
import os

import numpy as np

from mm_rlhf_jax.algorithms.mm_dpo import run as mm_dpo
from mm_rlhf_jax.data.sources import JsonlPairSource

from tests.algorithms.mm_dpo.test_run import micro_config, read_metrics


def test_packed_run_trains_caches_every_pair_and_evaluates(tmp_path):
    c = micro_config(steps=3)
    c.warm_start.steps = 0
    c.data.packing, c.data.pack_rows, c.data.pairs_per_row = True, 8, 2
    workdir = str(tmp_path / "packed")
    result = mm_dpo.run(c, workdir)
    train = JsonlPairSource(os.path.join(workdir, "data", "train", "dpo_pairs.jsonl"), include_ties=False)
    heldout = JsonlPairSource(os.path.join(workdir, "data", "heldout", "dpo_pairs.jsonl"), include_ties=False)
    # One cached reference entry per distinct pair (keys are per pair, wherever it is packed).
    (ref_dir,) = os.listdir(os.path.join(workdir, "reference_cache"))
    with np.load(os.path.join(workdir, "reference_cache", ref_dir, "logps.npz")) as z:
        assert 0 < len(z["keys"]) <= len(train) + len(heldout)
        assert np.isfinite(z["logps"]).all() and (z["logps"] < 0).all()
    # The initial policy is the reference, and the eval's packed batches are the precompute's: every implicit
    # reward is exactly 0 before training.
    assert result["initial_preference_accuracy"] == 0.0 and result["initial_reward_margin"] == 0.0
    assert result["num_heldout_pairs"] == len(heldout)
    assert 0.0 <= result["preference_accuracy"] <= 1.0
    losses = read_metrics(workdir)
    assert sorted(losses) == [0, 1, 2] and all(np.isfinite(v) for v in losses.values())
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert any(r.get("dpo/beta", 0) > 0 for r in rows)
