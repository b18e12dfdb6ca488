"""Greedy generation throughput on CPU: this project's sampler against transformers' `generate`.

  python bench/rollout_vs_hf.py [--batches 16 64 --new 128 --prompt-min 16 --prompt-max 48 --repeats 3
                                 --hf-threads 1 2]

Both sides run the same tiny Qwen2 (hidden 256, 4 layers, 4 query / 2 KV heads,
MLP 1024, vocab 8192, f32) loaded from one transformers checkpoint that this
script writes into a temporary folder (random init, torch seed 0), on the same
prompts (random ids, lengths uniform in [prompt-min, prompt-max], left-padded),
greedy, `--new` new tokens and no early stop (transformers: min_new_tokens =
max_new_tokens; ours: no stop id), so both produce exactly B x new tokens.

- ours: `rollout.generate.Generator` (the engine every algorithm's rollout uses),
  compiled once before timing; a timed call is the whole host call (collate, put,
  jitted prefill + decode loop, fetch).
- transformers: `model.generate(input_ids, attention_mask, do_sample=False)`,
  sdpa attention, torch.no_grad, at each of `--hf-threads` intra-op thread
  counts. On a loaded 2-core VM torch with 2 threads can be 20x slower than with
  1 (its OpenMP workers wait on each other), so the baseline is transformers'
  best setting: the highest of its per-thread-count medians.

The sides alternate in one process (ours, hf@1, hf@2, ours, ...) `--repeats`
times per batch size; the figure is each side's median tokens/s. The greedy
tokens of the two sides are compared (share of rows whose 128 tokens are all
equal): with f32 on both sides they should be identical. Prints one JSON object.
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prompt-min", type=int, default=16)
    ap.add_argument("--prompt-max", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf-threads", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()

    import torch

    import jax
    import jax.numpy as jnp
    import transformers

    from mm_rlhf_jax.models import hf
    from mm_rlhf_jax.rollout.generate import Generator, _TokenIds
    from mm_rlhf_jax.sharding import make_mesh

    tmp = tempfile.mkdtemp(prefix="rollout_vs_hf_")
    write_checkpoint(tmp)
    torch_model = transformers.Qwen2ForCausalLM.from_pretrained(tmp, attn_implementation="sdpa").eval()
    model, params = hf.load_pretrained(tmp, jnp.float32)
    mesh = make_mesh({"fsdp": 1}, devices=jax.devices()[:1])

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

    print(json.dumps({
        "bench": "rollout_vs_hf", "commit": commit(), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()], "jax": jax.__version__,
        "transformers": transformers.__version__, "torch": torch.__version__,
        "model": dict(vocab=VOCAB, hidden=HIDDEN, layers=LAYERS, heads=HEADS, kv_heads=KV_HEADS, mlp=MLP,
                      dtype="float32"),
        "new_tokens": a.new, "prompt_lengths": [a.prompt_min, a.prompt_max], "repeats": a.repeats,
        "hf_threads": a.hf_threads,
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
