"""Rollout throughput on CPU: our sampler against transformers, and its batching modes on RL-shaped batches.

  python bench/rollout.py [--cases hf grpo mixed] [--batches 16 64 --new 128 --prompt-min 16 --prompt-max 48
                           --repeats 3 --hf-threads 1 2] [--grpo-prompts 16 --grpo-samples 8 --slots 32]
                          [--mixed-prompts 64 --mixed-batch 16]

Every case runs the same tiny Qwen2 (hidden 256, 4 layers, 4 query / 2 KV heads,
MLP 1024, vocab 8192, f32) loaded from one transformers checkpoint that this
script writes into a temporary folder (random init, torch seed 0), on random
prompts (ids, lengths uniform in [prompt-min, prompt-max], left-padded). Ours is
always the whole `rollout.generate.Generator` call (the engine every
algorithm's rollout uses: collate, put, jitted prefill + decode loop, fetch),
compiled once before timing. Variants alternate in one process `--repeats`
times; figures are medians of tokens/s. Prints one JSON object.

hf: greedy, `--new` new tokens and no early stop (transformers: min_new_tokens =
  max_new_tokens; ours: no stop id), so both produce exactly B x new tokens, at
  each of `--batches`. Transformers is `model.generate(input_ids, attention_mask,
  do_sample=False)`, sdpa attention, torch.no_grad, at each of `--hf-threads`
  intra-op thread counts. On a loaded 2-core VM torch with 2 threads can be 20x
  slower than with 1 (its OpenMP workers wait on each other), so the baseline is
  transformers' best setting: the highest of its per-thread-count medians. The
  greedy tokens of the two sides are compared (share of equal rows): with f32 on
  both sides they should be identical.

grpo and mixed are ours only, temperature-1 sampling with STOP_FRACTION of the
vocabulary as stop ids: the random model samples near-uniformly, so a row stops
at each step with probability ~ 3 / new and response lengths are roughly
geometric (mean ~ new / 3, a few rows run to `--new`), as RL rollouts finish at
very different steps. Tokens/s counts generated tokens (stop token included).

grpo: `--grpo-prompts` prompts x `--grpo-samples` samples in one call of all
  rows: `plain` repeats each prompt per sample (one prefill per row), `shared`
  prefills each prompt once for its group (num_samples), `continuous` also
  decodes only `--slots` rows at a time, a finished row's slot taking the next
  waiting row. All three return the same tokens (checked).
mixed: `--mixed-prompts` prompts: `lockstep` decodes them all at once until the
  longest stops; `continuous` the same call with `--mixed-batch` slots (same
  tokens, checked); `lockstep_small` calls of `--mixed-batch` rows in lockstep
  (as many rows decoding at once as `continuous`; other samples, as a call's
  rows are keyed by their batch's first row, but the same length distribution).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, MLP = 8192, 256, 4, 4, 2, 1024
STOP_FRACTION = 3  # stop ids per step ~ STOP_FRACTION / new of the vocabulary


def write_checkpoint(path: str) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP,
                                   num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                   num_key_value_heads=KV_HEADS, max_position_embeddings=1024,
                                   tie_word_embeddings=False, torch_dtype="float32")
    transformers.Qwen2ForCausalLM(cfg).eval().save_pretrained(path)


def make_prompts(n: int, lo: int, hi: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, VOCAB, int(rng.integers(lo, hi + 1))).tolist() for _ in range(n)]


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=os.path.dirname(os.path.abspath(__file__))).strip()
    except Exception:  # noqa: BLE001 - a bench run outside a checkout
        return "unknown"


def timed(variants: dict, repeats: int) -> tuple[dict, dict]:
    """({name: first output}, {name: [seconds per timed run]}): each variant called once untimed (compile),
    then the variants alternate `repeats` times."""
    first = {name: fn() for name, fn in variants.items()}
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return first, times


def length_stats(gens) -> dict:
    n = np.asarray([g.num_tokens for g in gens])
    return {"rows": len(n), "mean": round(float(n.mean()), 1), "min": int(n.min()), "max": int(n.max())}


def sampled_report(first: dict, times: dict, reference: str) -> dict:
    """tokens/s (generated tokens / s, median and runs) per variant, the response lengths, and whether each
    variant's tokens equal the reference variant's."""
    out = {"lengths": {k: length_stats(v) for k, v in first.items()}}
    for name, gens in first.items():
        tokens = sum(g.num_tokens for g in gens)
        runs = [tokens / t for t in times[name]]
        out[name] = {"tok_s": round(statistics.median(runs), 1), "runs_tok_s": [round(r, 1) for r in runs]}
        if name != reference and len(gens) == len(first[reference]):
            same = sum(a.tokens == b.tokens for a, b in zip(gens, first[reference]))
            out[name]["tokens_equal_rows"] = same / len(gens)
    for name in first:
        if name != reference:
            out[name]["speedup"] = round(out[name]["tok_s"] / out[reference]["tok_s"], 2)
    return out


def sampling_generator(model, mesh, a, **kw):
    """A Generator for the grpo / mixed cases: temperature 1, the STOP_FRACTION stop ids."""
    from mm_rlhf_jax.rollout.generate import Generator, _TokenIds
    from mm_rlhf_jax.rollout.strategies import SamplingConfig

    stops = tuple(range(3, 3 + VOCAB * STOP_FRACTION // a.new))
    return Generator(model, _TokenIds(0, stops), mesh, max_new_tokens=a.new, stop_ids=stops, min_bucket=16,
                     sampling=SamplingConfig("temperature", 1.0), **kw)


def case_grpo(a, model, params, mesh) -> dict:
    """plain (prompts repeated) vs shared (one prefill per group) vs continuous (shared, --slots at once)."""
    k = a.grpo_samples
    items = [{"prompt_ids": np.asarray(p, np.int32)}
             for p in make_prompts(a.grpo_prompts, a.prompt_min, a.prompt_max, seed=1)]
    rows = len(items) * k
    plain = sampling_generator(model, mesh, a, batch_size=rows)
    cont = sampling_generator(model, mesh, a, batch_size=rows, slots=a.slots)
    repeated = [it for it in items for _ in range(k)]
    first, times = timed({"plain": lambda: plain(params, repeated, seed=0),
                          "shared": lambda: plain(params, items, seed=0, num_samples=k),
                          "continuous": lambda: cont(params, items, seed=0, num_samples=k)}, a.repeats)
    return {"prompts": len(items), "samples": k, "slots": a.slots, **sampled_report(first, times, "plain")}


def case_mixed(a, model, params, mesh) -> dict:
    """lockstep (all rows) vs continuous (--mixed-batch slots) vs lockstep_small (calls of --mixed-batch rows)."""
    items = [{"prompt_ids": np.asarray(p, np.int32)}
             for p in make_prompts(a.mixed_prompts, a.prompt_min, a.prompt_max, seed=2)]
    b = a.mixed_batch
    full = sampling_generator(model, mesh, a, batch_size=len(items))
    cont = sampling_generator(model, mesh, a, batch_size=len(items), slots=b)
    small = sampling_generator(model, mesh, a, batch_size=b)
    first, times = timed({"lockstep": lambda: full(params, items, seed=0),
                          "continuous": lambda: cont(params, items, seed=0),
                          "lockstep_small": lambda: small(params, items, seed=0)}, a.repeats)
    report = sampled_report(first, times, "lockstep")
    del report["lockstep_small"]["tokens_equal_rows"]  # other keys: other samples by design
    return {"prompts": len(items), "slots": b, **report}


def case_hf(a, tmp, model, params, mesh) -> dict:
    """Greedy, no early stop: ours against transformers' generate at each batch size."""
    import torch
    import transformers

    from mm_rlhf_jax.rollout.generate import Generator, _TokenIds

    torch_model = transformers.Qwen2ForCausalLM.from_pretrained(tmp, attn_implementation="sdpa").eval()
    results = {}
    for b in a.batches:
        prompts = make_prompts(b, a.prompt_min, a.prompt_max, seed=b)
        gen = Generator(model, _TokenIds(0, ()), mesh, max_new_tokens=a.new, batch_size=b, stop_ids=(-1,),
                        min_bucket=16)
        items = [{"prompt_ids": np.asarray(p, np.int32)} for p in prompts]
        width = max(map(len, prompts))
        ids = torch.zeros((b, width), dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding, as transformers wants for generation
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1

        def ours():
            return [list(g.tokens) for g in gen(params, items)]

        def theirs(threads):
            torch.set_num_threads(threads)
            with torch.no_grad():
                out = torch_model.generate(ids, attention_mask=mask, max_new_tokens=a.new, min_new_tokens=a.new,
                                           do_sample=False, pad_token_id=0, eos_token_id=None)
            return out[:, width:].tolist()

        t0 = time.perf_counter()
        ours_tokens = ours()  # compile
        compile_s = time.perf_counter() - t0
        hf_tokens = theirs(a.hf_threads[0])  # warm-up
        sides = [("ours", ours)] + [(f"hf@{t}", lambda t=t: theirs(t)) for t in a.hf_threads]
        times = {name: [] for name, _ in sides}
        for _ in range(a.repeats):
            for name, fn in sides:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(b * a.new / t for t in v) for k, v in times.items()}
        best_hf = max((k for k in med if k != "ours"), key=med.get)
        results[f"batch_{b}"] = {
            "ours_tok_s": round(med["ours"], 1), "hf_tok_s": round(med[best_hf], 1), "hf_best": best_hf,
            "ratio": round(med["ours"] / med[best_hf], 2),
            "runs_tok_s": {k: [round(b * a.new / t, 1) for t in v] for k, v in times.items()},
            "ours_compile_s": round(compile_s, 2), "trace_count": gen.trace_count,
            "tokens_equal_rows": sum(x == y for x, y in zip(ours_tokens, hf_tokens)) / b,
        }
        print(json.dumps({f"batch_{b}": results[f"batch_{b}"]}), file=sys.stderr)
    return {"hf_threads": a.hf_threads, **results}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", choices=["hf", "grpo", "mixed"], default=["hf", "grpo", "mixed"])
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prompt-min", type=int, default=16)
    ap.add_argument("--prompt-max", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf-threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--grpo-prompts", type=int, default=16)
    ap.add_argument("--grpo-samples", type=int, default=8)
    ap.add_argument("--slots", type=int, default=32, help="grpo: continuous-batching slots")
    ap.add_argument("--mixed-prompts", type=int, default=64)
    ap.add_argument("--mixed-batch", type=int, default=16, help="mixed: slots, and the small lockstep batch")
    a = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    from mm_rlhf_jax.models import hf
    from mm_rlhf_jax.sharding import make_mesh

    tmp = tempfile.mkdtemp(prefix="rollout_bench_")
    write_checkpoint(tmp)
    model, params = hf.load_pretrained(tmp, jnp.float32)
    mesh = make_mesh({"fsdp": 1}, devices=jax.devices()[:1])

    results = {}
    for case in a.cases:
        if case == "hf":
            results[case] = case_hf(a, tmp, model, params, mesh)
        else:
            results[case] = (case_grpo if case == "grpo" else case_mixed)(a, model, params, mesh)
        print(json.dumps({case: results[case]}), file=sys.stderr)

    print(json.dumps({
        "bench": "rollout", "commit": commit(), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()], "jax": jax.__version__,
        "transformers": transformers.__version__, "torch": torch.__version__,
        "model": dict(vocab=VOCAB, hidden=HIDDEN, layers=LAYERS, heads=HEADS, kv_heads=KV_HEADS, mlp=MLP,
                      dtype="float32"),
        "new_tokens": a.new, "prompt_lengths": [a.prompt_min, a.prompt_max], "repeats": a.repeats,
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
