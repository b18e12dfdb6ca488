"""Will the paper presets fit? Ahead-of-time compiles of every paper preset for several TPU slices.

    python bench/aot_presets.py                                   # every preset on every slice below
    python bench/aot_presets.py --presets mm_dpo --slices v5p-8 --noestimate

Each (preset, slice) runs `python -m mm_rlhf_jax.aot` in its own process (libtpu
on this host, nothing runs on a TPU) with the preset's global batch and lengths
unchanged; only the microbatch count follows the slice, so that each microbatch
holds one row per batch shard of the mesh (the presets' comments name the slice
each was sized for). Prints one JSON object per line, and with --markdown the
bench/SCALE.md table.
"""

import argparse
import json
import os
import subprocess
import sys
import time

# Public slice names -> jax topology names (chips: v5p/v4 count 2 TensorCores per chip as one device).
SLICES = {"v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4", "v6e-8": "v6e:2x4",
          "v5e-32": "v5e:4x8", "v4-32": "v4:2x2x4"}
CHIPS = {"v5p-8": 4, "v5p-16": 8, "v5p-32": 16, "v6e-8": 8, "v5e-32": 32, "v4-32": 16}


def _mm_dpo(chips: int) -> dict:
    # mesh sequence=4, fsdp=rest: a microbatch is one pair per fsdp shard (2 x 32,768 tokens over 4 chips).
    # The reference / held-out pass is not microbatched: 4 pairs per fsdp shard keep it near 7 GiB per chip
    # (the preset's 64 pairs need 68 GiB of temporaries on v5p-8 and more per chip where fsdp is small).
    return {"train.microbatches": 384 // (chips // 4), "data.eval_batch_size": chips}


def _reward_model(chips: int) -> dict:
    return {"train.microbatches": 768 // chips}  # fsdp over every chip, one pair per chip per microbatch


def _longpo(chips: int) -> dict:
    # sequence=8, fsdp=rest: one sample per fsdp shard; a 4-chip slice has a 4-way sequence axis instead.
    seq = min(8, chips)
    return {"mesh.sequence": seq, "train.microbatches": 8 // max(1, chips // seq)}


def _ppo(chips: int) -> dict:
    # 512 rollouts / 4 PPO minibatches = 128 rows per update; one row per chip per microbatch.
    return {"train.microbatches": max(1, 128 // chips)}


# name -> (config, steps to compile, overrides for a slice of `chips` chips, the slice it was sized for)
PRESETS = {
    "mm_dpo": ("configs/mm_dpo.py:llava_ov_7b", ("train", "reference"), _mm_dpo, "v5p-8"),
    "reward_model": ("configs/reward_model.py:llava_ov_7b", ("train",), _reward_model, "v5p-8"),
    "longpo": ("configs/longpo.py:mistral_7b_128k", ("train", "reference"), _longpo, "v5p-32"),
    "ppo": ("configs/ppo.py:qwen2_7b", ("train", "rollout"), _ppo, "v5p-16"),
}


def run_one(name: str, slice_name: str, step: str, estimate: bool, timeout: int, extra: dict | None = None) -> dict:
    config, _, overrides, _ = PRESETS[name]
    flags = [f"--config.{k}={v}" for k, v in {**overrides(CHIPS[slice_name]), **(extra or {})}.items()]
    cmd = [sys.executable, "-m", "mm_rlhf_jax.aot", "--config", config, "--topology", SLICES[slice_name],
           "--step", step, *flags] + ([] if estimate else ["--noestimate"])
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"preset": name, "slice": slice_name, "step": step, "error": f"timeout after {timeout} s"}
    row = {"preset": name, "slice": slice_name, "step": step, "command": " ".join(["python"] + cmd[1:]),
           "wall_s": round(time.time() - t0)}
    if p.returncode:
        lines = [l for l in p.stderr.splitlines() if "Error" in l or "error" in l]
        return {**row, "error": (lines[-1] if lines else p.stderr[-300:])[:400]}
    return {**row, **json.loads(p.stdout)}


def markdown(rows) -> str:
    out = ["| preset | step | slice | args | temp | total / HBM (GiB per chip) | fits | est. step (s) | MFU | tokens/step |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['preset']} | {r['step']} | {r['slice']} | | | error: {r['error'][:120]} | | | | |")
            continue
        m = r["per_chip_gib"]
        if "total" not in m:
            temp, total = _needs(m)
            out.append(f"| {r['preset']} | {r['step']} | {r['slice']} | | {temp} | {total} > {r['hbm_per_chip_gib']} "
                       f"| no | | | |")
            continue
        mfu = r.get("mfu_at_estimated_time")
        out.append(f"| {r['preset']} | {r['step']} | {r['slice']} | {m['arguments']:.1f} | {m['temporaries']:.1f} | "
                   f"{m['total']:.1f} / {r['hbm_per_chip_gib']:.1f} | {'yes' if r['fits'] else 'no'} | "
                   f"{r['estimated_step_s']:.2f} | {mfu if mfu is not None else ''} | {r['tokens_per_step']:,} |")
    return "\n".join(out)


def _needs(m: dict) -> tuple[str, str]:
    """(temp, total) cells of a compile XLA refused, from what it said it needed (GiB per chip)."""
    if "temporaries_needed" in m:
        return f"needs {m['temporaries_needed']:.1f}", ""
    return "", f"needs {m['total_needed']:.2f}"  # only the last allocation missed


def slices_markdown(rows) -> str:
    """The memory-only table of bench/SCALE.md's "other slices" section, from run_one's JSON rows."""
    out = ["| preset (step) | slice | chips | overrides | args | temp | total / HBM (GiB per chip) | fits | compile |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["preset"], r["step"], list(SLICES).index(r["slice"]))):
        head = f"| `{PRESETS[r['preset']][0].split('/')[-1].replace('.py', '')}` ({r['step']}) | {r['slice']} |"
        if "per_chip_gib" not in r:  # the compile itself failed or timed out
            out.append(f"{head} {CHIPS[r['slice']]} | | | | error: {r['error'][:120]} | | |")
            continue
        flags = " ".join(f[len("--config."):] for f in r["command"].split() if f.startswith("--config."))
        m, hbm, wall = r["per_chip_gib"], r["hbm_per_chip_gib"], f"{r['compile_s']:,.0f} s"
        if "total" not in m:
            temp, total = _needs(m)
            out.append(f"{head} {r['chips']} | {flags} | | {temp} | {total} > {hbm:.1f} | no | {wall} |")
        else:
            out.append(f"{head} {r['chips']} | {flags} | {m['arguments']:.1f} | {m['temporaries']:.1f} | "
                       f"{m['total']:.1f} / {hbm:.1f} | {'yes' if r['fits'] else 'no'} | {wall} |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default=",".join(PRESETS))
    p.add_argument("--slices", default="", help="comma-separated slice names (default: each preset's own, then "
                                                 "v5p-32, v6e-8, v5e-32, v4-32)")
    p.add_argument("--steps", default="", help="comma-separated steps (default: each preset's)")
    p.add_argument("--noestimate", action="store_true", help="skip the 1-/2-layer cost probes")
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="another layout: a config override on top of the slice's (e.g. mesh.sequence=8)")
    p.add_argument("--render", metavar="JSONL", help="print the other-slices table of earlier runs' JSON lines "
                                                     "(this script's stdout) and exit")
    a = p.parse_args()
    if a.render:
        with open(a.render) as f:
            print(slices_markdown([json.loads(line) for line in f if line.startswith("{")]))
        return
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    extra = dict(kv.split("=", 1) for kv in a.set)
    rows = []
    for name in a.presets.split(","):
        own = PRESETS[name][3]
        slices = a.slices.split(",") if a.slices else [own] + [s for s in ("v5p-32", "v6e-8", "v5e-32", "v4-32")
                                                                   if s != own]
        for slice_name in slices:
            for step in (a.steps.split(",") if a.steps else PRESETS[name][1]):
                row = run_one(name, slice_name, step, not a.noestimate, a.timeout, extra)
                rows.append(row)
                print(json.dumps(row), flush=True)
    if a.markdown:
        print(markdown(rows))


if __name__ == "__main__":
    main()
