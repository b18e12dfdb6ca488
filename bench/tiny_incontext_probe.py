"""How fast the tiny presets' decoder learns two in-context skills from random init.

A reward model that reads an answer has to check it against something: in the
critique RM the verdict ("so the answer is correct/wrong") needs "is the word the
critique just stated the word the answer says?", an equality test between two
tokens in context. Copying a word of a known kind from the context is a simpler
skill. This trains the tiny LM (text only, the `model.tiny` block of the presets)
on each skill alone and prints, as JSON, the held-out accuracy every `--every`
steps and the first step reaching 0.9 (null if none):

  copy:       filler ... W ... filler  SAYS -> W          (W one of 6 words, anywhere in 5..24)
  match:      filler ... A ... filler  IS B ? -> YES/NO   (A == B half the time)
  match_here: filler ... A ... filler  IS B -> YES/NO     (the verdict right after B, as in the
              "fact_check" critiques: the word being read is the one compared)

    python bench/tiny_incontext_probe.py [--layers 2] [--steps 1500] [--lr 2e-3] [--warmup 0] [--clip 0]

Results: bench/RESULTS.md "Reward model (tiny)".
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mm_rlhf_jax import config_lib
from mm_rlhf_jax.train import model_factory

LENGTH, BATCH, WORDS = 48, 32, np.arange(100, 106)
FILLER = (20, 90)
SAYS, IS, QUERY, YES, NO = 7, 8, 9, 11, 12


def make_batch(rng: np.random.Generator, task: str, n: int) -> np.ndarray:
    """int32[n, LENGTH]; the last token is the target, predicted at position LENGTH - 2."""
    ids = rng.integers(*FILLER, size=(n, LENGTH))
    a = rng.choice(WORDS, size=n)
    ids[np.arange(n), rng.integers(5, 25, size=n)] = a
    if task == "copy":
        ids[:, -2], ids[:, -1] = SAYS, a
        return ids.astype(np.int32)
    same = rng.random(n) < 0.5
    b = np.where(same, a, WORDS[(a - WORDS[0] + rng.integers(1, len(WORDS), size=n)) % len(WORDS)])
    if task == "match":
        ids[:, -4], ids[:, -3], ids[:, -2], ids[:, -1] = IS, b, QUERY, np.where(same, YES, NO)
    else:
        ids[:, -3], ids[:, -2], ids[:, -1] = IS, b, np.where(same, YES, NO)
    return ids.astype(np.int32)


TASKS = ("copy", "match", "match_here")


def run(task: str, layers: int, steps: int, lr: float, every: int, seed: int, warmup: int = 0,
        clip: float = 0.0) -> dict:
    module, _ = model_factory.build(config_lib.model_block(multimodal=False, num_layers=layers), seed)
    rng = np.random.default_rng(seed)
    eval_ids = jnp.asarray(make_batch(np.random.default_rng(seed + 1), task, 512))
    params = module.init(jax.random.PRNGKey(seed), eval_ids[:2], attention_mask=jnp.ones((2, LENGTH), jnp.int32))
    params = params["params"]
    tx = optax.adamw(optax.linear_schedule(0.0, lr, warmup) if warmup else lr)
    if clip:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    opt = tx.init(params)

    def outputs(p, ids):
        logits = module.apply({"params": p}, ids, attention_mask=jnp.ones_like(ids), compute_logits=True).logits
        logp = jax.nn.log_softmax(logits[:, -2].astype(jnp.float32))
        nll = -jnp.mean(jnp.take_along_axis(logp, ids[:, -1:], 1))
        return nll, jnp.mean(jnp.argmax(logp, -1) == ids[:, -1])

    @jax.jit
    def step(p, o, ids):
        (_, _), g = jax.value_and_grad(outputs, has_aux=True)(p, ids)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o

    evaluate = jax.jit(outputs)
    curve, first, start = {}, None, time.time()
    for i in range(1, steps + 1):
        params, opt = step(params, opt, jnp.asarray(make_batch(rng, task, BATCH)))
        if i % every == 0:
            acc = float(evaluate(params, eval_ids)[1])
            curve[i] = round(acc, 3)
            if first is None and acc >= 0.9:
                first = i
    return {"task": task, "steps_to_0.9": first, "heldout_accuracy": curve, "seconds": round(time.time() - start, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=0, help="linear warmup steps")
    ap.add_argument("--clip", type=float, default=0.0, help="global-norm gradient clip (0 = off)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    a = ap.parse_args()
    out = {"layers": a.layers, "lr": a.lr, "warmup": a.warmup, "clip": a.clip, "batch": BATCH,
           "device": jax.devices()[0].platform,
           "results": [run(t, a.layers, a.steps, a.lr, a.every, a.seed, a.warmup, a.clip)
                       for t in a.tasks.split(",")]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
