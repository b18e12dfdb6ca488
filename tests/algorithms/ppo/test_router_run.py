"""A micro hybrid PPO run with all four reward sources, end to end through main's ppo run.

math -> the math verifier, code -> the code sandbox, "open" prompts (no ground
truth) -> GenRM against a best-of-N reference of the initial policy (picked by
the learned RM, cached in the workdir), "general" prompts -> the learned RM
(reward.order leaves out genrm_ground_truth, so they fall through to it). Tiny
models and a few steps of everything: the run checks wiring and the reports,
not learning.
"""

import glob
import json
import os

from mm_rlhf_jax import config_lib
from mm_rlhf_jax.algorithms.ppo import run as ppo_run


def micro_config():
    c = config_lib.preset("ppo", "tiny_router")
    for k, v in dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2).items():
        c.model.tiny[k] = v
    c.data.synthetic_mix = (0.3, 0.2, 0.5)
    c.data.synthetic_sft, c.data.synthetic_train, c.data.synthetic_new, c.data.synthetic_heldout = 64, 32, 16, 16
    c.warm_start = config_lib.sft_block(steps=3, batch_size=16, max_length=48)
    c.genrm.warm_start = config_lib.sft_block(steps=3, batch_size=16, max_length=64, num_examples=64)
    c.genrm.batch_size = 16
    c.reward.learned_rm.warm_start = config_lib.sft_block(steps=3, batch_size=16, lr=1e-3, max_length=128,
                                                          num_examples=64)
    c.reward.learned_rm.batch_size = 8
    c.genrm.best_of_n.num_candidates = 2
    c.reward.order = "verifier,genrm_best_of_n"  # "general" falls through to the learned RM
    c.train = config_lib.train_block(steps=2, log_every=1, eval_every=0, checkpoint_every=0)
    c.ppo.prompts_per_step, c.ppo.samples_per_prompt, c.ppo.epochs, c.ppo.num_minibatches = 4, 2, 1, 1
    c.ppo.eval_batch_size = 16
    c.pre_ppo.num_samples = 2
    c.pre_ppo.fraction = 0.5
    c.curriculum.enabled = False  # two steps cannot hold the schedule's three points
    return c


# About 2 min 45 s on 2 shared CPU cores (three tiny supervised phases, the RM, GenRM and policy compiles).
def test_micro_run_uses_all_four_sources_and_reports_them(tmp_path):
    workdir = str(tmp_path / "run")
    out = ppo_run.run(micro_config(), workdir)
    routes = out["reward_routes"]
    train = {s for per in routes["train"].values() for s in per}
    # Every source scored something, and each domain had the source the router order gives it.
    assert {"verifier", "genrm_best_of_n", "learned_rm"} <= train
    assert set(routes["train"]["math"]) == {"verifier"} and set(routes["train"]["code"]) == {"verifier"}
    assert set(routes["train"]["general"]) == {"learned_rm"} and set(routes["train"]["open"]) == {"genrm_best_of_n"}
    # The per-step metrics count samples per (domain, source); samples.jsonl names each sample's source.
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    keys = {k for r in rows for k in r if k.startswith("reward/routes/")}
    assert keys and all(k.split("/")[2] in {"math", "code", "general", "open"} for k in keys)
    samples = [json.loads(l) for l in open(os.path.join(workdir, "samples.jsonl"))]
    assert samples and all({"domain", "source"} <= set(s) for s in samples)
    # Best-of-N references cached per prompt hash; Pre-PPO ranked by the learned RM, per domain.
    refs = glob.glob(os.path.join(workdir, "genrm_references", "*.json"))
    assert refs and all(len(json.load(open(f))["candidates"]) == 2 for f in refs)
    stats = json.load(open(os.path.join(workdir, "pre_ppo", "selection_stats.json")))
    assert stats["scorer"] == "learned_rm" and stats["selection"] == "per_domain"
    for d, s in stats["domains"].items():
        assert s["selected"] == max(1, round(0.5 * s["count"])) and s["sources"] == {"learned_rm": s["count"]}
    assert os.path.exists(os.path.join(workdir, "learned_rm", "config.json"))
