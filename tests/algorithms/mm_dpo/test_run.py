"""MM-DPO run end to end on a micro synthetic set: outputs, SIGTERM + resume == uninterrupted, bad data.

The full tiny preset (the quickstart) is the slow test at the bottom; its figures are in bench/RESULTS.md.
"""

import json
import os
import signal

import numpy as np
import pytest

from mm_rlhf_jax import config_lib

from mm_rlhf_jax.data.errors import DataError
from mm_rlhf_jax.algorithms.mm_dpo import run as mm_dpo
from mm_rlhf_jax.train import loop



def micro_config(steps=6):
    c = config_lib.preset("mm_dpo", "tiny")
    c.data.synthetic_train, c.data.synthetic_heldout = 16, 4
    c.data.batch_size, c.data.eval_batch_size, c.data.num_workers = 8, 8, 0
    c.warm_start.steps = 2
    c.train.steps, c.train.eval_every, c.train.checkpoint_every, c.train.log_every = steps, 0, 2, 1
    c.eval.num_queries, c.eval.max_new_tokens = 4, 4
    c.eval.generation = False  # generation evals have their own tests; compiling them here costs minutes
    return c


def read_metrics(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("dpo_full"))
    return workdir, mm_dpo.run(micro_config(), workdir)


def test_run_writes_eval_reference_cache_and_checkpoints(uninterrupted):
    workdir, result = uninterrupted
    saved = json.load(open(os.path.join(workdir, "eval.json")))
    assert saved["preference_accuracy"] == result["preference_accuracy"]
    assert 0.0 <= result["preference_accuracy"] <= 1.0 and result["num_heldout_pairs"] > 0
    # The initial policy is the reference: every implicit reward is exactly 0 before training.
    assert result["initial_preference_accuracy"] == 0.0 and result["initial_reward_margin"] == 0.0
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "6"
    assert os.listdir(os.path.join(workdir, "warm_start", "checkpoints")) == ["2"]
    cache_dirs = os.listdir(os.path.join(workdir, "reference_cache"))
    assert len(cache_dirs) == 1 and os.path.exists(os.path.join(workdir, "reference_cache", cache_dirs[0],
                                                                "logps.npz"))
    losses = read_metrics(workdir)
    assert sorted(losses) == list(range(6)) and all(np.isfinite(v) for v in losses.values())
    # Which beta ran is part of the result (the synthetic pairs carry delta, so the paper's).
    assert saved["beta_mode"] == "paper" and saved["beta_path"].startswith("paper: beta * (1 + w * (1 - exp(")


def test_sigterm_then_rerun_equals_uninterrupted(uninterrupted, tmp_path, monkeypatch):
    full_dir, full = uninterrupted
    workdir = str(tmp_path / "dpo_killed")
    real_run_loop = loop.run_loop

    def run_loop_with_sigterm(**kwargs):
        put, calls = kwargs["put_batch"], [0]

        def put_and_kill(batch):
            calls[0] += 1
            if calls[0] == 4:  # during step 3: the handler checkpoints step 4's start and raises
                os.kill(os.getpid(), signal.SIGTERM)
            return put(batch)

        return real_run_loop(**{**kwargs, "put_batch": put_and_kill})

    monkeypatch.setattr(loop, "run_loop", run_loop_with_sigterm)
    with pytest.raises(loop.Preempted):
        mm_dpo.run(micro_config(), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    monkeypatch.setattr(loop, "run_loop", real_run_loop)
    resumed = mm_dpo.run(micro_config(), workdir)  # the same command again
    for key in ("preference_accuracy", "reward_margin"):
        np.testing.assert_allclose(resumed[key], full[key], rtol=1e-5, atol=1e-6, err_msg=key)
    killed, ref = read_metrics(workdir), read_metrics(full_dir)
    assert sorted(killed) == sorted(ref)
    np.testing.assert_allclose([killed[s] for s in sorted(ref)], [ref[s] for s in sorted(ref)], rtol=1e-5)


def test_malformed_record_names_file_line_field_and_keeps_checkpoints(uninterrupted, tmp_path):
    full_dir, _ = uninterrupted
    src = os.path.join(full_dir, "data", "train", "dpo_pairs.jsonl")
    lines = open(src).read().splitlines()
    bad = json.loads(lines[2])
    del bad["rejected"]
    lines[2] = json.dumps(bad)
    bad_file = tmp_path / "dpo_pairs.jsonl"
    bad_file.write_text("\n".join(lines) + "\n")
    c = micro_config(steps=8)
    c.data.synthetic = False
    c.data.train = str(bad_file)
    c.data.heldout = os.path.join(full_dir, "data", "heldout", "dpo_pairs.jsonl")
    c.data.heldout_queries = os.path.join(full_dir, "data", "heldout", "data.jsonl")
    c.data.media_root = os.path.join(full_dir, "data", "train")
    c.data.tokenizer = os.path.join(full_dir, "tokenizer")
    before = sorted(os.listdir(os.path.join(full_dir, "checkpoints")))
    with pytest.raises(DataError, match=r"dpo_pairs\.jsonl:3.*rejected"):
        mm_dpo.run(c, full_dir)  # an existing workdir: its checkpoints must survive the failure
    assert sorted(os.listdir(os.path.join(full_dir, "checkpoints"))) == before


@pytest.mark.parametrize("mode, field", [("paper", "delta"), ("ls_factor", "ls_factor")])
def test_beta_mode_without_its_field_stops_before_any_compute(uninterrupted, tmp_path, mode, field):
    """The released pairs carry no delta: beta_mode=paper must not quietly become constant-beta DPO."""
    full_dir, _ = uninterrupted
    src = os.path.join(full_dir, "data", "train", "dpo_pairs.jsonl")
    rows = [json.loads(line) for line in open(src)]
    for i, row in enumerate(rows):
        row.pop("delta", None)
        if i < 4:  # the first pairs have the field (of this mode), the fifth line is the first without
            row[field] = 0.5
    bad_file = tmp_path / "dpo_pairs.jsonl"
    bad_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = micro_config()
    c.dpo.beta_mode = mode
    c.data.synthetic, c.data.train = False, str(bad_file)
    c.data.heldout = os.path.join(full_dir, "data", "heldout", "dpo_pairs.jsonl")
    c.data.media_root = os.path.join(full_dir, "data", "train")
    c.data.tokenizer = os.path.join(full_dir, "tokenizer")
    how = "score the pairs with the critique reward model" if mode == "paper" else "write a per-pair ls_factor"
    with pytest.raises(DataError, match=rf"dpo_pairs\.jsonl:5: field '{field}': dpo.beta_mode='{mode}' needs "
                                        rf".*first pair without it; {how}.*or choose another beta mode"):
        mm_dpo.run(c, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "reference_cache")  # stopped before the reference pass


@pytest.mark.slow
@pytest.mark.target
def test_tiny_preset_quickstart(tmp_path):
    """The README's first quickstart line (figures in bench/RESULTS.md)."""
    result = mm_dpo.run(config_lib.preset("mm_dpo", "tiny"), str(tmp_path / "quickstart"))
    assert result["preference_accuracy"] >= 0.9
    assert result["greedy_accuracy"] > result["initial_greedy_accuracy"]
