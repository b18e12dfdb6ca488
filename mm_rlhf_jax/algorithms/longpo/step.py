"""LongPO steps: pure functions of (state, batch) (papers.md §3(a), data layout in data/longpo/samples.py).

    pc, pr = sum log pi_theta(y_S | x_L), sum log pi_theta(y_L | x_L)   over all turns (one packed pass)
    rc, rr = sum_i log pi_S(y_Si | x_Si), sum_i log pi_S(y_Li | x_Si)   short-context reference, cached
    nll    = mean token NLL of pi_theta on the chosen sequence S_L     (padding excluded)
    loss   = mean_B [ w * nll + lam * -log sigmoid(beta * ((pc - rc) - (pr - rr))) ]   (losses.longpo_loss)

With `longpo.reference = long` (REFERENCES) rc, rr are pi_S's log-probs of the same long
sequences the policy reads: the DPO (+ NLL) baseline of the paper's ablations; w is
`longpo.nll_weight` (1; 0 = "w/o NLL").

The policy reads the document once: chosen and rejected turns are two branches
after a shared prompt (kernels.attention branch ids). Log-probs never touch
[B, T, V] logits: either the fused token_logprobs kernel runs over the hidden
states in place (nll over the whole chosen sequence, the paper's S_L), or, when
the NLL covers responses only, the hidden states at the response positions are
gathered first and only those go through the LM head. Under sequence (context)
parallelism the model's attention_impl is a `context_parallel*` kernel; for the
zigzag layout (`zigzag_shards` = the mesh's sequence-axis size, given by the
run) the inputs are permuted here and the hidden states un-permuted.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mm_rlhf_jax import kernels
from mm_rlhf_jax.losses import preference
from mm_rlhf_jax.losses.logprobs import masked_sum, shifted_token_logprobs
from mm_rlhf_jax.train import state as state_lib

TOKEN_KEYS = ("input_ids", "positions", "segment_ids", "branch_ids")


# Attention kernels that expect the zigzag token order (kernels/attention/context_parallel.py).
ZIGZAG_IMPLS = frozenset({"context_parallel_zigzag", "context_parallel_zigzag_xla", "context_parallel_zigzag_pallas"})


def zigzag_shards(attention_impl: str, sequence_axis_size: int) -> int:
    """The zigzag_shards argument of the steps: the sequence-axis size for zigzag kernels, else 0."""
    return sequence_axis_size if attention_impl in ZIGZAG_IMPLS else 0


def policy_hidden(module, params, batch, *, zigzag_shards: int = 0):
    """Final hidden states [B, T, E] of the packed sequences (natural token order).

    zigzag_shards > 0: the model's attention takes the zigzag layout over that
    many sequence shards (the tokens are permuted in, the hidden states out).
    """
    inputs = {k: batch[k] for k in TOKEN_KEYS}
    t = inputs["input_ids"].shape[1]
    perm = kernels.zigzag_permutation(t, zigzag_shards) if zigzag_shards else None
    if perm is not None:
        inputs = {k: v[:, perm] for k, v in inputs.items()}
    out = module.apply({"params": params}, inputs["input_ids"], positions=inputs["positions"],
                       segment_ids=inputs["segment_ids"], branch_ids=inputs["branch_ids"], compute_logits=False)
    hidden = out.hidden_states
    if perm is not None:
        hidden = hidden[:, np.argsort(perm)]
    return hidden


def _logps_in_place(hidden, w, batch):
    """Per-token log-probs f32[B, T] over every position; the first rejected token is rescored from the prompt."""
    ids = batch["input_ids"]
    lp = shifted_token_logprobs(hidden, w, ids)
    rows = jnp.arange(ids.shape[0])
    h_last = hidden[rows, batch["prompt_last"]][:, None]  # [B, 1, E]
    first = kernels.token_logprobs(h_last, w, ids[rows, batch["rejected_first"]][:, None])[:, 0]
    return lp.at[rows, batch["rejected_first"]].set(first)


def _logps_gathered(hidden, w, batch, n: int):
    """(log-probs f32[B, N], chosen mask, rejected mask) at the <= n response tokens of each row."""
    sel = (batch["chosen_mask"] + batch["rejected_mask"]) > 0
    idx = jax.vmap(lambda m: jnp.nonzero(m, size=n, fill_value=0)[0])(sel)  # [B, N]
    valid = (jnp.arange(n)[None] < jnp.sum(sel, -1, keepdims=True)).astype(jnp.float32)
    pred = jnp.where(idx == batch["rejected_first"][:, None], batch["prompt_last"][:, None], idx - 1)
    h = jnp.take_along_axis(hidden, jnp.maximum(pred, 0)[..., None], axis=1)  # [B, N, E]: gather before the head
    lp = kernels.token_logprobs(h, w, jnp.take_along_axis(batch["input_ids"], idx, axis=1))
    take = lambda m: jnp.take_along_axis(m, idx, axis=1) * valid
    return lp, take(batch["chosen_mask"]), take(batch["rejected_mask"])


def policy_logps(module, params, batch, *, nll_tokens: str = "sequence", max_response_tokens: int = 0,
                 zigzag_shards: int = 0, nll_side: str = "chosen") -> dict:
    """Summed response log-probs and the NLL of the chosen sequence, each f32[B].

    nll_tokens="sequence": LM head over every position (the NLL needs them all).
    nll_tokens="responses": only the response positions (<= max_response_tokens per
    row, checked by the data layer) are gathered and scored.
    nll_side="rejected" (responses only): the NLL of the rejected answers instead,
    the SFT-Rejected baseline of the paper's ablations (with lam = 0).
    """
    if nll_side not in ("chosen", "rejected") or (nll_side == "rejected" and nll_tokens != "responses"):
        raise ValueError(f"longpo.nll_side={nll_side!r} with nll_tokens={nll_tokens!r}: use chosen, or rejected "
                         "with nll_tokens='responses' (the rejected side has no whole-sequence mask)")
    hidden = policy_hidden(module, params, batch, zigzag_shards=zigzag_shards)
    w = module.lm_head_weight(params)
    if nll_tokens == "sequence":
        lp = _logps_in_place(hidden, w, batch)
        cm, rm, nm = batch["chosen_mask"], batch["rejected_mask"], batch["nll_mask"]
    elif nll_tokens == "responses":
        if max_response_tokens <= 0:
            raise ValueError("nll_tokens='responses' needs max_response_tokens > 0 (static gather size)")
        lp, cm, rm = _logps_gathered(hidden, w, batch, max_response_tokens)
        nm = cm if nll_side == "chosen" else rm
    else:
        raise ValueError(f"unknown nll_tokens {nll_tokens!r}; use 'sequence' or 'responses'")
    pc, nc = masked_sum(lp, cm)
    pr, nr = masked_sum(lp, rm)
    nll_sum, nn = masked_sum(lp, nm)
    return {"chosen": pc, "rejected": pr, "nll": -nll_sum / jnp.maximum(nn, 1.0), "chosen_tokens": nc,
            "rejected_tokens": nr, "nll_tokens": nn}


def reference_logps(module, params, batch) -> jax.Array:
    """Short-context reference: sum over turns of log pi_S(y | C_S + I), f32[B, 2] (chosen, rejected)."""
    ids = batch["ref_input_ids"]
    b, s, k, length = ids.shape
    flat = lambda x: x.reshape(b * s * k, length)
    out = module.apply({"params": params}, flat(ids), attention_mask=flat(batch["ref_attention_mask"]),
                       compute_logits=False)
    lp = shifted_token_logprobs(out.hidden_states, module.lm_head_weight(params), flat(ids))
    sums, _ = masked_sum(lp, flat(batch["ref_loss_mask"]))
    return sums.reshape(b, s, k).sum(-1)


def long_reference_logps(module, params, batch) -> jax.Array:
    """Long-context reference: log pi_S(y | C_L + I) summed over turns, f32[B, 2], on the policy's own inputs."""
    lp = policy_logps(module, params, batch, nll_tokens="sequence")
    return jnp.stack([lp["chosen"], lp["rejected"]], axis=-1)


# longpo.reference -> (reference log-prob fn, whether it reads the short `ref_*` keys of a batch).
REFERENCES = {"short": (reference_logps, True), "long": (long_reference_logps, False)}


def reference_fn(name: str):
    """(fn(module, params, batch) -> f32[B, 2], reads_short_keys) of a `longpo.reference` name."""
    if name not in REFERENCES:
        raise ValueError(f"unknown longpo.reference {name!r}; use one of {sorted(REFERENCES)}")
    return REFERENCES[name]


def reference_inputs(name: str, batch: dict) -> dict:
    """The keys of a sample batch that reference `name` reads (the short `ref_*` ones, or the policy's)."""
    short_keys = reference_fn(name)[1]
    return {k: v for k, v in batch.items() if k.startswith("ref_") == short_keys}


def counts(batch) -> dict:
    """The global normaliser of a batch: its samples."""
    return {"samples": jnp.float32(batch["input_ids"].shape[0])}


def longpo_terms(module, params, batch, c: ml_collections.ConfigDict, n: dict, zigzag_shards: int = 0):
    """(loss, metrics) of (a microbatch of) a batch with global normalisers n; c is the `longpo` block."""
    lp = policy_logps(module, params, batch, nll_tokens=c.nll_tokens, max_response_tokens=c.max_response_tokens,
                      zigzag_shards=zigzag_shards, nll_side=c.nll_side)
    ref = batch["ref_logps"].astype(jnp.float32)
    pc, pr, rc, rr = lp["chosen"], lp["rejected"], ref[:, 0], ref[:, 1]
    losses = preference.longpo_loss(pc, pr, rc, rr, lp["nll"], beta=c.beta, lam=c.lam, nll_weight=c.nll_weight)
    chosen_r, rejected_r = c.beta * (pc - rc), c.beta * (pr - rr)
    pref = -jax.nn.log_sigmoid(chosen_r - rejected_r)
    total = n["samples"]
    share = pc.shape[0] / total
    loss = jnp.sum(losses) / total
    metrics = {
        "train/loss": loss,
        "longpo/nll": jnp.sum(lp["nll"]) / total,
        "longpo/pref_loss": jnp.sum(pref) / total,
        **{k: v * share for k, v in preference.reward_metrics(chosen_r, rejected_r, pc, pr).items()},
        "tokens/nll": jnp.sum(lp["nll_tokens"]) / total,
    }
    return loss, metrics


def train_step(state, batch, *, module, tx, mask, c, zigzag_shards: int = 0, microbatches: int = 1):
    return state_lib.minimize(lambda params, b, n: longpo_terms(module, params, b, c, n, zigzag_shards), state,
                              batch, tx, mask, counts_fn=counts, microbatches=microbatches)


def pair_logps_step(params, batch, *, module, c, zigzag_shards: int = 0):
    """Policy (chosen, rejected) summed log-probs f32[B, 2] (held-out preference accuracy)."""
    lp = policy_logps(module, params, batch, nll_tokens=c.nll_tokens, max_response_tokens=c.max_response_tokens,
                      zigzag_shards=zigzag_shards)
    return jnp.stack([lp["chosen"], lp["rejected"]], axis=-1)

