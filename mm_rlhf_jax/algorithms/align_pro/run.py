"""Align-Pro: PPO on a prompter that rewrites prompts for a frozen model (papers.md §4).

    python -m mm_rlhf_jax.main --config configs/align_pro.py:tiny --workdir runs/align_pro_tiny

    x ~ P,  x' ~ rho(. | x),  y ~ pi_F(. | x'),  r = r*(x, y)
    max_rho  E[r] - lambda * KL(rho(. | x) || rho_sft(. | x))

The reward is computed against the ORIGINAL x (its ground truth, tests or
judge prompt: the router sees the original record, never x'). lambda is
ppo.kl_coef with the KL in the token reward (papers.md §4(d)); PPO updates the
prompter only: the frozen model's parameters never enter the train state.

Eval (held-out prompts): mean and variance of r*(x, y) without the prompter
(y = pi_F(x)) and with it (y = pi_F(greedy rho(x))), for the starting prompter
(initial_eval.json) and the trained one (eval.json).

Work in the workdir (every stage resumes): data/ (tokenizer, pools), frozen/
(tiny frozen model: SFT on the canonical phrasing only), warm_start/ (tiny
prompter: SFT on imperfect rewrites), checkpoints/, initial_eval.json, eval.json.
"""

import dataclasses

import ml_collections

from mm_rlhf_jax import storage
from mm_rlhf_jax.algorithms.align_pro.env import AlignProEnv, reward_summary
from mm_rlhf_jax.algorithms.ppo import data as rl_data, rewards, trainer
from mm_rlhf_jax.data.curriculum import Curriculum, CurriculumSampler
from mm_rlhf_jax.data.prompts_pool import PromptRecord, load_prompt_pool
from mm_rlhf_jax.data.synthetic import reasoning
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.rewards.router import reward_metrics
from mm_rlhf_jax.rollout.generate import Generator, chat_encoder
from mm_rlhf_jax.rollout.strategies import SamplingConfig
from mm_rlhf_jax.sharding import SAMPLING_RULES, placement
from mm_rlhf_jax.train import model_factory, phase, sft


@dataclasses.dataclass
class AlignProData:
    tokenizer: str
    frozen_demos: list  # (user, assistant) for the tiny frozen model ([] for real data)
    prompter_demos: list  # (prompter user turn, rewrite) for the tiny prompter
    pool: list[PromptRecord]
    heldout: list[PromptRecord]


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> AlignProData:
    d = config.data
    tok = rl_data.tokenizer(d, config.model.init_from, workdir)
    if d.synthetic and not d.pool:
        # Both warm starts draw on the "sft" split (disjoint from train and held-out prompts).
        sizes = {"sft": d.synthetic_sft, "train": d.synthetic_train, "heldout": d.synthetic_heldout}
        splits = reasoning.make_splits(d.synthetic_seed, sizes, reasoning.TaskMix(1.0, 0.0, 0.0),
                                       math_tasks=tuple(d.synthetic_math_tasks))
        folder = rl_data.write_pools(workdir, {name: reasoning.paraphrased(splits[name])
                                               for name in ("train", "heldout")})
        frozen = reasoning.sft_conversations(splits["sft"], config.frozen.warm_start.seed)
        prompter = reasoning.rewrite_conversations(
            reasoning.paraphrased(splits["sft"]), config.warm_start.seed, p_canonical=d.rewrite_p_canonical,
            p_copy=d.rewrite_p_copy, template=config.align_pro.prompter_template)
        load = lambda name: load_prompt_pool(storage.join(folder, f"{name}.jsonl"))
        return AlignProData(tok, frozen, prompter, load("train"), load("heldout"))
    if not d.pool or not d.heldout:
        raise ValueError("set data.pool and data.heldout (prompt-pool jsonl files), or data.synthetic=True")
    return AlignProData(tok, [], [], load_prompt_pool(d.pool), load_prompt_pool(d.heldout))


def frozen_model(config: ml_collections.ConfigDict, ctx: phase.RunContext, data: AlignProData):
    """(module, params in the sampling layout, tokenizer) of the frozen target model.

    A local checkpoint, or the tiny one trained here (ctx.workdir/frozen, seed + 11).
    """
    f = config.frozen
    if f.init_from:
        module, params = model_factory.pretrained(f.init_from, config.model, ctx.mesh, SAMPLING_RULES)
        return module, params, cached_tokenizer(f.tokenizer or f.init_from)
    if not data.frozen_demos:
        raise ValueError("set frozen.init_from (the frozen model's checkpoint), or use the synthetic data")
    module, _ = model_factory.build(config.model, config.seed + 11)
    params = model_factory.initial_params(config.model, module, ctx.mesh, ctx.rules, config.seed + 11)
    tok = cached_tokenizer(f.tokenizer or data.tokenizer)
    w = f.warm_start
    batches = sft.ArrayBatches.for_mesh(sft.text_demos(tok, data.frozen_demos, w.max_length), w.batch_size,
                                        w.seed, ctx.mesh)
    params = sft.run(ctx.path("frozen"), ctx, module, params, batches, w)
    return module, placement.reshard(params, hf.param_shardings(module, ctx.mesh, SAMPLING_RULES)), tok


def make_eval_fn(num_prompts: int, template: str, prompter: Generator, env: AlignProEnv,
                 records: list[PromptRecord]):
    """eval_fn(params) -> mean/variance of the held-out reward with the (greedy) prompter; the no-prompter
    baseline is computed once (it does not depend on the prompter)."""
    records = records[: num_prompts or None]
    baseline = env(records, [r.prompt for r in records])
    base = reward_summary(baseline)

    def eval_fn(params):
        rewrites = trainer.greedy_eval_texts(prompter, params, records, lambda r: template.format(prompt=r.prompt))
        batch = env(records, rewrites)
        s = reward_summary(batch)
        out = {"reward_mean_with_prompter": s["mean"], "reward_variance_with_prompter": s["variance"],
               "reward_mean_without_prompter": base["mean"], "reward_variance_without_prompter": base["variance"],
               "overflow_fraction": env.overflow_fraction, "heldout_prompts": len(records),
               **reward_metrics(batch, records, prefix="heldout_reward")}
        out["examples"] = [{"prompt": r.prompt, "rewrite": x, "answer": y, "reward": float(v)}
                           for r, x, y, v in zip(records[:6], rewrites[:6], batch.details[:6], batch.rewards[:6])]
        return out

    return eval_fn


def run(config: ml_collections.ConfigDict, workdir: str):
    with phase.run_context(config, workdir) as ctx:
        mesh, p, f, a = ctx.mesh, config.ppo, config.frozen, config.align_pro
        data = prepare_data(config, workdir)
        tok = cached_tokenizer(data.tokenizer)
        f_module, f_params, f_tok = frozen_model(config, ctx, data)
        trainable = model_factory.TRAINABLE.get(config.model.trainable)
        module, _ = model_factory.build(config.model, config.seed)
        params0 = model_factory.initial_params(config.model, module, mesh, ctx.rules, config.seed)
        w = config.warm_start
        if w.steps:
            batches = sft.ArrayBatches.for_mesh(sft.text_demos(tok, data.prompter_demos, w.max_length),
                                                w.batch_size, w.seed, mesh)
            params0 = sft.run(ctx.path("warm_start"), ctx, module, params0, batches, w, trainable=trainable)
        genrm = rewards.build_genrm(config, ctx, data.tokenizer)
        # r* may be a learned reward model (the paper's alignment RM: a reward_model workdir)
        learned_rm = rewards.build_learned_rm(config, ctx, data.tokenizer, [])
        references = rewards.build_references(config, ctx, genrm, learned_rm, None, {})
        router = rewards.build_router(config.reward, genrm, learned_rm, references)
        router.check(data.pool + data.heldout)
        roles = trainer.build_roles(config, ctx, module, trainable)
        frozen_gen = Generator(f_module, f_tok, mesh, max_new_tokens=f.max_new_tokens, batch_size=f.batch_size,
                               encode=chat_encoder(f_tok, max_length=f.max_prompt_length),
                               sampling=SamplingConfig(f.sampling, f.temperature), prompt_length=f.max_prompt_length)
        env = AlignProEnv(frozen_gen, f_params, router, template=a.frozen_template,
                          overflow_reward=a.overflow_reward)
        prompter = trainer.policy_generator(module, tok, mesh, hf.param_shardings(module, mesh, SAMPLING_RULES),
                                            batch_size=p.eval_batch_size, max_prompt_length=p.max_prompt_length,
                                            max_new_tokens=p.max_new_tokens, sampling=SamplingConfig("greedy"))
        text_fn = lambda r: a.prompter_template.format(prompt=r.prompt)
        sampler = CurriculumSampler(data.pool, p.prompts_per_step, Curriculum(), config.data.seed,
                                    encode=trainer.prompt_encoder(tok, p.max_prompt_length, text_fn))
        # The prompter's reference rho_sft is params0.
        result = trainer.train_cycles(ctx, config, roles, tok, params0, env, sampler,
                                      make_eval_fn(config.eval.num_prompts, a.prompter_template, prompter, env,
                                                   data.heldout))
        out = {**phase.scalars(result.final),
               **{f"initial_{k}": v for k, v in phase.scalars(result.initial).items() if "without_prompter" not in k},
               "steps": config.train.steps, "examples": result.final.get("examples", [])}
        phase.report("align_pro", out, ctx.writer)
    return out
