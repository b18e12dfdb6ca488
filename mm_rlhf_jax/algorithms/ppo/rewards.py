"""The reward side of an RL run (PPO and Align-Pro): GenRM judge, learned RM, best-of-N references, router.

    rm     = build_learned_rm(config, ctx, data)                 # reward.learned_rm (or None)
    genrm  = build_genrm(config, ctx, tokenizer)                 # genrm (or None)
    refs   = build_references(config, ctx, genrm, rm, generate)  # genrm.best_of_n (or None)
    router = build_router(config.reward, genrm, rm, refs)
    scorer = PRE_PPO_SCORERS.get(config.pre_ppo.scorer)(router)  # what Pre-PPO ranks prompts by
"""

import ml_collections

from mm_rlhf_jax import config_lib
from mm_rlhf_jax.algorithms.reward_model.scorer import LearnedRM, train_workdir
from mm_rlhf_jax.data.synthetic import reasoning
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.registry import Registry
from mm_rlhf_jax.rewards.genrm import GenRM, GenRMConfig
from mm_rlhf_jax.rewards.references import BestOfNReferences
from mm_rlhf_jax.rewards.router import RewardContext, RewardRouter
from mm_rlhf_jax.sharding import SAMPLING_RULES, placement
from mm_rlhf_jax.train import model_factory, phase, sft

GENRM_SOURCES = ("genrm_ground_truth", "genrm_reference", "genrm_best_of_n")


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


def tiny_rm_config(config: ml_collections.ConfigDict, tokenizer: str) -> ml_collections.ConfigDict:
    """The reward_model config of the tiny learned RM: the policy's architecture, scalar mode, the run's tokenizer."""
    r = config.reward.learned_rm
    w = r.warm_start
    c = config_lib.schema("reward_model")
    c.seed = config.seed + 11
    c.mesh = config.mesh
    c.model = config.model
    c.reward.mode = "scalar"  # the synthetic answers come without critiques
    c.data = config_lib.pair_data_block(synthetic=False, tokenizer=tokenizer, max_length=w.max_length,
                                        batch_size=w.batch_size, eval_batch_size=r.batch_size, seed=w.seed)
    c.optim = config_lib.optim_block(name="adam", lr=w.lr, warmup_ratio=w.warmup_ratio, b2=w.b2,
                                     grad_clip=w.grad_clip, schedule="cosine", final_lr_ratio=0.05)
    c.train = config_lib.train_block(steps=w.steps, log_every=w.log_every, checkpoint_every=0, max_checkpoints=1)
    return c


def build_learned_rm(config: ml_collections.ConfigDict, ctx: phase.RunContext, tokenizer: str,
                     demos: list[dict]) -> LearnedRM | None:
    """The learned RM (or None): a reward_model workdir, a transformers folder with a reward head (export.py's
    output, or an MM-RLHF-Reward checkpoint), or a tiny scalar RM trained into <workdir>/learned_rm on
    (right, wrong) answers to the synthetic demonstration prompts `demos`."""
    r = config.reward.learned_rm
    if not r.enabled:
        return None
    path = r.init_from
    if not path:
        w = r.warm_start
        if not w.steps or not demos:
            raise ValueError("reward.learned_rm.enabled needs reward.learned_rm.init_from (a reward_model run's "
                             "workdir or an exported one), or, with the synthetic tasks (data.synthetic=True), "
                             "reward.learned_rm.warm_start.steps > 0 to train a tiny RM")
        pairs = reasoning.preference_pairs(demos[: w.num_examples or None], w.seed, label_noise=w.label_noise)
        path = train_workdir(ctx, tiny_rm_config(config, tokenizer), pairs, ctx.path("learned_rm"))
    return LearnedRM.load(path, config.model, ctx.mesh, batch_size=r.batch_size,
                          max_critique_tokens=r.max_critique_tokens, max_length=r.max_length)


def build_references(config: ml_collections.ConfigDict, ctx: phase.RunContext, genrm: GenRM | None,
                     learned_rm: LearnedRM | None, generate, fingerprint: dict) -> BestOfNReferences | None:
    """Best-of-N GenRM references (genrm.best_of_n), cached in <workdir>/genrm_references, or None.

    generate(records, n) -> n candidate texts per record (the caller's generator:
    the initial policy, or a reference model); the learned RM picks among them
    (the paper: the SFT best-of-N chosen by its BT model). fingerprint: what
    identifies the generator (part of every cache key).
    """
    b = config.genrm.best_of_n
    if not b.enabled:
        return None
    if genrm is None:
        raise ValueError("genrm.best_of_n.enabled: the references are for the GenRM; set genrm.enabled")
    if learned_rm is None:
        raise ValueError("genrm.best_of_n.enabled: the learned RM picks the best of N candidates (the paper's BT "
                         "model); set reward.learned_rm.enabled")
    if generate is None:
        raise ValueError("genrm.best_of_n: this algorithm has no policy to sample candidates from; set "
                         "genrm.best_of_n.generator to a reference model's checkpoint folder")
    return BestOfNReferences(generate, learned_rm.score, num_candidates=b.num_candidates,
                             cache_dir=ctx.path("genrm_references"), domains=tuple(b.domains),
                             fingerprint={**fingerprint, "generator": b.generator, "seed": b.seed,
                                          "temperature": b.temperature, "max_new_tokens": b.max_new_tokens})


def build_router(r: ml_collections.ConfigDict, genrm: GenRM | None, learned_rm: LearnedRM | None = None,
                 references: BestOfNReferences | None = None) -> RewardRouter:
    """The router of the `reward` block r; sources without their model never apply (errors say which)."""
    ctx = RewardContext(verifiers=dict(r.verifiers), genrm=genrm, num_workers=r.num_workers, learned_rm=learned_rm,
                        references=references)
    order = tuple(s.strip() for s in r.order.split(",") if s.strip())
    return RewardRouter(ctx, order, {k: tuple(v) for k, v in r.transforms.items()})


# pre_ppo.scorer -> router -> the reward function Pre-PPO ranks new prompts by
PRE_PPO_SCORERS: Registry = Registry("Pre-PPO scorer")
PRE_PPO_SCORERS.register("router")(lambda router: router)  # PPO's own reward
PRE_PPO_SCORERS.register("learned_rm")(lambda router: router.restricted(("learned_rm",)))
PRE_PPO_SCORERS.register("genrm")(lambda router: router.restricted(GENRM_SOURCES))
