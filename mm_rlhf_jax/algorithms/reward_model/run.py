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

import jax
import ml_collections

from mm_rlhf_jax.algorithms.reward_model import step as step_lib
from mm_rlhf_jax.algorithms.reward_model.inference import RewardModelInference
from mm_rlhf_jax.algorithms.reward_model.score import score_file
from mm_rlhf_jax.data import pipeline
from mm_rlhf_jax.data.sources import JsonlPairSource
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.evals.preference import accuracy_by, pair_groups
from mm_rlhf_jax.evals.rewardbench import rewardbench_metrics
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.models.heads import ModelWithHeads, RewardHead
from mm_rlhf_jax.sharding import SAMPLING_RULES
from mm_rlhf_jax.train import model_factory, pair_data, phase, sft
from mm_rlhf_jax.train.optim import make_optimizer

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


def make_eval_fn(inference: RewardModelInference, files, critique: bool):
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


def run(config: ml_collections.ConfigDict, workdir: str):
    if config.reward.mode not in MODES:
        raise ValueError(f"reward.mode={config.reward.mode!r}; use one of {sorted(MODES)}")
    critique = config.reward.mode == "critique"
    with phase.run_context(config, workdir) as ctx:
        mesh, d, t = ctx.mesh, config.data, config.train
        files = pair_data.prepare_files(d, config.model.init_from, workdir)
        module, _ = build_module(config)
        encoder_cfg = pair_data.encoder_config(d, files.tokenizer, module.trunk.config, config.model.init_from,
                                               MODES[config.reward.mode])
        train_src = JsonlPairSource(files.train_pairs, include_ties=True, media_root=files.media_root)
        train_cfg = pair_data.train_pipeline(d.batch_size, mesh, seed=d.seed, num_workers=d.num_workers)
        data_iter = pipeline.make_iterator(train_src, encoder_cfg, train_cfg)
        # The warm start fits the answers themselves ("preference" sequences: the policy prompt, not the
        # critic prompt), like the SFT model the paper's RM is initialised from.
        ws_encoder = pair_data.encoder_config(d, files.tokenizer, module.trunk.config, config.model.init_from,
                                              "preference", max_length=config.warm_start.max_length)
        warm = lambda trunk: sft.on_pairs(ctx, module.trunk, trunk, train_src, ws_encoder, config.warm_start,
                                          batch_size=d.batch_size, num_workers=d.num_workers,
                                          trainable=model_factory.TRAINABLE.get(config.model.trainable))
        inference = RewardModelInference(module, encoder_cfg, cached_tokenizer(files.tokenizer), mesh,
                                         max_new_tokens=config.reward.max_critique_tokens,
                                         batch_size=d.eval_batch_size,
                                         param_shardings=hf.param_shardings(module, mesh, SAMPLING_RULES))
        result = phase.train_params(
            workdir, ctx, module, lambda: initial_params(config, module, mesh, ctx.rules, warm_start_fn=warm),
            functools.partial(step_lib.train_step, c=config.reward, critique=critique), data_iter,
            make_optimizer(config.optim, t.steps), trainable=model_factory.TRAINABLE.get(config.model.trainable),
            seed=config.seed + 1, steps=t.steps, log_every=t.log_every, checkpoint_every=t.checkpoint_every,
            max_to_keep=t.max_checkpoints, eval_fn=make_eval_fn(inference, files, critique),
            eval_every=t.eval_every, writer=ctx.writer)
        scored = score_file(inference, result.state.params, config.score, critique=critique) \
            if config.score.input else None
        out = {k: v for k, v in result.final.items() if k != "critique_examples"}
        out.update(steps=t.steps, mode=config.reward.mode)
        if scored:
            out["scored_file"] = scored
        phase.report("reward_model", out, ctx.writer)
    return out
