"""MM-DPO run: data + model + cached reference log-probs + the jitted step + the host loop + evals.

    python -m mm_rlhf_jax.main --config configs/mm_dpo.py:tiny --workdir runs/quickstart

Order of work (every stage is skipped when its output already exists, so
re-running the same command resumes):
  1. data: the pair files (synthetic ones are generated into the workdir);
  2. optional supervised warm start on the best-ranked responses (tiny
     presets: the stand-in for the paper's SFT'd LLaVA-OV; see warm_start.py);
  3. reference log-probs of every train and held-out pair with the initial
     policy (= the reference), cached on disk by content hash;
  4. the train state (restored from the latest checkpoint, or created);
  5. the held-out evaluation of the initial policy (initial_eval.json);
  6. training, with periodic evals and checkpoints;
  7. the final evaluation, written to eval.json and printed.
"""

import functools
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mm_rlhf_jax.data import pipeline
from mm_rlhf_jax.data.example import ExampleEncoder
from mm_rlhf_jax.data.prompts import encode_prompt
from mm_rlhf_jax.data.sources import JsonlPairSource
from mm_rlhf_jax.data.tokenizer import cached_tokenizer, special_ids
from mm_rlhf_jax.data.validation import load_queries
from mm_rlhf_jax.evals import generation
from mm_rlhf_jax.evals.preference import accuracy_by, implicit_reward_accuracy, pair_groups
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.sharding import TRAIN_RULES, make_mesh, replicated
from mm_rlhf_jax.train import (checkpoint, data_setup, dpo_step, loop, metrics as metrics_lib, model_factory,
                               reference_cache, setup, warm_start)


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


def fill_reference_cache(cache, logps_fn, params_fn, sources, encoder_cfg, batch_size, mesh) -> None:
    """Computes and stores reference log-probs for every uncached pair of `sources`."""
    params = None
    added = 0
    for source in sources:
        for batch, n in data_setup.padded_batches(source, encoder_cfg, batch_size):
            keys = reference_cache.example_keys(batch)[:n]
            if all(k in cache for k in keys):
                continue
            if params is None:
                logging.info("computing reference log-probs into %s", cache.path)
                params = params_fn()
            logps = jax.device_get(logps_fn(params, data_setup.put_batch(batch, mesh)))
            cache.add(keys, np.asarray(logps)[:n])
            added += n
    if added:
        cache.save()
        logging.info("cached reference log-probs for %d pairs", added)


def make_eval_fn(module, files, heldout, encoder_cfg, cache, c: ml_collections.ConfigDict, mesh):
    """eval_fn(params) -> flat metrics: held-out implicit-reward accuracy (+ greedy answer accuracy).

    heldout: the held-out non-tie pairs (a pair source).
    """
    batches = list(data_setup.padded_batches(heldout, encoder_cfg, c.data.eval_batch_size))
    groups = pair_groups(heldout.records)
    logps_fn = jax.jit(functools.partial(dpo_step.policy_logps_step, module=module))
    gen = None
    if c.eval.generation and files.heldout_queries:
        queries = load_queries(files.heldout_queries, media_root=files.media_root)[: c.eval.num_queries]
        encoder = ExampleEncoder(encoder_cfg)
        media_root = files.media_root or os.path.dirname(os.path.abspath(files.heldout_queries))
        encoded = [encode_prompt(encoder, q, media_root=media_root) for q in queries]
        tok = cached_tokenizer(files.tokenizer)
        generate = generation.make_generate(module, max_new_tokens=c.eval.max_new_tokens,
                                            stop_ids=[special_ids(tok).eos])
        gen = (queries, encoded, tok, generate)

    def eval_fn(params):
        chosen, rejected = [], []
        for batch, n in batches:
            pol = np.asarray(jax.device_get(logps_fn(params, data_setup.put_batch(batch, mesh))))[:n]
            ref = cache.lookup(batch)[:n]
            chosen.append(pol[:, 0] - ref[:, 0])
            rejected.append(pol[:, 1] - ref[:, 1])
        chosen, rejected = np.concatenate(chosen), np.concatenate(rejected)
        out = {"preference_accuracy": implicit_reward_accuracy(chosen, rejected),
               "reward_margin": float(np.mean(c.dpo.beta * (chosen - rejected))),
               "num_heldout_pairs": int(len(chosen)),
               # nested dicts stay out of TensorBoard and the one-line summary; metrics.jsonl keeps them
               "preference_accuracy_by": {k: accuracy_by(g, chosen, rejected) for k, g in groups.items()}}
        if gen is not None:
            queries, encoded, tok, generate = gen
            texts = generation.generate_texts(generate, params, encoded, tok, batch_size=c.data.eval_batch_size,
                                              put=lambda b: data_setup.put_batch(b, mesh))
            correct = generation.answer_correct(texts, queries, c.eval.answer_checker)
            out["greedy_accuracy"] = float(np.mean(correct))
            out["greedy_accuracy_by_category"] = generation.accuracy_by_category(correct, queries)
            out["greedy_examples"] = [{"prompt": q.prompt, "answer": t} for q, t in zip(queries[:4], texts[:4])]
        return out

    return eval_fn


def run(config: ml_collections.ConfigDict, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    mesh = make_mesh(config.mesh.to_dict())
    rules = TRAIN_RULES
    writer = metrics_lib.MetricWriter(workdir)
    setup.save_config(config, writer)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        files = data_setup.prepare_files(config.data, config.model, workdir)
        module, identity = model_factory.build(config.model, config.seed)
        encoder_cfg = data_setup.encoder_config(config.data, files, module.config, config.model, "preference")
        train_src = JsonlPairSource(files.train_pairs, include_ties=False, media_root=files.media_root)
        heldout_src = JsonlPairSource(files.heldout_pairs, include_ties=False, media_root=files.media_root)
        batch_size = data_setup.per_host_batch(config.data.batch_size, mesh)
        identity = {**identity, **warm_start.identity(config, files.train_pairs)}

        def params_fn():  # the initial policy (= the reference): loaded or random, then warm-started
            params = model_factory.initial_params(config.model, module, mesh, rules, config.seed)
            if config.warm_start.steps:
                params = warm_start.run_warm_start(os.path.join(workdir, "warm_start"), config, module, params,
                                                   train_src, encoder_cfg, mesh, rules)
            return params

        # Reference log-probs (the initial policy is the reference).
        cache_dir = config.dpo.reference_cache_dir or os.path.join(workdir, "reference_cache")
        cache = reference_cache.ReferenceCache(cache_dir, reference_cache.reference_id(identity))
        logps_fn = jax.jit(functools.partial(dpo_step.policy_logps_step, module=module))
        ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.train.max_checkpoints)
        fresh = ckpt.latest_step() is None
        params = params_fn() if fresh else None
        fill_reference_cache(cache, logps_fn, (lambda: params) if fresh else params_fn, [train_src, heldout_src],
                             encoder_cfg, data_setup.per_host_batch(config.data.eval_batch_size, mesh), mesh)

        train_cfg = pipeline.PipelineConfig(batch_size=batch_size, seed=config.data.seed, num_epochs=None,
                                            num_workers=config.data.num_workers)
        data_iter = WithReference(pipeline.make_iterator(train_src, encoder_cfg, train_cfg), cache)
        state, tx, mask, shardings = setup.init_or_restore(
            config, hf.abstract_params(module), lambda: params, mesh, rules, ckpt, data_iter)
        del params

        eval_fn = make_eval_fn(module, files, heldout_src, encoder_cfg, cache, config, mesh)
        initial = writer.json_once("initial_eval.json", lambda: eval_fn(state.params))

        step = functools.partial(dpo_step.dpo_train_step, module=module, tx=tx, mask=mask, c=config.dpo)
        put = lambda batch: data_setup.put_batch(batch, mesh)
        jit_step = jax.jit(step, out_shardings=(shardings, replicated(mesh)), donate_argnames=("state",))
        state, final = loop.run_loop(
            state=state, step_fn=jit_step, data_iter=data_iter, put_batch=put, total_steps=config.train.steps,
            checkpointer=ckpt, writer=writer, eval_fn=lambda s: eval_fn(s.params), log_every=config.train.log_every,
            eval_every=config.train.eval_every, checkpoint_every=config.train.checkpoint_every)
    result = {**{k: v for k, v in final.items() if k != "greedy_examples"},
              **{f"initial_{k}": v for k, v in initial.items() if k != "greedy_examples"},
              "steps": config.train.steps}
    setup.report("mm_dpo", result, writer)
    writer.close()
    ckpt.close()
    return result
