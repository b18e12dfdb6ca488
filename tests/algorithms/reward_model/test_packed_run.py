"""Critique-RM run with data.packing on a micro synthetic set: packed critic pairs train; evals as usual."""

import json
import os

import numpy as np

from mm_rlhf_jax.algorithms.reward_model import run as reward_model

from tests.algorithms.reward_model.test_run import micro_config


def test_packed_critique_run_trains_and_evaluates(tmp_path, devices8):
    workdir = str(tmp_path / "packed")
    c = micro_config("critique", workdir)
    c.score.input = ""
    c.data.packing, c.data.pack_rows, c.data.pairs_per_row = True, 8, 2
    result = reward_model.run(c, workdir)
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == [0, 1]
    for r in train:
        assert np.isfinite(r["train/loss"]) and r["rm/critique_nll"] > 0 and 0 <= r["rm/accuracy"] <= 1
    assert 0.0 <= result["acc"] <= 1.0 and 0.0 <= result["acc_gt_critique"] <= 1.0
