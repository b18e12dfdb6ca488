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

import jax
import ml_collections

from mm_rlhf_jax.algorithms.reward_model import spec
from mm_rlhf_jax.algorithms.reward_model.spec import MODES, build_module
from mm_rlhf_jax.algorithms.reward_model.inference import RewardModelInference
from mm_rlhf_jax.algorithms.reward_model.score import score_file
from mm_rlhf_jax.data.sources import JsonlPairSource
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.evals.preference import accuracy_by, pair_groups
from mm_rlhf_jax.evals.rewardbench import rewardbench_metrics
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.models.heads import ModelWithHeads
from mm_rlhf_jax.sharding import SAMPLING_RULES, placement
from mm_rlhf_jax.train import model_factory, packed_data, pair_data, phase, reference_cache, sft

HEAD_INITS = ("auto", "fresh", "checkpoint")


def head_source(config) -> str:
    """"checkpoint" or "fresh": where the RewardHead starts under reward.head_init (see config_lib)."""
    mode, path = config.reward.head_init, config.model.init_from
    if mode not in HEAD_INITS:
        raise ValueError(f"reward.head_init={mode!r}; use one of {HEAD_INITS}")
    has = bool(path) and mode != "fresh" and hf.load_reward_head(path) is not None
    if mode == "checkpoint" and not has:
        raise ValueError(f"reward.head_init='checkpoint' but model.init_from={path!r} has no reward head (rm_head.* "
                         f"weights or {hf.REWARD_HEAD_FILE}); use head_init='fresh' to train a new one")
    return "checkpoint" if has else "fresh"


def initial_params(config, module: ModelWithHeads, mesh, rules, *, warm_start_fn=None):
    """Trunk from model.init_from (or seeded random init) plus the reward head (head_source: loaded or fresh).

    warm_start_fn(trunk_params) -> trunk_params, when given, fine-tunes the trunk
    before the head ever trains (the paper's RM starts from an SFT'd VLM).
    """
    params = hf.init_params(module, jax.random.PRNGKey(config.seed), mesh, rules)
    if config.model.init_from:
        params["trunk"] = model_factory.initial_params(config.model, module.trunk, mesh, rules, config.seed)
    if head_source(config) == "checkpoint":
        loaded = hf.load_reward_head(config.model.init_from)
        fresh = params["reward_head"]
        shapes = jax.tree.map(lambda x: x.shape, fresh), jax.tree.map(lambda x: x.shape, loaded)
        if shapes[0] != shapes[1]:
            raise ValueError(f"{config.model.init_from}: reward head shapes {shapes[1]} do not match the model's "
                             f"{shapes[0]}")
        params["reward_head"] = jax.tree.map(
            lambda f, x: placement.put_from_callback(f.shape, f.sharding, lambda index, x=x: x[index].astype(f.dtype)),
            fresh, loaded)
    if warm_start_fn is not None:
        params["trunk"] = warm_start_fn(params["trunk"])
    return params


def make_eval_fn(inference: RewardModelInference, files, critique: bool):
    """eval_fn(params) -> RewardBench metrics on the held-out non-tie pairs.

    Critique mode: acc/acc_plus[/category] with generated critiques (the real
    inference path) and the same keys suffixed _gt_critique with the teacher
    critiques (the teacher-forced upper bound). Scalar mode: the plain keys.
    """
    source = JsonlPairSource(files.heldout_pairs, include_ties=False, media_root=files.media_root,
                             media_cache=files.media_cache)
    heldout = source.records
    query_ids = [source[i]["query_id"] for i in range(len(source))]
    groups = pair_groups(heldout)
    cats, ranks = groups["category"], groups["ranks"]  # ranks: "0v1" = best vs second-best, ...

    def eval_fn(params):
        out = {}
        rewards, generated = inference.rewards(params, heldout, media_root=source.media_root, generate=critique,
                                               progress="rm eval")
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
        train_src = JsonlPairSource(files.train_pairs, include_ties=True, media_root=files.media_root,
                                    media_cache=files.media_cache)
        data_iter = packed_data.train_iterator(train_src, encoder_cfg, d, mesh)  # [B, 2, T] or packed rows
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
            workdir, ctx, spec.train_step(config, module, mesh, ctx.rules),
            lambda: initial_params(config, module, mesh, ctx.rules, warm_start_fn=warm), data_iter,
            seed=config.seed + 1, steps=t.steps, log_every=t.log_every, checkpoint_every=t.checkpoint_every,
            max_to_keep=t.max_checkpoints, eval_fn=make_eval_fn(inference, files, critique),
            eval_every=t.eval_every, writer=ctx.writer)
        scored = None
        if config.score.input:
            # Parts of an earlier scoring pass are reused only by the same model (config and steps).
            model = {k: v for k, v in config.to_dict().items() if k != "score"}
            # The pair file to score is usually one of this dataset's (a split's train file keeps its media
            # paths relative to the release folder), so its media resolve where the run's data's do.
            scored = score_file(inference, result.state.params, config.score, critique=critique, workdir=workdir,
                                identity={"model": reference_cache.reference_id(model)},
                                media_root=d.media_root).path
        out = {k: v for k, v in result.final.items() if k != "critique_examples"}
        out.update(steps=t.steps, mode=config.reward.mode, reward_head_init=head_source(config))
        if scored:
            out["scored_file"] = scored
        phase.report("reward_model", out, ctx.writer)
    return out
