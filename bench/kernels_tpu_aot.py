"""Ahead-of-time TPU compiles of both Pallas kernels at Qwen2-7B shapes; prints one JSON object.

  python bench/kernels_tpu_aot.py [--generations v4 v5e v5p v6e] [--w-dtype bfloat16]
                                  [--sharded v5p:4x4x4:64:1 ...] [--tokens-per-chip 8192]
                                  [--vmem-headroom]

Needs libtpu (`pip install "jax[tpu]"`); runs on a CPU host: every function is
compiled through XLA:TPU and Mosaic for ONE chip of the generation's smallest
topology (jax.experimental.topologies), with impl="pallas_tpu", interpret=False.
Per generation and kernel, forward and forward+backward (value_and_grad, gradients
returned as outputs): compiled temporary memory (memory_analysis), XLA's cost model
(flops, bytes accessed, optimal_seconds; a pallas_call counts only through its
pl.CostEstimate), compile time, or the compile error. Shapes: attention q [1, 8192, 28, 128], k/v [1, 8192, 4, 128] bf16, causal,
packed segment ids; token_logprobs hidden [1, 8192, 3584] bf16, LM head
[3584, 152064] (--w-dtype), entropy off.

--sharded: the LM head of a sharded step (hidden over data x fsdp, the f32 master
head over fsdp x tensor) compiled for a whole topology, Pallas kernels against the
chunked XLA path, per-chip temporaries.

Self-contained (only `kernels.attention` / `kernels.token_logprobs` with explicit
impl and interpret), so it also measures older trees: PYTHONPATH=<old tree>.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other processes on this host may compile too

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from mm_rlhf_jax import kernels  # noqa: E402

TOPOLOGIES = {"v4": "v4:2x2x1", "v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
S = jax.ShapeDtypeStruct


def _compile(device, fn, shapes):
    mesh = jax.sharding.Mesh([device], ("chip",))
    args = [S(s.shape, s.dtype, sharding=NamedSharding(mesh, P())) for s in shapes]
    target = getattr(kernels, "target_platform", None)  # trees without it pick tiles by host backend
    t0 = time.perf_counter()
    if target is not None:
        with target(devices=[device]):
            compiled = jax.jit(fn).lower(*args).compile()
    else:
        compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def _measure(device, fn, shapes):
    try:
        compiled, seconds = _compile(device, fn, shapes)
    except Exception as e:  # a kernel that does not fit (VMEM) fails here
        lines = [line for line in str(e).splitlines() if line.strip()]
        return {"compiles": False, "error": next((l for l in lines if "vmem" in l.lower()), lines[0])[:400]}
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"compiles": True, "compile_s": round(seconds, 1),
            "temp_mib": round(mem.temp_size_in_bytes / 2**20, 1),
            "argument_mib": round(mem.argument_size_in_bytes / 2**20, 1),
            "output_mib": round(mem.output_size_in_bytes / 2**20, 1),
            "xla_flops": float(cost.get("flops", 0.0)),
            "xla_bytes_accessed": float(cost.get("bytes accessed", 0.0)),
            "xla_optimal_ms": round(1e3 * float(cost.get("optimal_seconds", 0.0)), 3)}


def attention_cases(t=8192, hq=28, hkv=4, d=128):
    shapes = (S((1, t, hq, d), jnp.bfloat16), S((1, t, hkv, d), jnp.bfloat16), S((1, t, hkv, d), jnp.bfloat16),
              S((1, t), jnp.int32))
    fwd = lambda q, k, v, seg: kernels.attention(q, k, v, segment_ids=seg, impl="pallas_tpu", interpret=False)

    def grads(q, k, v, seg):  # gradients are outputs: temp_mib is what the step holds beyond them
        loss = lambda q, k, v: jnp.sum(fwd(q, k, v, seg).astype(jnp.float32) ** 2)
        return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

    return shapes, fwd, grads


def logprob_cases(n=8192, h=3584, v=152064, w_dtype=jnp.bfloat16):
    shapes = (S((1, n, h), jnp.bfloat16), S((h, v), w_dtype), S((1, n), jnp.int32))
    fwd = lambda x, w, l: kernels.token_logprobs(x, w, l, impl="pallas_tpu", interpret=False)

    def grads(x, w, l):
        loss = lambda x, w: jnp.sum(fwd(x, w, l))
        return jax.value_and_grad(loss, argnums=(0, 1))(x, w)

    return shapes, fwd, grads


def sharded_logprobs(topology_name, fsdp, tensor, tokens_per_chip, seq_len=4096, h=3584, v=152064):
    """token_logprobs fwd+bwd of an FSDP (x tensor) step's LM head on a whole topology:
    hidden [B, T, H] bf16 with B over (data, fsdp) as the train step shards it, the f32
    master head sharded (fsdp, tensor) as the parameter rules do; per chip: temp and
    XLA's cost model, for the Pallas kernels and the chunked XLA path."""
    topo = topologies.get_topology_desc(platform="tpu", topology_name=topology_name)
    n_dev = len(topo.devices)
    data = n_dev // (fsdp * tensor)
    mesh = topologies.make_mesh(topo, (data, fsdp, tensor, 1), ("data", "fsdp", "tensor", "sequence"))
    b = tokens_per_chip * n_dev // seq_len // tensor  # tensor ranks share tokens (activations replicated)
    sh = lambda spec: NamedSharding(mesh, spec)
    args = (S((b, seq_len, h), jnp.bfloat16, sharding=sh(P(("data", "fsdp"), None, None))),
            S((h, v), jnp.float32, sharding=sh(P("fsdp", "tensor"))),
            S((b, seq_len), jnp.int32, sharding=sh(P(("data", "fsdp"), None))))
    out = {"topology": topology_name, "mesh": dict(mesh.shape), "hidden": [b, seq_len, h], "w": [h, v, "float32"]}
    for impl in ("pallas_tpu", "xla"):
        def step(x, w, l):
            loss = lambda x, w: jnp.sum(kernels.token_logprobs(x, w, l, impl=impl,
                                                               interpret=False if impl == "pallas_tpu" else None))
            return jax.value_and_grad(loss, argnums=(0, 1))(x, w)

        try:
            t0 = time.perf_counter()
            with jax.set_mesh(mesh):
                compiled = jax.jit(step, out_shardings=(sh(P()), (args[0].sharding, args[1].sharding))).lower(
                    *args).compile()
            mem = compiled.memory_analysis()
            cost = compiled.cost_analysis() or {}
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            out[impl] = {"compile_s": round(time.perf_counter() - t0, 1),
                         "temp_gib_per_chip": round(mem.temp_size_in_bytes / 2**30, 2),
                         "xla_optimal_ms": round(1e3 * float(cost.get("optimal_seconds", 0.0)), 2)}
        except Exception as e:
            out[impl] = {"error": str(e).splitlines()[0][:400]}
    return out


def vmem_needed(device, generation, cases):
    """Smallest scoped VMEM limit (MiB, bisected) at which each kernel's fwd+bwd still
    compiles with the generation's tiles, next to the table's limit: the headroom of
    the tables. Needs the per-generation tables (this tree)."""
    import dataclasses

    from mm_rlhf_jax.kernels.attention import blocks as attention_tables
    from mm_rlhf_jax.kernels.token_logprobs import blocks as logprob_tables

    out = {}
    for name, tables, (shapes, _, grads) in (("attention", attention_tables, cases[0]),
                                             ("token_logprobs", logprob_tables, cases[1])):
        table = tables.TPU_TABLES[generation]
        lo, hi = 0, table.vmem_limit_bytes // 2**20  # compiles at hi (the table), assumed not at lo
        try:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                tables.TPU_TABLES[generation] = dataclasses.replace(table, vmem_limit_bytes=mid * 2**20)
                try:  # a fresh function object: jit's trace cache would reuse the old limit
                    _compile(device, lambda *a: grads(*a), shapes)
                    hi = mid
                except Exception:
                    lo = mid
        finally:
            tables.TPU_TABLES[generation] = table
        out[name] = {"vmem_needed_mib": hi, "table_limit_mib": table.vmem_limit_bytes // 2**20}
    return out


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(kernels.__file__), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--generations", nargs="*", default=list(TOPOLOGIES))
    parser.add_argument("--w-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--sharded", nargs="*", default=[], metavar="TOPOLOGY:FSDP:TENSOR",
                        help="also token_logprobs on a whole topology, e.g. v5p:4x4x4:64:1 v5p:4x4x4:16:4")
    parser.add_argument("--tokens-per-chip", type=int, default=8192)
    parser.add_argument("--vmem-headroom", action="store_true",
                        help="also bisect the smallest VMEM limit each kernel compiles with (slow)")
    args = parser.parse_args()
    att = attention_cases()
    lm = logprob_cases(w_dtype=jnp.dtype(args.w_dtype))
    report = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "jax": jax.__version__},
              "kernels_from": os.path.dirname(kernels.__file__), "commit": _commit(),
              "shapes": {"attention": "q [1, 8192, 28, 128], k/v [1, 8192, 4, 128] bf16, causal, segment ids",
                         "token_logprobs": f"hidden [1, 8192, 3584] bf16, w [3584, 152064] {args.w_dtype}"},
              "generations": {}}
    for gen in args.generations:
        device = topologies.get_topology_desc(platform="tpu", topology_name=TOPOLOGIES[gen]).devices[0]
        row = {"device_kind": device.device_kind}
        for name, (shapes, fwd, grads) in (("attention", att), ("token_logprobs", lm)):
            row[name] = {"fwd": _measure(device, fwd, shapes), "fwd_bwd": _measure(device, grads, shapes)}
        if args.vmem_headroom:
            row["vmem"] = vmem_needed(device, gen, (att, lm))
        report["generations"][gen] = row
        print(json.dumps({gen: row}), flush=True, file=sys.stderr)
    report["sharded_token_logprobs"] = []
    for spec in args.sharded:
        name, fsdp, tensor = spec.rsplit(":", 2)
        report["sharded_token_logprobs"].append(sharded_logprobs(name, int(fsdp), int(tensor), args.tokens_per_chip))
        print(json.dumps(report["sharded_token_logprobs"][-1]), flush=True, file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
