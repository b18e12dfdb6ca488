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
import logging
import os

import flax.linen as nn
import jax
import ml_collections

from mm_rlhf_jax.data import pipeline
from mm_rlhf_jax.data.sources import JsonlPairSource
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.data.validation import load_pairs, read_jsonl, write_jsonl
from mm_rlhf_jax.evals.preference import accuracy_by, pair_groups
from mm_rlhf_jax.evals.rewardbench import rewardbench_metrics
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.models.heads import ModelWithHeads, RewardHead
from mm_rlhf_jax.sharding import TRAIN_RULES, make_mesh, replicated
from mm_rlhf_jax.train import (checkpoint, data_setup, loop, metrics as metrics_lib, model_factory, rm_inference,
                               rm_step, setup, warm_start)

MODES = {"critique": "reward", "scalar": "reward_scalar"}  # reward.mode -> encoder kind


def build_module(config):
    trunk, identity = model_factory.build(config.model, config.seed)
    text = getattr(trunk.config, "text", trunk.config)
    head = RewardHead(text.hidden_size, dropout_rate=config.reward.head_dropout, dtype=text.dtype,
                      param_dtype=text.param_dtype, initializer_range=text.initializer_range)
    return ModelWithHeads(trunk=trunk, reward_head=head), identity


def initial_params(config, module: ModelWithHeads, mesh, rules, *, warm_start_fn=None):
    """Trunk from model.init_from (or seeded random init) plus a freshly initialised reward head.

    warm_start_fn(trunk_params) -> trunk_params, when given, fine-tunes the trunk
    before the head ever trains (the paper's RM starts from an SFT'd VLM).
    """
    params = hf.init_params(module, jax.random.PRNGKey(config.seed), mesh, rules)
    if config.model.init_from:
        params["trunk"] = model_factory.initial_params(config.model, module.trunk, mesh, rules, config.seed)
    if warm_start_fn is not None:
        params["trunk"] = warm_start_fn(params["trunk"])
    return params


def make_warm_start_fn(config, module: ModelWithHeads, files, train_src, workdir, mesh, rules):
    """None, or trunk_params -> supervised warm start of the trunk on the best-ranked responses.

    The warm start fits the answers themselves ("preference" sequences: the
    policy prompt, not the critic prompt), like the SFT model the paper's RM is
    initialised from; `reward.warm_start_max_length` bounds those sequences.
    """
    if not config.warm_start.steps:
        return None
    data = config.data.copy_and_resolve_references()
    data.max_length = config.reward.warm_start_max_length or data.max_length
    encoder_cfg = data_setup.encoder_config(data, files, module.trunk.config, config.model, "preference")
    directory = os.path.join(workdir, "warm_start")
    return lambda trunk_params: warm_start.run_warm_start(directory, config, module.trunk, trunk_params, train_src,
                                                          encoder_cfg, mesh, rules)


def make_inference(module, files, encoder_cfg, config, mesh) -> rm_inference.RewardModelInference:
    return rm_inference.RewardModelInference(
        module, encoder_cfg, cached_tokenizer(files.tokenizer), max_new_tokens=config.reward.max_critique_tokens,
        batch_size=data_setup.per_host_batch(config.data.eval_batch_size, mesh), mesh=mesh)


def make_eval_fn(inference: rm_inference.RewardModelInference, files, config):
    """eval_fn(params) -> RewardBench metrics on the held-out non-tie pairs.

    Critique mode: acc/acc_plus[/category] with generated critiques (the real
    inference path) and the same keys suffixed _gt_critique with the teacher
    critiques (the teacher-forced upper bound). Scalar mode: the plain keys.
    """
    source = JsonlPairSource(files.heldout_pairs, include_ties=False, media_root=files.media_root)
    heldout = source.records
    query_ids = [source[i]["query_id"] for i in range(len(source))]
    groups = pair_groups(heldout)
    cats, ranks = groups["category"], groups["ranks"]  # ranks: "0v1" = best vs second-best, ...
    critique = config.reward.mode == "critique"

    def eval_fn(params):
        out = {}
        rewards, generated = inference.rewards(params, heldout, media_root=source.media_root, generate=critique)
        if critique:
            gt = inference.score_records(params, heldout, media_root=source.media_root)
            out.update({f"{k}_gt_critique": v for k, v in rewardbench_metrics(query_ids, cats, gt[:, 0],
                                                                                gt[:, 1]).items()})
            out["critique_examples"] = [{"answer": g.chosen, "critique": g.chosen_reason} for g in generated[:3]]
        out.update(rewardbench_metrics(query_ids, cats, rewards[:, 0], rewards[:, 1]))
        out["acc_by_ranks"] = accuracy_by(ranks, rewards[:, 0], rewards[:, 1])  # nested: eval.json only
        return out

    return eval_fn


def score_file(inference: rm_inference.RewardModelInference, params, config) -> str:
    """Scores every pair of config.score.input; writes each input line's object plus the RM's fields.

    Added: delta = chosen_reward - rejected_reward (the margin MM-DPO's dynamic
    beta reads), both rewards, the generated critiques (critique mode), and
    source_delta (an input's own delta, when it had one).
    """
    src = config.score.input
    records = load_pairs(src, media_root=config.score.media_root or None)
    media_root = config.score.media_root or os.path.dirname(os.path.abspath(src))
    rewards, generated = inference.rewards(params, records, media_root=media_root,
                                           generate=config.reward.mode == "critique")
    generated = generated or [None] * len(records)
    # Rows start from the raw JSON objects, so fields this library does not parse survive scoring.
    raw = [obj for _, obj in read_jsonl(src)]
    rows = []
    for obj, (rc, rr), gen in zip(raw, rewards, generated):
        row = dict(obj)
        if "delta" in row:  # a margin from elsewhere (e.g. annotator scores): kept, but delta is now ours
            row["source_delta"] = row["delta"]
        row.update(delta=float(rc - rr), chosen_reward=float(rc), rejected_reward=float(rr))
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
    if config.reward.mode not in MODES:
        raise ValueError(f"reward.mode={config.reward.mode!r}; use one of {sorted(MODES)}")
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
        warm_fn = make_warm_start_fn(config, module, files, train_src, workdir, mesh, rules)
        state, tx, mask, shardings = setup.init_or_restore(
            config, hf.abstract_params(module), lambda: initial_params(config, module, mesh, rules,
                                                                       warm_start_fn=warm_fn),
            mesh, rules, ckpt, data_iter)
        inference = make_inference(module, files, encoder_cfg, config, mesh)
        eval_fn = make_eval_fn(inference, files, config)
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
        scored = score_file(inference, state.params, config) if config.score.input else None
    result = {k: v for k, v in final.items() if k != "critique_examples"}
    result.update(steps=config.train.steps, mode=config.reward.mode)
    if scored:
        result["scored_file"] = scored
    setup.report("reward_model", result, writer)
    writer.close()
    ckpt.close()
    return result
