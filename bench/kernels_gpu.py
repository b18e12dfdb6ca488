"""GPU kernel benchmarks (run on a CUDA machine); prints one JSON object.

  python bench/kernels_gpu.py [--repeats 20]

1. Attention (bf16, causal, GQA 4:1, D=128): TFLOP/s of our Pallas-Triton kernel
   (impl="pallas_gpu"), of impl="auto" (cuDNN for this call) and of
   jax.nn.dot_product_attention with implementation="cudnn" and "xla", forward and
   forward+backward. FLOPs: forward 4*B*Hq*T^2*D/2 (causal
   half), forward+backward 3.5x forward (backward = 2.5x, the FlashAttention count).
2. token_logprobs (bf16 in, f32 accumulation): TFLOP/s of impl="pallas_gpu" against
   impl="auto" (the chunked XLA path, 1024-token chunks) and the naive [N, V] logits
   path; "faster_fwd_bwd" says whether the default should change. FLOPs: forward 2*N*H*V,
   forward+backward 8*N*H*V (the Liger accounting).
Timing: wall clock around block_until_ready, median of --repeats calls after two
warm-up calls, random (not zero) inputs. Every kernel is first checked against the
reference on a small shape.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mm_rlhf_jax.kernels import attention, token_logprobs


def _time(f, args, repeats):
    for _ in range(2):
        jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rand(rng, shape, dtype, scale=1.0):
    return jnp.asarray(rng.standard_normal(shape, np.float32) * scale, dtype)


def _attention_fns(name):
    if name == "ours":  # the Triton kernel, what `auto` uses for packed / branched / soft-capped calls
        return lambda q, k, v: attention(q, k, v, causal=True, impl="pallas_gpu")
    if name == "auto":  # kernels' GPU default for this (unpacked causal bf16) call: cuDNN
        return lambda q, k, v: attention(q, k, v, causal=True)
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=name)


def check_attention(rng):
    q, k, v = (_rand(rng, (2, 512, h, 128), jnp.bfloat16) for h in (8, 2, 2))
    ref = attention(q, k, v, impl="reference").astype(jnp.float32)
    return {name: float(jnp.abs(_attention_fns(name)(q, k, v).astype(jnp.float32) - ref).max())
            for name in ("ours", "auto", "cudnn", "xla")}


def bench_attention(rng, batch, lengths, heads, kv_heads, head_dim, repeats):
    rows = []
    for t in lengths:
        q = _rand(rng, (batch, t, heads, head_dim), jnp.bfloat16)
        k, v = (_rand(rng, (batch, t, kv_heads, head_dim), jnp.bfloat16) for _ in range(2))
        fwd_flops = 4 * batch * heads * t * t * head_dim / 2
        row = {"T": t}
        for name in ("ours", "auto", "cudnn", "xla"):
            f = _attention_fns(name)
            fwd = jax.jit(f)
            bwd = jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2)))
            try:
                t_fwd = _time(fwd, (q, k, v), repeats)
                t_all = _time(bwd, (q, k, v), repeats)
                row[name] = {"fwd_ms": round(t_fwd * 1e3, 3), "fwd_tflops": round(fwd_flops / t_fwd / 1e12, 1),
                             "fwd_bwd_ms": round(t_all * 1e3, 3),
                             "fwd_bwd_tflops": round(3.5 * fwd_flops / t_all / 1e12, 1)}
            except Exception as e:  # e.g. cuDNN rejecting a shape: report, keep going
                row[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        rows.append(row)
    return {"B": batch, "Hq": heads, "Hkv": kv_heads, "D": head_dim, "dtype": "bfloat16", "causal": True,
            "rows": rows}


def check_token_logprobs(rng):
    h, w = _rand(rng, (2, 300, 512), jnp.bfloat16), _rand(rng, (512, 5000), jnp.bfloat16, 512**-0.5)
    labels = jnp.asarray(rng.integers(0, 5000, (2, 300)), jnp.int32)
    ref = token_logprobs(h.astype(jnp.float32), w.astype(jnp.float32), labels, impl="reference")
    return float(jnp.abs(token_logprobs(h, w, labels, impl="pallas_gpu") - ref).max())


def bench_token_logprobs(rng, n, hidden, vocab, repeats):
    h = _rand(rng, (1, n, hidden), jnp.bfloat16)
    w = _rand(rng, (hidden, vocab), jnp.bfloat16, hidden**-0.5)
    labels = jnp.asarray(rng.integers(0, vocab, (1, n)), jnp.int32)
    out = {"tokens": n, "hidden": hidden, "vocab": vocab, "dtype": "bfloat16"}
    # "auto" is the GPU default (chunked XLA, 1024-token chunks); switch it to the Triton
    # kernel only if "ours" measures faster here.
    for name, impl in (("ours", "pallas_gpu"), ("auto", "auto"), ("naive", "reference")):
        fwd = jax.jit(lambda h_, w_: token_logprobs(h_, w_, labels, impl=impl))
        bwd = jax.jit(jax.grad(lambda h_, w_: jnp.sum(token_logprobs(h_, w_, labels, impl=impl)), argnums=(0, 1)))
        try:
            t_fwd, t_all = _time(fwd, (h, w), repeats), _time(bwd, (h, w), repeats)
            temp = bwd.lower(h, w).compile().memory_analysis().temp_size_in_bytes
            flops = 2 * n * hidden * vocab
            out[name] = {"fwd_ms": round(t_fwd * 1e3, 3), "fwd_tflops": round(flops / t_fwd / 1e12, 1),
                         "fwd_bwd_ms": round(t_all * 1e3, 3),
                         "fwd_bwd_tflops": round(4 * flops / t_all / 1e12, 1),
                         "fwd_bwd_temp_mib": round(temp / 2**20, 1)}
        except Exception as e:  # e.g. the naive path out of memory
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    if "fwd_bwd_ms" in out["ours"] and "fwd_bwd_ms" in out["auto"]:
        out["faster_fwd_bwd"] = "ours" if out["ours"]["fwd_bwd_ms"] < out["auto"]["fwd_bwd_ms"] else "auto"
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--attention-lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=131072)
    args = parser.parse_args()
    if jax.default_backend() != "gpu":
        raise SystemExit(f"kernels_gpu.py needs a GPU; jax backend is {jax.default_backend()!r}")
    rng = np.random.default_rng(0)
    report = {
        "machine": {"device": jax.devices()[0].device_kind, "jax": jax.__version__},
        "correctness_max_abs_err": {"attention_bf16": check_attention(rng),
                                    "token_logprobs_bf16": check_token_logprobs(rng)},
        "attention": bench_attention(rng, 4, args.attention_lengths, 32, 8, 128, args.repeats),
        "token_logprobs": bench_token_logprobs(rng, args.tokens, args.hidden, args.vocab, args.repeats),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
