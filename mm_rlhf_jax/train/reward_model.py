"""Critique-based reward model run (MM-RLHF §3.2): train, evaluate in RewardBench format, score pairs.

    python -m mm_rlhf_jax.main --config configs/reward_model.py:tiny --workdir runs/rm
    # then write each pair's reward margin delta next to the pair records (for MM-DPO's dynamic beta):
    python -m mm_rlhf_jax.main --config configs/reward_model.py:tiny --workdir runs/rm \\
        --config.score.input=pairs.jsonl --config.score.output=pairs_scored.jsonl

The model is the policy trunk (LLaVA-OV or a text LM) with a fresh RewardHead;
`reward.mode` = "critique" (critique NLL + scoring, the paper's model) or
"scalar" (the scalar-only ablation: no critique anywhere). Evaluation reports
ACC / ACC+ overall and per category with generated critiques (real inference),
and with the ground-truth critiques (the teacher-forced upper bound).
"""

import functools
import json
import logging
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mm_rlhf_jax.data import pipeline
from mm_rlhf_jax.data.sources import JsonlPairSource
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.data.validation import load_pairs, write_jsonl
from mm_rlhf_jax.evals.rewardbench import rewardbench_metrics
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.models.heads import ModelWithHeads, RewardHead
from mm_rlhf_jax.sharding import TRAIN_RULES, make_mesh, replicated
from mm_rlhf_jax.train import (checkpoint, data_setup, loop, metrics as metrics_lib, model_factory, rm_inference,
                               rm_step, setup)

MODES = {"critique": "reward", "scalar": "reward_scalar"}  # reward.mode -> encoder kind


def build_module(config):
    trunk, identity = model_factory.build(config.model, config.seed)
    text = getattr(trunk.config, "text", trunk.config)
    head = RewardHead(text.hidden_size, dropout_rate=config.reward.head_dropout, dtype=text.dtype,
                      param_dtype=text.param_dtype, initializer_range=text.initializer_range)
    return ModelWithHeads(trunk=trunk, reward_head=head), identity


def initial_params(config, module: ModelWithHeads, mesh, rules):
    """Trunk from model.init_from (or seeded random init) plus a freshly initialised reward head."""
    params = hf.init_params(module, jax.random.PRNGKey(config.seed), mesh, rules)
    if config.model.init_from:
        params["trunk"] = model_factory.initial_params(config.model, module.trunk, mesh, rules, config.seed)
    return params


def category_names(records):
    return [r.resolved_category() or "unknown" for r in records]


def make_eval_fn(module, files, encoder_cfg, config, mesh):
    heldout = [r for r in load_pairs(files.heldout_pairs, media_root=files.media_root) if not r.is_tie]
    media_root = files.media_root or os.path.dirname(os.path.abspath(files.heldout_pairs))
    qids = JsonlPairSource(files.heldout_pairs, include_ties=False, media_root=files.media_root)
    query_ids = [qids[i]["query_id"] for i in range(len(qids))]
    cats = category_names(heldout)
    tok = cached_tokenizer(files.tokenizer)
    batch_size = data_setup.per_host_batch(config.data.eval_batch_size, mesh)

    def eval_fn(params):
        out = {}
        if config.reward.mode == "critique":
            rewards, generated = rm_inference.critique_then_score(
                module, params, heldout, encoder_cfg, tok, media_root=media_root, batch_size=batch_size,
                max_new_tokens=config.reward.max_critique_tokens, mesh=mesh)
            gt = rm_inference.score_records(module, params, heldout, encoder_cfg, media_root=media_root,
                                            batch_size=batch_size, mesh=mesh)
            out.update({f"{k}_gt_critique": v for k, v in rewardbench_metrics(query_ids, cats, gt[:, 0],
                                                                                gt[:, 1]).items()})
            out["critique_examples"] = [{"answer": g.chosen, "critique": g.chosen_reason} for g in generated[:3]]
        else:
            rewards = rm_inference.score_records(module, params, heldout, encoder_cfg, media_root=media_root,
                                                 batch_size=batch_size, mesh=mesh)
        out.update(rewardbench_metrics(query_ids, cats, rewards[:, 0], rewards[:, 1]))
        return out

    return eval_fn


def score_file(module, params, config, encoder_cfg, files, mesh) -> str:
    """Scores every pair of config.score.input; writes the records plus delta (and rewards/critiques)."""
    src = config.score.input
    records = load_pairs(src, media_root=config.score.media_root or None)
    media_root = config.score.media_root or os.path.dirname(os.path.abspath(src))
    batch_size = data_setup.per_host_batch(config.data.eval_batch_size, mesh)
    tok = cached_tokenizer(files.tokenizer)
    if config.reward.mode == "critique":
        rewards, generated = rm_inference.critique_then_score(
            module, params, records, encoder_cfg, tok, media_root=media_root, batch_size=batch_size,
            max_new_tokens=config.reward.max_critique_tokens, mesh=mesh)
    else:
        rewards = rm_inference.score_records(module, params, records, encoder_cfg, media_root=media_root,
                                             batch_size=batch_size, mesh=mesh)
        generated = [None] * len(records)
    rows = []
    for rec, (rc, rr), gen in zip(records, rewards, generated):
        row = {**rec.to_json(), "delta": float(rc - rr), "chosen_reward": float(rc), "rejected_reward": float(rr)}
        if gen is not None:
            row["chosen_generated_critique"] = gen.chosen_reason
            row["rejected_generated_critique"] = gen.rejected_reason
        rows.append(row)
    out = config.score.output or os.path.splitext(src)[0] + "_scored.jsonl"
    if jax.process_index() == 0:
        tmp = out + ".tmp"
        write_jsonl(tmp, rows)
        os.replace(tmp, out)
    logging.info("wrote %d scored pairs to %s", len(rows), out)
    return out


def run(config: ml_collections.ConfigDict, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    mesh, rules = make_mesh(config.mesh.to_dict()), TRAIN_RULES
    writer = metrics_lib.MetricWriter(workdir)
    setup.save_config(config, writer)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        files = data_setup.prepare_files(config.data, config.model, workdir)
        module, _ = build_module(config)
        encoder_cfg = data_setup.encoder_config(config.data, files, module.trunk.config, config.model,
                                                MODES[config.reward.mode])
        train_src = JsonlPairSource(files.train_pairs, include_ties=True, media_root=files.media_root)
        batch_size = data_setup.per_host_batch(config.data.batch_size, mesh)
        train_cfg = pipeline.PipelineConfig(batch_size=batch_size, seed=config.data.seed, num_epochs=None,
                                            num_workers=config.data.num_workers)
        data_iter = pipeline.make_iterator(train_src, encoder_cfg, train_cfg)
        ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.train.max_checkpoints)
        state, tx, mask, shardings = setup.init_or_restore(
            config, hf.abstract_params(module), lambda: initial_params(config, module, mesh, rules), mesh, rules,
            ckpt, data_iter)
        eval_fn = make_eval_fn(module, files, encoder_cfg, config, mesh)
        c = config.reward.copy_and_resolve_references()
        if config.reward.mode == "scalar":
            c.critique_weight = 0.0  # no critique tokens in the sequences
        step = functools.partial(rm_step.rm_train_step, module=module, tx=tx, mask=mask, c=c)
        jit_step = jax.jit(step, out_shardings=(shardings, replicated(mesh)), donate_argnames=("state",))
        state, final = loop.run_loop(
            state=state, step_fn=jit_step, data_iter=data_iter, put_batch=lambda b: data_setup.put_batch(b, mesh),
            total_steps=config.train.steps, checkpointer=ckpt, writer=writer, eval_fn=lambda s: eval_fn(s.params),
            log_every=config.train.log_every, eval_every=config.train.eval_every,
            checkpoint_every=config.train.checkpoint_every)
        scored = score_file(module, state.params, config, encoder_cfg, files, mesh) if config.score.input else None
    result = {k: v for k, v in final.items() if k != "critique_examples"}
    result.update(steps=config.train.steps, mode=config.reward.mode)
    if scored:
        result["scored_file"] = scored
    setup.report("reward_model", result, writer)
    writer.close()
    ckpt.close()
    return result
