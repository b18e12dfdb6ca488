"""MM-DPO run: data + model + cached reference log-probs + the jitted step + the host loop + evals.

    python -m mm_rlhf_jax.main --config configs/mm_dpo.py:tiny --workdir runs/quickstart

Order of work (every stage is skipped when its output already exists, so
re-running the same command resumes):
  1. data: the pair files (synthetic ones are generated into the workdir), checked for the field
     the beta mode reads (beta.py);
  2. optional supervised warm start on the best-ranked responses (tiny
     presets: the stand-in for the paper's SFT'd LLaVA-OV; train/sft.py);
  3. reference log-probs of every train and held-out pair with the initial
     policy (= the reference), cached on disk by content hash;
  4. the train state (restored from the latest checkpoint, or created);
  5. the held-out evaluation of the initial policy (initial_eval.json);
  6. training, with periodic evals and checkpoints;
  7. the final evaluation, written to eval.json and printed.
"""

import functools

import jax
import ml_collections
import numpy as np

from mm_rlhf_jax import storage
from mm_rlhf_jax.algorithms.mm_dpo import beta as beta_lib, spec, step as step_lib
from mm_rlhf_jax.data.example import ExampleEncoder
from mm_rlhf_jax.data.prompts import encode_prompt
from mm_rlhf_jax.data.sources import JsonlPairSource
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.data.validation import load_queries
from mm_rlhf_jax.evals import generation
from mm_rlhf_jax.evals.preference import accuracy_by, implicit_reward_accuracy, pair_groups
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.rollout.generate import Generator
from mm_rlhf_jax.sharding import SAMPLING_RULES, placement
from mm_rlhf_jax.train import model_factory, packed_data, pair_data, phase, reference_cache, sft


class WithReference:
    """Adds cached reference log-probs to every batch of a checkpointable iterator."""

    def __init__(self, iterator, cache: reference_cache.ReferenceCache):
        self.iterator, self.cache = iterator, cache

    def __next__(self):
        batch = next(self.iterator)
        batch["ref_logps"] = self.cache.lookup(batch)
        return batch

    def get_state(self):
        return self.iterator.get_state()

    def set_state(self, state):
        self.iterator.set_state(state)


def make_eval_fn(module, files, heldout, encoder_cfg, cache, config, mesh):
    """eval_fn(params) -> flat metrics: held-out implicit-reward accuracy (+ greedy answer accuracy).

    heldout: the held-out non-tie pairs (a pair source).
    """
    e, d = config.eval, config.data
    batches = list(packed_data.pass_batches(heldout, encoder_cfg, d))
    groups = pair_groups(heldout.records)
    logps_fn = jax.jit(functools.partial(step_lib.policy_logps_step, module=module))
    gen = None
    if e.generation and files.heldout_queries:
        queries = load_queries(files.heldout_queries, media_root=files.media_root,
                               media_cache=files.media_cache)[: e.num_queries]
        encoder = ExampleEncoder(encoder_cfg)
        media_root = files.media_root or storage.dirname(files.heldout_queries)
        prompts = [encode_prompt(encoder, q, media_root=media_root) for q in queries]
        generator = Generator(module, cached_tokenizer(files.tokenizer), mesh, max_new_tokens=e.max_new_tokens,
                              batch_size=d.eval_batch_size,
                              param_shardings=hf.param_shardings(module, mesh, SAMPLING_RULES))
        gen = (queries, prompts, generator)

    def eval_fn(params):
        ratios = []  # (source index, policy - reference log-probs) per pair
        for batch, index in batches:
            pol = placement.fetch(logps_fn(params, placement.put_global_batch(batch, mesh)))
            ratios.append((index, (pol - cache.lookup(batch)).reshape(-1, 2)))
        ratios = packed_data.in_source_order(ratios, len(heldout))
        chosen, rejected = ratios[:, 0], ratios[:, 1]
        out = {"preference_accuracy": implicit_reward_accuracy(chosen, rejected),
               "reward_margin": float(np.mean(config.dpo.beta * (chosen - rejected))),
               "num_heldout_pairs": int(len(chosen)),
               # nested dicts stay out of TensorBoard and the one-line summary; metrics.jsonl keeps them
               "preference_accuracy_by": {k: accuracy_by(g, chosen, rejected) for k, g in groups.items()}}
        if gen is not None:
            queries, prompts, generator = gen
            texts = generator.texts(params, prompts, progress="generation eval")
            correct = generation.answer_correct(texts, queries, e.answer_checker)
            out["greedy_accuracy"] = float(np.mean(correct))
            out["greedy_accuracy_by_category"] = generation.accuracy_by_category(correct, queries)
            out["greedy_examples"] = [{"prompt": q.prompt, "answer": t} for q, t in zip(queries[:4], texts[:4])]
        return out

    return eval_fn


def run(config: ml_collections.ConfigDict, workdir: str):
    with phase.run_context(config, workdir) as ctx:
        mesh, d = ctx.mesh, config.data
        files = pair_data.prepare_files(d, config.model.init_from, workdir)
        module, identity = model_factory.build(config.model, config.seed)
        encoder_cfg = pair_data.encoder_config(d, files.tokenizer, module.config, config.model.init_from,
                                               "preference")
        train_src = JsonlPairSource(files.train_pairs, include_ties=False, media_root=files.media_root,
                                    media_cache=files.media_cache)
        beta_lib.check_pairs(config.dpo.beta_mode, train_src.records)  # before any compute: no silent fallback
        heldout_src = JsonlPairSource(files.heldout_pairs, include_ties=False, media_root=files.media_root,
                                      media_cache=files.media_cache)
        identity = {**identity, **sft.pair_identity(config.warm_start, config.model.trainable, files.train_pairs)}
        ws_encoder = pair_data.encoder_config(d, files.tokenizer, module.config, config.model.init_from,
                                              "preference", max_length=config.warm_start.max_length)

        def params_fn():  # the initial policy (= the reference): loaded or random, then warm-started
            params = model_factory.initial_params(config.model, module, mesh, ctx.rules, config.seed)
            return sft.on_pairs(ctx, module, params, train_src, ws_encoder, config.warm_start,
                                batch_size=d.batch_size, num_workers=d.num_workers,
                                trainable=model_factory.TRAINABLE.get(config.model.trainable))

        # Reference log-probs (the initial policy is the reference).
        cache_dir = config.dpo.reference_cache_dir or ctx.path("reference_cache")
        cache = reference_cache.ReferenceCache(cache_dir, reference_cache.reference_id(identity))
        logps_fn = jax.jit(functools.partial(step_lib.policy_logps_step, module=module))
        fresh = not phase.has_checkpoint(workdir)
        params = params_fn() if fresh else None
        reference_cache.fill(cache, logps_fn, (lambda: params) if fresh else params_fn, [train_src, heldout_src],
                             encoder_cfg, d, mesh)

        data_iter = WithReference(packed_data.train_iterator(train_src, encoder_cfg, d, mesh), cache)
        eval_fn = make_eval_fn(module, files, heldout_src, encoder_cfg, cache, config, mesh)
        t = config.train
        result = phase.train_params(
            workdir, ctx, spec.train_step(config, module, mesh, ctx.rules), lambda: params, data_iter,
            seed=config.seed + 1, steps=t.steps, log_every=t.log_every, checkpoint_every=t.checkpoint_every,
            max_to_keep=t.max_checkpoints, eval_fn=eval_fn, eval_every=t.eval_every, initial_eval="initial_eval.json",
            writer=ctx.writer)
        drop = lambda m: {k: v for k, v in m.items() if k != "greedy_examples"}
        out = {**drop(result.final), **{f"initial_{k}": v for k, v in drop(result.initial).items()},
               "steps": t.steps, **beta_lib.describe(config.dpo)}
        phase.report("mm_dpo", out, ctx.writer)
    return out
