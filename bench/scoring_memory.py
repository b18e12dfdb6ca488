"""Peak host memory of streamed pair-file scoring: 1,000 vs 10,000 synthetic pairs, tiny RM. Prints JSON.

    PYTHONPATH=. python bench/scoring_memory.py [--sizes 1000,10000] [--mode critique] [--batch 16]

Each size runs in its own subprocess (one CPU device): the tiny random-init
multimodal RM (mm_rlhf_jax.algorithms.reward_model.tiny: critique generation through the
Generator, then scoring), a pair file of that many synthetic MM-RLHF pairs
(images included; the bundled synthetic lines repeated with new ids), and
score_file over it. Reported per size: peak RSS (ru_maxrss of the child),
wall time and pairs/s; then the ratio of the largest size's peak RSS to the
smallest's. Streaming holds one batch of encoded rows and one part of output
lines, so the ratio stays near 1; the path it replaced encoded every record's
pixels before generating (O(pairs) memory).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def child(size: int, mode: str, batch: int, workdir: str) -> dict:
    import jax

    from mm_rlhf_jax.algorithms.reward_model.score import score_file
    from mm_rlhf_jax.sharding import make_mesh
    from mm_rlhf_jax.algorithms.reward_model.tiny import TinyRM, replicate_pairs

    mesh = make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    rm = TinyRM.build(workdir, mesh, batch_size=batch, max_critique_tokens=4, mode=mode)
    pairs = replicate_pairs(rm.train_pairs, os.path.join(os.path.dirname(rm.train_pairs), f"bench_{size}.jsonl"),
                            size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    result = score_file(rm.inference, rm.params, rm.score_block(pairs, os.path.join(workdir, "scored.jsonl"), 8),
                        critique=rm.critique, workdir=workdir)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"pairs": result.pairs, "batches": result.batches, "peak_rss_mb": round(peak / 1024, 1),
            "peak_rss_before_scoring_mb": round(before / 1024, 1), "seconds": round(seconds, 1),
            "pairs_per_s": round(result.pairs / seconds, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--mode", default="critique", choices=("critique", "scalar"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.mode, a.batch, a.workdir)))
        return
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    runs = []
    for size in (int(s) for s in a.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="scoring_memory_") as tmp:
            out = subprocess.run([sys.executable, __file__, "--child", str(size), "--workdir", tmp, "--mode", a.mode,
                                  "--batch", str(a.batch)], env=env, capture_output=True, text=True, check=False)
            if out.returncode:
                sys.exit(f"size {size} failed:\n{out.stderr[-4000:]}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({"bench": "scoring_memory", "mode": a.mode, "batch": a.batch, "runs": runs,
                      "peak_rss_ratio": round(runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"], 3)}, indent=1))


if __name__ == "__main__":
    main()
