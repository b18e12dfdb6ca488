"""A tiny decoder, random pair batches and full-logits reference log-probs (the pair steps' independent reference)."""

import jax
import jax.numpy as jnp
import numpy as np

from mm_rlhf_jax.models import hf
from mm_rlhf_jax.models.config import DecoderConfig


def tiny_lm(vocab=300, hidden=32, dtype=jnp.bfloat16):
    return hf.build_model(DecoderConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_layers=1,
                                        num_heads=4, num_kv_heads=2, architecture="qwen2", qkv_bias=True,
                                        dtype=dtype))


def pair_batch(rng, b, t, vocab):
    """Right-padded chosen/rejected sequences: shared prompt, different responses, ragged lengths."""
    ids = rng.integers(7, vocab, size=(b, 2, t)).astype(np.int32)
    att = np.zeros((b, 2, t), np.int32)
    loss = np.zeros((b, 2, t), np.float32)
    for i in range(b):
        prompt = int(rng.integers(3, t // 3))
        ids[i, 1, :prompt] = ids[i, 0, :prompt]
        for j in range(2):
            n = int(rng.integers(prompt + 2, t + 1))
            att[i, j, :n], loss[i, j, prompt:n] = 1, 1.0
            ids[i, j, n:] = 0
    delta = rng.uniform(0, 4, size=b).astype(np.float32)
    ref = rng.normal(-40, 3, size=(b, 2)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": att, "loss_mask": loss, "delta": delta, "ref_logps": ref}


def naive_logps(module, params, batch):
    """Sum of log p(response tokens) per sequence from full [T, V] logits (numpy log-softmax)."""
    b, n, t = batch["input_ids"].shape
    ids, att = batch["input_ids"].reshape(b * n, t), batch["attention_mask"].reshape(b * n, t)
    logits = np.asarray(jax.jit(lambda p: module.apply({"params": p}, ids, attention_mask=att).logits)(params),
                        np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    mask = batch["loss_mask"].reshape(b * n, t)
    out = np.zeros(b * n)
    for r in range(b * n):
        for k in range(1, t):
            if mask[r, k]:
                out[r] += logp[r, k - 1, ids[r, k]]
    return out.reshape(b, n)


def assert_same_update(old, new_a, new_b, rtol: float = 1e-5):
    """||(new_a - old) - (new_b - old)|| <= rtol * ||new_b - old|| over every parameter (one global norm).

    Comparing the whole update's norm, not each element, keeps float noise in
    near-zero gradient entries from deciding the test.
    """
    import numpy as np

    da = [np.asarray(a, np.float64) - np.asarray(o, np.float64) for a, o in zip(jax.tree.leaves(new_a),
                                                                                jax.tree.leaves(old))]
    db = [np.asarray(b, np.float64) - np.asarray(o, np.float64) for b, o in zip(jax.tree.leaves(new_b),
                                                                                jax.tree.leaves(old))]
    diff = np.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(da, db)))
    ref = np.sqrt(sum((y ** 2).sum() for y in db))
    assert ref > 0 and diff <= rtol * ref, (diff, ref)
