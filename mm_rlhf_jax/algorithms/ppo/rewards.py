"""The reward side of an RL run: the GenRM judge and the hybrid reward router (PPO and Align-Pro)."""

import ml_collections

from mm_rlhf_jax.data.synthetic import reasoning
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.rewards.genrm import GenRM, GenRMConfig
from mm_rlhf_jax.rewards.router import RewardContext, RewardRouter
from mm_rlhf_jax.sharding import SAMPLING_RULES, placement
from mm_rlhf_jax.train import model_factory, phase, sft


def build_genrm(config: ml_collections.ConfigDict, ctx: phase.RunContext, tokenizer: str) -> GenRM | None:
    """The GenRM judge (or None): a local checkpoint, or a tiny judge trained on synthetic verdicts.

    A checkpoint is loaded straight into the sampling layout; the tiny judge is
    trained (ctx.workdir/genrm, the policy's tiny architecture, seed + 7) with
    the run's `tokenizer`, then resharded into it once.
    """
    g = config.genrm
    if not g.enabled:
        return None
    cfg = GenRMConfig(template=g.template, max_new_tokens=g.max_new_tokens, max_prompt_length=g.max_prompt_length,
                      batch_size=g.batch_size, failure_value=g.failure_value)
    if g.init_from:
        module, params = model_factory.pretrained(g.init_from, config.model, ctx.mesh, SAMPLING_RULES)
        return GenRM.build(module, params, cached_tokenizer(g.tokenizer or g.init_from), ctx.mesh, cfg)
    tok = cached_tokenizer(g.tokenizer or tokenizer)
    module, _ = model_factory.build(config.model, config.seed + 7)
    params = model_factory.initial_params(config.model, module, ctx.mesh, ctx.rules, config.seed + 7)
    w = g.warm_start
    demos = sft.text_demos(tok, reasoning.judge_conversations(w.num_examples, w.seed, g.template), w.max_length)
    batches = sft.ArrayBatches.for_mesh(demos, w.batch_size, w.seed, ctx.mesh)
    params = sft.run(ctx.path("genrm"), ctx, module, params, batches, w)
    params = placement.reshard(params, hf.param_shardings(module, ctx.mesh, SAMPLING_RULES))
    return GenRM.build(module, params, tok, ctx.mesh, cfg)


def build_router(r: ml_collections.ConfigDict, genrm: GenRM | None) -> RewardRouter:
    """The router of the `reward` block r; GenRM sources are left out when there is no judge."""
    ctx = RewardContext(verifiers=dict(r.verifiers), genrm=genrm, num_workers=r.num_workers)
    order = tuple(s.strip() for s in r.order.split(",") if s.strip())
    order = tuple(s for s in order if s == "verifier" or genrm is not None or not s.startswith("genrm"))
    return RewardRouter(ctx, order, {k: tuple(v) for k, v in r.transforms.items()})
