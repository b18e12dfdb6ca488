"""Peak memory of a tiny-model LongPO train step at 4K, 8K, 16K and 32K tokens per sequence (CPU), as JSON.

    python bench/longpo_memory.py                       # 1 CPU device, the tiny preset's model
    python bench/longpo_memory.py --devices 8 --sequence 8 --impl context_parallel_zigzag   # sequence-sharded

Each length runs in a fresh child process (so ru_maxrss is that length's own peak):
one packed LongPO sample (document prompt + chosen branch + rejected branch, 2 x 64
response tokens) through `algorithms.longpo.step.train_step` (remat "full", blocked
attention, fused token log-probs over every position: the paper's whole-sequence
NLL), compiled ahead of time, then run for `--steps` steps. Reported per length: peak RSS of the
child, XLA's compiled temporary bytes for the step, the step time (mean over the
`--steps` steps, compile excluded); and the
growth ratios between successive lengths (linear memory -> ~2.0 per doubling of
the per-token part, i.e. of peak RSS minus the fixed runtime/compile baseline).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

LENGTHS = (4096, 8192, 16384, 32768)
RESPONSE = 64


def child(args) -> dict:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from mm_rlhf_jax import config_lib
    from mm_rlhf_jax.models import hf
    from mm_rlhf_jax.models.config import DecoderConfig
    from mm_rlhf_jax.sharding import make_mesh
    from mm_rlhf_jax.algorithms.longpo import step as longpo_step
    from mm_rlhf_jax.train import state as state_lib

    t = args.length
    cfg = DecoderConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                        num_kv_heads=2, architecture="qwen2", qkv_bias=True, dtype=jnp.float32,
                        param_dtype=jnp.float32, remat="full", attention_impl=args.impl)
    model = hf.build_model(cfg)
    mesh = make_mesh({"sequence": args.sequence, "fsdp": -1})
    rng = np.random.default_rng(0)
    p = t - 2 * RESPONSE
    ids = rng.integers(7, 512, (1, t)).astype(np.int32)
    branch = np.concatenate([np.zeros(p), np.ones(RESPONSE), 2 * np.ones(RESPONSE)]).astype(np.int32)[None]
    positions = np.concatenate([np.arange(p + RESPONSE), p + np.arange(RESPONSE)]).astype(np.int32)[None]
    chosen = (branch == 1).astype(np.float32)
    nll = np.zeros((1, t), np.float32)
    nll[0, 1:p + RESPONSE] = 1
    batch = {"input_ids": ids, "positions": positions, "segment_ids": np.ones((1, t), np.int32),
             "branch_ids": branch, "chosen_mask": chosen, "rejected_mask": (branch == 2).astype(np.float32),
             "nll_mask": nll, "prompt_last": np.asarray([p - 1], np.int32),
             "rejected_first": np.asarray([p + RESPONSE], np.int32), "ref_logps": np.asarray([[-300.0, -310.0]],
                                                                                            np.float32)}
    c = config_lib.longpo_block(beta=0.1, lam=0.01, nll_tokens="sequence", max_response_tokens=0)
    tx = optax.adam(1e-4)
    with jax.set_mesh(mesh):
        params = hf.init_params(model, jax.random.PRNGKey(0), mesh)
        mask = jax.tree.map(lambda _: True, params)
        state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                     rng=jax.random.PRNGKey(0))
        seq = NamedSharding(mesh, P(None, "sequence"))
        put = {k: jax.device_put(v, seq if v.ndim == 2 and v.shape[1] == t else NamedSharding(mesh, P()))
               for k, v in batch.items()}
        step = jax.jit(functools.partial(longpo_step.train_step, module=model, tx=tx, mask=mask, c=c),
                       donate_argnames=("state",))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        compiled = step.lower(state, put).compile()
        mem = compiled.memory_analysis()
        # Run the executable compiled above (calling `step` would compile a second time); at 32K
        # tokens a CPU step takes many minutes, so every step is timed, the first included.
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = compiled(state, put)
        loss = float(jax.device_get(metrics["train/loss"]))
        dt = (time.perf_counter() - t0) / args.steps
    return {"tokens_per_sequence": t, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "rss_before_compile_gib": rss_before / 2**30,
            "compiled_temp_mib": getattr(mem, "temp_size_in_bytes", 0) / 2**20,
            "compiled_args_mib": getattr(mem, "argument_size_in_bytes", 0) / 2**20,
            "step_s": dt, "loss": loss, "devices": args.devices, "sequence_axis": args.sequence, "impl": args.impl}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=0, help="(internal) run one length in this process")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--sequence", type=int, default=1)
    ap.add_argument("--impl", default="auto")
    ap.add_argument("--steps", type=int, default=1)
    args = ap.parse_args()
    if args.length:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    rows = []
    for t in map(int, args.lengths.split(",")):
        cmd = [sys.executable, __file__, "--length", str(t), "--devices", str(args.devices), "--sequence",
               str(args.sequence), "--impl", args.impl, "--steps", str(args.steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    base = rows[0]["rss_before_compile_gib"]
    growth = [{"from": a["tokens_per_sequence"], "to": b["tokens_per_sequence"],
               "temp_ratio": b["compiled_temp_mib"] / max(a["compiled_temp_mib"], 1e-9),
               "rss_above_baseline_ratio": (b["peak_rss_gib"] - base) / max(a["peak_rss_gib"] - base, 1e-9)}
              for a, b in zip(rows, rows[1:])]
    print(json.dumps({"bench": "longpo_memory", "rows": rows, "growth_per_doubling": growth}, indent=1))


if __name__ == "__main__":
    main()
