"""Run a tiny preset with several seeds and check each seed's figures against the preset's stated target.

    python bench/tiny_seeds.py --config configs/mm_dpo.py:tiny --seeds 0,1,2 --workdir runs/seeds
    python bench/tiny_seeds.py --config configs/ppo.py:tiny --name grpo --seeds 0,1,2 --workdir runs/seeds \\
        -- --config.ppo.advantage=grpo

"Seed S" sets every seed of the config to S (`seed` and every `*.seed` / `*_seed` key: model init,
batch order, the synthetic data's draw), so each seed is an independent replicate of the whole
pipeline, its own held-out split included. Each seed runs as its own `python -m mm_rlhf_jax.main`
process in <workdir>/<name>/seed_<S> (re-running resumes finished or interrupted seeds). Prints one
JSON object: per seed the figures the target reads, whether the target holds, and the wall time;
plus the machine (CPU model, cores) and the git commit.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mm_rlhf_jax.ablate.seeds import seed_flags  # noqa: E402 (the checkout's package, not an installed one)

# algorithm -> (figures reported, target(eval) -> bool, the target in words).
TARGETS = {
    "mm_dpo": (("preference_accuracy", "greedy_accuracy", "initial_greedy_accuracy"),
               lambda e: e["preference_accuracy"] >= 0.9 and e["greedy_accuracy"] > e["initial_greedy_accuracy"],
               "held-out implicit-reward accuracy >= 0.9 and greedy accuracy improves"),
    "reward_model": (("acc", "acc_plus", "acc_gt_critique", "acc_plus_gt_critique"),
                     lambda e: e["acc"] >= 0.9, "held-out ACC >= 0.9 with generated critiques"),
    "ppo": (("verifier_accuracy", "initial_verifier_accuracy"),
            lambda e: e["verifier_accuracy"] >= e["initial_verifier_accuracy"] + 0.1,
            "held-out verifier accuracy rises by >= 0.1"),
    "align_pro": (("reward_mean_with_prompter", "reward_mean_without_prompter", "initial_reward_mean_with_prompter",
                   "reward_variance_with_prompter", "reward_variance_without_prompter"),
                  lambda e: (e["reward_mean_with_prompter"] >= e["reward_mean_without_prompter"] + 0.2
                             and e["reward_mean_with_prompter"] >= e["initial_reward_mean_with_prompter"] + 0.2),
                  "reward with the prompter >= without + 0.2 and >= the warm-started prompter's + 0.2"),
    "longpo": (("long_context_accuracy", "initial_long_context_accuracy", "short_context_accuracy",
                "initial_short_context_accuracy", "preference_accuracy", "start_preference_accuracy"),
               lambda e: (e["long_context_accuracy"] >= e["initial_long_context_accuracy"] + 0.2
                          and e["short_context_ok"] and e["preference_accuracy"] > e["start_preference_accuracy"]),
               "long-context accuracy +0.2, short-context drop within the margin, preference accuracy up"),
}


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "commit": commit, "python": platform.python_version()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="configs/<algo>.py:<preset>")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workdir", required=True)
    p.add_argument("--name", default="", help="folder name under workdir (default: the algorithm)")
    p.add_argument("extra", nargs="*", help="more --config.x=y flags (after --)")
    a = p.parse_args()
    out = {"config": a.config, "extra": a.extra, "machine": machine(), "seeds": {}}
    for seed in [int(s) for s in a.seeds.split(",")]:
        algo, flags = seed_flags(a.config, seed)
        fields, target, words = TARGETS[algo]
        workdir = os.path.join(a.workdir, a.name or algo, f"seed_{seed}")
        cmd = [sys.executable, "-m", "mm_rlhf_jax.main", f"--config={a.config}", f"--workdir={workdir}",
               *flags, *a.extra]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode:
            out["seeds"][seed] = {"error": proc.stderr[-2000:], "wall_s": round(wall, 1)}
            continue
        with open(os.path.join(workdir, "eval.json")) as f:
            e = json.load(f)
        out["seeds"][seed] = {**{k: e.get(k) for k in fields}, "target_met": bool(target(e)),
                              "wall_s": round(wall, 1)}
        out["target"] = words
        print(json.dumps({"seed": seed, **out["seeds"][seed]}), file=sys.stderr, flush=True)
    out["all_met"] = all(s.get("target_met", False) for s in out["seeds"].values())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
