"""CPU kernel benchmarks; prints one JSON object.

  python bench/kernels_cpu.py [--tokens 8192 --hidden 1024 --vocab 32000 --repeats 5]

1. token_logprobs forward+backward at N tokens, hidden H, vocab V (f32): XLA
   compiled temporary memory (memory_analysis().temp_size_in_bytes) and steady-state
   step time (median of --repeats calls after one warm-up call; compile excluded) of
   the chunked path (impl="auto", i.e. "xla" on CPU) against two naive logits paths:
   impl="reference" ([N, V] logits + log_softmax + gather) and "naive_lean" ([N, V]
   logits, logsumexp, gather: the fewest [N, V] buffers autodiff keeps).
2. attention forward+backward temporary memory at T = 1k, 4k, 16k for the blocked XLA
   path against the dense reference (compile only; nothing of size T^2 is allocated).
"""

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mm_rlhf_jax.kernels import attention, token_logprobs


def _compile(f, *args):
    return jax.jit(f).lower(*args).compile()


def _median_time(compiled, args, repeats):
    jax.block_until_ready(compiled(*args))  # warm-up (compile already done)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def bench_token_logprobs(n, h, v, repeats):
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.standard_normal((1, n, h), np.float32))
    w = jnp.asarray(rng.standard_normal((h, v), np.float32) / np.sqrt(h))
    labels = jnp.asarray(rng.integers(0, v, (1, n)), jnp.int32)
    out = {"tokens": n, "hidden": h, "vocab": v, "dtype": "float32",
           "logits_bytes_f32": n * v * 4}
    results = {}

    def lean(x, w_, y):  # naive logits, written to keep as few [N, V] buffers as autodiff allows
        logits = jnp.einsum("bth,hv->btv", x, w_)
        return jnp.take_along_axis(logits, y[..., None], -1)[..., 0] - jax.nn.logsumexp(logits, -1)

    for name, impl in (("chunked", "auto"), ("naive", "reference"), ("naive_lean", lean)):
        def loss(x, w_):
            if callable(impl):
                return jnp.sum(impl(x, w_, labels))
            return jnp.sum(token_logprobs(x, w_, labels, impl=impl))

        compiled = _compile(jax.value_and_grad(loss, argnums=(0, 1)), hidden, w)
        temp = compiled.memory_analysis().temp_size_in_bytes
        median, times = _median_time(compiled, (hidden, w), repeats)
        results[name] = {"temp_bytes": int(temp), "temp_mib": round(temp / 2**20, 1),
                         "step_s_median": round(median, 3), "step_s_all": [round(t, 3) for t in times]}
    # Same numbers from both paths (f32): a benchmark of a wrong kernel is worthless.
    dh = {impl: jax.grad(lambda x: jnp.sum(token_logprobs(x, w, labels[:, :256], impl=impl)))(hidden[:, :256])
          for impl in ("xla", "reference")}
    out.update(results)
    for naive in ("naive", "naive_lean"):
        out[f"temp_reduction_x_vs_{naive}"] = round(
            results[naive]["temp_bytes"] / results["chunked"]["temp_bytes"], 2)
        out[f"time_ratio_chunked_over_{naive}"] = round(
            results["chunked"]["step_s_median"] / results[naive]["step_s_median"], 3)
    out["max_abs_dh_diff_256_tokens"] = float(jnp.abs(dh["xla"] - dh["reference"]).max())
    return out


def bench_attention_memory(lengths, heads=8, kv_heads=2, head_dim=64):
    rows = []
    for t in lengths:
        q = jax.ShapeDtypeStruct((1, t, heads, head_dim), jnp.float32)
        kv = jax.ShapeDtypeStruct((1, t, kv_heads, head_dim), jnp.float32)
        row = {"T": t}
        for name, impl in (("blocked", "xla"), ("dense", "reference")):
            f = jax.grad(lambda q_, k_, v_: jnp.sum(attention(q_, k_, v_, impl=impl) ** 2), argnums=(0, 1, 2))
            temp = _compile(f, q, kv, kv).memory_analysis().temp_size_in_bytes
            row[f"{name}_temp_mib"] = round(temp / 2**20, 1)
        rows.append(row)
    for prev, row in zip(rows, rows[1:]):
        growth = row["T"] / prev["T"]
        row["blocked_growth_vs_prev"] = round(row["blocked_temp_mib"] / prev["blocked_temp_mib"], 2)
        row["dense_growth_vs_prev"] = round(row["dense_temp_mib"] / prev["dense_temp_mib"], 2)
        row["length_growth"] = growth
    return {"B": 1, "Hq": heads, "Hkv": kv_heads, "D": head_dim, "dtype": "float32", "causal": True,
            "rows": rows}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--attention-lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    args = parser.parse_args()
    report = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor(), "jax": jax.__version__,
                    "backend": jax.default_backend()},
        "token_logprobs_fwd_bwd": bench_token_logprobs(args.tokens, args.hidden, args.vocab, args.repeats),
        "attention_fwd_bwd_memory": bench_attention_memory(args.attention_lengths),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
