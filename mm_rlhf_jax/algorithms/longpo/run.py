"""LongPO run: (warm start) -> per round: generate pairs -> reference log-probs -> train -> evaluate.

    python -m mm_rlhf_jax.main --config configs/longpo.py:tiny --workdir runs/longpo_tiny

Work in the workdir, each stage skipped when its output exists (re-running resumes):
  data/                      tokenizer, documents.jsonl, eval_records.jsonl (synthetic task only)
  warm_start/                SFT of the tiny model on short-context task examples (tiny preset only;
                             LongPO assumes an aligned short-context model pi_S)
  initial_eval.json          the starting model (its own RoPE theta) on the evals
  round_<r>/data/            self-generated pairs (data/longpo/generate.py: resumable per stage)
  round_<r>/ref_logps.npy    short-context reference log-probs of every sample (round r's pi_S)
  round_<r>/checkpoints/     train state + data iterator (orbax); SIGTERM checkpoints and exits
  round_<r>/eval.json        the trained policy on the evals
  eval.json                  the last round's evals + initial_* + per-round figures

Round r's generator and reference is the model that round r-1 trained (round 0: the
initial model); it keeps its own RoPE theta while the policy gets
`longpo.policy_rope_theta[r]` (paper: 1e7 at 128K). Evals: held-out preference
accuracy (implicit reward of the policy against the cached short-context reference
on generated samples kept out of training) and, for the synthetic task, greedy
long-context and short-context answer accuracy.
"""

import copy
import logging

import jax
import ml_collections

from mm_rlhf_jax.algorithms.longpo import data as longpo_data, spec, step as step_lib
from mm_rlhf_jax.algorithms.longpo.spec import base_architecture, module_for, policy_theta
from mm_rlhf_jax.algorithms.longpo.evaluator import Evaluator
from mm_rlhf_jax.data.errors import Where
from mm_rlhf_jax.data.longpo import prompts
from mm_rlhf_jax.data.longpo.pipeline import SampleSource, make_iterator
from mm_rlhf_jax.data.longpo.samples import render
from mm_rlhf_jax.data.synthetic import longdoc
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.train import model_factory, pair_data, phase, sft


def warm_start(ctx: phase.RunContext, config: ml_collections.ConfigDict, tokenizer_path: str, module, params):
    """SFT on the synthetic task's short-context examples (the tiny preset's pi_S)."""
    w, d = config.warm_start, config.data
    tok = cached_tokenizer(tokenizer_path)
    task = longdoc.TaskConfig(min_filler=d.synthetic_min_filler, max_filler=d.synthetic_max_filler,
                              sft_min_passages=w.min_passages, sft_max_passages=w.max_passages)
    convs = longdoc.sft_examples(w.seed, w.num_examples, prompts.PHRASES, task)
    seqs = [render(tok, conv, Where("<warm start>", i + 1), "conversation") for i, conv in enumerate(convs)]
    batches = sft.ArrayBatches.for_mesh(sft.sequence_arrays(seqs, 0, w.max_length), w.batch_size, w.seed, ctx.mesh)
    logging.info("warm start: SFT on %d short-context task examples", len(convs))
    return sft.run(ctx.path("warm_start"), ctx, module, params, batches, w,
                   trainable=model_factory.TRAINABLE.get(config.model.trainable))


def split_heldout(samples, ref, fraction: float):
    """(train samples, train ref, held-out samples, held-out ref): the last `fraction` of samples is held out."""
    n_held = int(round(len(samples) * fraction))
    cut = len(samples) - n_held
    return samples[:cut], ref[:cut], samples[cut:], ref[cut:]


ROUND_SCHEDULE = ("round_max_doc_tokens", "round_steps", "round_documents")


def round_config(config: ml_collections.ConfigDict, r: int) -> ml_collections.ConfigDict:
    """Round r's config: the preset with the per-round schedule (longpo.round_*) applied, or the config itself.

    A longer round keeps the preset's headroom of data.max_length over generation.max_doc_tokens (the
    turns' budget) and the ratio of min_doc_tokens to max_doc_tokens.
    """
    c = config.longpo
    for name in ROUND_SCHEDULE:
        if c[name] and len(c[name]) != c.rounds:
            raise ValueError(f"longpo.{name} has {len(c[name])} entries for longpo.rounds={c.rounds}: give one per "
                             "round (or none)")
    if not any(c[name] for name in ROUND_SCHEDULE):
        return config
    rc = copy.deepcopy(config)
    if c.round_max_doc_tokens:
        g, length = config.generation, int(c.round_max_doc_tokens[r])
        rc.generation.max_doc_tokens = length
        rc.generation.min_doc_tokens = int(g.min_doc_tokens * length / g.max_doc_tokens)
        rc.data.max_length = config.data.max_length + length - g.max_doc_tokens
        rc.data.synthetic_passages_per_doc = max(1, round(config.data.synthetic_passages_per_doc * length
                                                          / g.max_doc_tokens))
    if c.round_steps:
        rc.train.steps = int(c.round_steps[r])
    if c.round_documents and c.round_documents[r]:
        rc.data.documents = c.round_documents[r]
    return rc


def train_round(ctx: phase.RunContext, config: ml_collections.ConfigDict, base: DecoderConfig, tokenizer_path: str,
                r: int, documents, records, params, ref_theta: float):
    """Round r: generate with (params, ref_theta), cache reference logps, train the policy; returns (params, evals)."""
    c, d, t = config.longpo, config.data, config.train
    theta = policy_theta(c.policy_rope_theta, r, ref_theta)
    reference = module_for(config, base, ref_theta)
    samples, stats = longpo_data.generate_round(ctx, config, r, tokenizer_path, documents, reference, params)
    samples, too_long = longpo_data.fitting(config, tokenizer_path, samples)
    if len(samples) < 2:
        raise ValueError(f"round {r}: only {len(samples)} usable LongPO samples were generated; see "
                         f"{ctx.path(f'round_{r}', 'data', 'stats.json')} ({stats})")
    ref = longpo_data.reference_logps(ctx, config, r, tokenizer_path, reference, params, samples)
    train_s, train_ref, held_s, held_ref = split_heldout(samples, ref, d.heldout_fraction)
    zigzag = step_lib.zigzag_shards(c.attention_impl, ctx.mesh.shape["sequence"])
    evaluator = Evaluator(ctx, config, tokenizer_path, records, SampleSource(held_s, held_ref) if held_s else None,
                          zigzag_shards=zigzag)
    policy, policy_gen = module_for(config, base, theta, train=True), module_for(config, base, theta)
    cfg = pair_data.train_pipeline(d.batch_size, ctx.mesh, seed=d.seed + r, num_workers=d.num_workers)
    data_iter = make_iterator(SampleSource(train_s, train_ref), tokenizer_path, longpo_data.layout(config), cfg)
    logging.info("round %d: %d train / %d held-out samples, policy RoPE theta %g (reference %g)", r, len(train_s),
                 len(held_s), theta, ref_theta)
    # The starting model's held-out preference accuracy on these pairs (policy == reference, ref theta).
    start = {f"start_{k}": v for k, v in evaluator.preference_accuracy(reference, params, zigzag_shards=0).items()}
    result = phase.train_params(
        ctx.path(f"round_{r}"), ctx, spec.train_step(config, policy, ctx.mesh, ctx.rules), lambda: params, data_iter,
        seed=config.seed + 1, steps=t.steps, log_every=t.log_every, checkpoint_every=t.checkpoint_every, max_to_keep=t.max_checkpoints,
        eval_fn=lambda p: evaluator(policy_gen, policy, p), eval_every=t.eval_every)
    out = {**result.final, "policy_rope_theta": theta, "reference_rope_theta": ref_theta, "train_steps": t.steps,
           "max_doc_tokens": config.generation.max_doc_tokens, "max_length": d.max_length,
           "train_samples": len(train_s), "heldout_samples": len(held_s), "samples_too_long": too_long,
           "generation": stats, **start}
    return result.state.params, theta, out


def run(config: ml_collections.ConfigDict, workdir: str):
    with phase.run_context(config, workdir) as ctx:
        tokenizer_path, documents, records = longpo_data.prepare(config, workdir)
        base = base_architecture(config)
        start = module_for(config, base, base.rope_theta)
        if config.model.init_from:
            # Parameters do not depend on remat / attention settings, so the block's numerics serve `start`.
            _, params = model_factory.pretrained(config.model.init_from, config.model, ctx.mesh, ctx.rules)
        else:
            params = hf.init_params(start, jax.random.PRNGKey(config.seed), ctx.mesh, ctx.rules)
            if config.warm_start.steps:
                params = warm_start(ctx, config, tokenizer_path, start, params)
        theta = base.rope_theta
        initial = ctx.writer.json_once("initial_eval.json",
                                       lambda: Evaluator(ctx, config, tokenizer_path, records, None)(start, start,
                                                                                                    params))
        rounds = []
        for k in range(config.longpo.rounds):
            rc = round_config(config, k)
            params, theta, result = train_round(ctx, rc, base, tokenizer_path, k,
                                                longpo_data.round_documents(config, rc, k, workdir, documents),
                                                records, params, theta)
            ctx.writer.write_json(f"round_{k}/eval.json", result)
            rounds.append(result)
        numbers = lambda m: {k: v for k, v in m.items() if isinstance(v, (int, float))}
        out = {**numbers(rounds[-1]), **{f"initial_{k}": v for k, v in numbers(initial).items()},
               "rounds": config.longpo.rounds,
               "steps_per_round": [r["train_steps"] for r in rounds] if config.longpo.round_steps
               else config.train.steps,
               "value_set": config.longpo.value_set}  # paper or released values (configs/longpo.py)
        if "short_context_accuracy" in out and "initial_short_context_accuracy" in out:
            drop = out["initial_short_context_accuracy"] - out["short_context_accuracy"]
            out["short_context_ok"] = bool(drop <= config.eval.short_context_margin)
        phase.report("longpo", out, ctx.writer)
    return out
