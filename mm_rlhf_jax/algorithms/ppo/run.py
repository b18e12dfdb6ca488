"""PPO with hybrid rewards, Pre-PPO prompt selection and a math/code-first curriculum.

    python -m mm_rlhf_jax.main --config configs/ppo.py:tiny --workdir runs/ppo_tiny

ByteDance's recipe (papers.md §2): verifiable rewards where a checker exists,
a generative RM against a reference otherwise; hard prompts chosen before PPO;
math and code emphasised early. Work in the workdir, each stage skipped when
its output exists (re-running the same command resumes):

  data/               tokenizer and prompt pools (synthetic tasks, tiny preset)
  warm_start/         SFT of the tiny policy on demonstrations (checkpointed)
  genrm/              SFT of the tiny GenRM judge (tiny preset with a "general" domain)
  pre_ppo/            scores of the new pool under the initial policy; selected.jsonl
  initial_eval.json   the initial (SFT) policy on the held-out prompts
  checkpoints/        RLState (actor, critic, rng) + prompt-iterator state
  metrics.jsonl, samples.jsonl, eval.json
"""

import logging

import ml_collections
import numpy as np

from mm_rlhf_jax import distributed, storage
from mm_rlhf_jax.algorithms.ppo import data as rl_data, rewards, trainer
from mm_rlhf_jax.data.curriculum import Curriculum, CurriculumSampler
from mm_rlhf_jax.data.prompts_pool import PromptRecord, load_prompt_pool
from mm_rlhf_jax.data.synthetic import reasoning
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.rewards.prompt_selection import pre_ppo_select
from mm_rlhf_jax.rewards.router import reward_metrics
from mm_rlhf_jax.rollout.generate import Generator
from mm_rlhf_jax.rollout.strategies import SamplingConfig
from mm_rlhf_jax.sharding import SAMPLING_RULES
from mm_rlhf_jax.train import model_factory, phase, sft


def warm_start(ctx: phase.RunContext, w: ml_collections.ConfigDict, module, tok, sft_records, params, *,
               trainable: tuple[str, ...]):
    """SFT on the synthetic demonstrations (tiny presets); a no-op when w.steps == 0."""
    if not w.steps:
        return params
    if not sft_records:
        raise ValueError("warm_start.steps > 0 needs demonstrations (data.synthetic=True)")
    convs = reasoning.sft_conversations(sft_records[: w.num_examples or None], w.seed, label_noise=w.label_noise)
    batches = sft.ArrayBatches.for_mesh(sft.text_demos(tok, convs, w.max_length), w.batch_size, w.seed, ctx.mesh)
    return sft.run(ctx.path("warm_start"), ctx, module, params, batches, w, trainable=trainable)


def sampled_generate(gen: Generator, params, seed: int):
    """Pre-PPO's generate(records, n) -> n samples per record."""

    def generate(records, n):
        texts = gen.texts(params, [(r, r.prompt) for r in records], seed=seed, num_samples=n)  # shared prefills
        return [texts[i * n:(i + 1) * n] for i in range(len(records))]

    return generate


def select_prompts(ctx: phase.RunContext, p: ml_collections.ConfigDict, data: rl_data.RLData, gen: Generator,
                   params, router, seed: int) -> list[PromptRecord]:
    """Pre-PPO (block p): the training pool = original prompts + the hardest fraction of the new pool (cached)."""
    if not p.enabled or not data.new_pool:
        return data.pool
    out_dir = ctx.path("pre_ppo")
    selected = storage.join(out_dir, "selected.jsonl")
    if not storage.exists(selected):  # every process runs the selection (generation is collective)
        logging.info("Pre-PPO: scoring %d new prompts x %d samples", len(data.new_pool), p.num_samples)
        sel = pre_ppo_select(data.pool, data.new_pool, generate=sampled_generate(gen, params, seed),
                             reward_fn=router, num_samples=p.num_samples, fraction=p.fraction,
                             normalization=p.normalization, seed=seed, output_dir=out_dir)
        logging.info("Pre-PPO: %s", sel.summary())
    distributed.barrier("pre_ppo")  # process 0 wrote selected.jsonl; everyone reads that file
    return load_prompt_pool(selected)


def curriculum(k: ml_collections.ConfigDict, steps: int) -> Curriculum:
    """The math/code-first schedule of curriculum block k over `steps` cycles."""
    if not k.enabled:
        return Curriculum((0,), (-1.0,), tuple(k.emphasized))
    return Curriculum([int(round(a * steps)) for a in k.at], tuple(k.shares), tuple(k.emphasized))


def make_eval_fn(num_prompts: int, gen: Generator, records: list[PromptRecord], router):
    """eval_fn(params) -> held-out metrics of greedy answers (verifier accuracy, reward per domain/route)."""
    records = records[: num_prompts or None]

    def eval_fn(params):
        texts = trainer.greedy_eval_texts(gen, params, records)
        batch = router(records, texts)
        out = reward_metrics(batch, records, prefix="heldout_reward")
        verified = np.array([rt == "verifier" for rt in batch.routes])
        if verified.any():
            out["verifier_accuracy"] = float(np.mean(batch.rewards[verified] >= 1.0))
        out["heldout_prompts"] = len(records)
        out["examples"] = [{"prompt": r.prompt, "response": t, "reward": float(x)}
                           for r, t, x in zip(records[:6], texts[:6], batch.rewards[:6])]
        return out

    return eval_fn


def run(config: ml_collections.ConfigDict, workdir: str):
    with phase.run_context(config, workdir) as ctx:
        mesh, p = ctx.mesh, config.ppo
        data = rl_data.prepare(config.data, config.model.init_from, workdir)
        tok = cached_tokenizer(data.tokenizer)
        trainable = model_factory.TRAINABLE.get(config.model.trainable)
        module, _ = model_factory.build(config.model, config.seed)
        params0 = warm_start(ctx, config.warm_start, module, tok, data.sft,
                             model_factory.initial_params(config.model, module, mesh, ctx.rules, config.seed),
                             trainable=trainable)
        router = rewards.build_router(config.reward, rewards.build_genrm(config, ctx, data.tokenizer))
        logging.info("reward routes: pool %s, held-out %s", router.check(data.pool + data.new_pool),
                     router.check(data.heldout))
        roles = trainer.build_roles(config, ctx, module, trainable)
        sampling_layout = hf.param_shardings(module, mesh, SAMPLING_RULES)
        kw = dict(batch_size=p.eval_batch_size, max_prompt_length=p.max_prompt_length, max_new_tokens=p.max_new_tokens)
        greedy = trainer.policy_generator(module, tok, mesh, sampling_layout, sampling=SamplingConfig("greedy"), **kw)
        sampled = trainer.policy_generator(module, tok, mesh, sampling_layout, sampling=trainer.sampling_config(p),
                                           **kw)
        pool = select_prompts(ctx, config.pre_ppo, data, sampled, params0, router, config.seed)
        sampler = CurriculumSampler(pool, p.prompts_per_step, curriculum(config.curriculum, config.train.steps),
                                    config.data.seed, encode=trainer.prompt_encoder(tok, p.max_prompt_length))
        result = trainer.train_cycles(ctx, config, roles, tok, params0, router, sampler,
                                      make_eval_fn(config.eval.num_prompts, greedy, data.heldout, router))
        out = {**phase.scalars(result.final), **{f"initial_{k}": v for k, v in phase.scalars(result.initial).items()},
               "steps": config.train.steps, "train_prompts": len(pool), "examples": result.final.get("examples", [])}
        phase.report("ppo", out, ctx.writer)
    return out
