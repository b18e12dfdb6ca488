"""PPO with hybrid rewards, Pre-PPO prompt selection and a math/code-first curriculum.

    python -m mm_rlhf_jax.main --config configs/ppo.py:tiny --workdir runs/ppo_tiny

ByteDance's recipe (papers.md §2): verifiable rewards where a checker exists,
a generative RM against a reference otherwise; hard prompts chosen before PPO;
math and code emphasised early. Work in the workdir, each stage skipped when
its output exists (re-running the same command resumes):

  data/               tokenizer and prompt pools (synthetic tasks, tiny preset)
  warm_start/         SFT of the tiny policy on demonstrations (checkpointed)
  genrm/              SFT of the tiny GenRM judge (tiny preset with a "general" domain)
  learned_rm/         a tiny scalar reward model (a reward_model workdir; reward.learned_rm, tiny presets)
  genrm_references/   best-of-N GenRM references, one JSON file per prompt hash (genrm.best_of_n)
  pre_ppo/            scores of the new pool under the initial policy; selection_stats.json; selected.jsonl
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
from mm_rlhf_jax.train import model_factory, phase, reference_cache, sft


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
        texts = gen.texts(params, [(r, r.prompt) for r in records], seed=seed, num_samples=n,  # shared prefills
                          progress="pre-ppo samples")
        return [texts[i * n:(i + 1) * n] for i in range(len(records))]

    return generate


def select_prompts(ctx: phase.RunContext, p: ml_collections.ConfigDict, data: rl_data.RLData, gen: Generator,
                   params, router, seed: int) -> list[PromptRecord]:
    """Pre-PPO (block p): the training pool = original prompts + the hardest fraction of each domain of the new
    pool, scored by p.scorer (cached)."""
    if not p.enabled or not data.new_pool:
        return data.pool
    out_dir = ctx.path("pre_ppo")
    selected = storage.join(out_dir, "selected.jsonl")
    if not storage.exists(selected):  # every process runs the selection (generation is collective)
        scorer = rewards.PRE_PPO_SCORERS.get(p.scorer)(router)
        logging.info("Pre-PPO: scoring %d new prompts x %d samples with %s (routes %s)", len(data.new_pool),
                     p.num_samples, p.scorer, scorer.check(data.new_pool))
        sel = pre_ppo_select(data.pool, data.new_pool, generate=sampled_generate(gen, params, seed),
                             reward_fn=scorer, num_samples=p.num_samples, fraction=p.fraction,
                             normalization=p.normalization, selection=p.selection, seed=seed, output_dir=out_dir,
                             scorer=p.scorer)
        logging.info("Pre-PPO: %s; per domain %s", sel.summary(), sel.domains)
    distributed.barrier("pre_ppo")  # process 0 wrote selected.jsonl; everyone reads that file
    return load_prompt_pool(selected)


def reference_generator(config: ml_collections.ConfigDict, ctx: phase.RunContext, module, tok, params0,
                        identity: dict):
    """(generate(records, n) -> n candidates each, fingerprint) for genrm.best_of_n: the initial policy params0
    ("policy"), or a reference model's checkpoint folder, sampled at best_of_n.temperature."""
    b, p = config.genrm.best_of_n, config.ppo
    if not b.enabled:
        return None, {}
    sampling = SamplingConfig("temperature", b.temperature)
    kw = dict(batch_size=p.eval_batch_size, max_prompt_length=p.max_prompt_length,
              max_new_tokens=b.max_new_tokens or p.max_new_tokens, sampling=sampling)
    if b.generator == "policy":
        # the initial policy: the warm start's identity too, so a different SFT never reuses a reference
        fingerprint = {"policy": identity, "warm_start": config.warm_start.to_dict()}
        gen = trainer.policy_generator(module, tok, ctx.mesh, hf.param_shardings(module, ctx.mesh, SAMPLING_RULES),
                                       **kw)
        return sampled_generate(gen, params0, b.seed), fingerprint
    ref_module, ref_params = model_factory.pretrained(b.generator, config.model, ctx.mesh, SAMPLING_RULES)
    ref_tok = cached_tokenizer(b.tokenizer or b.generator)
    gen = trainer.policy_generator(ref_module, ref_tok, ctx.mesh, None, **kw)
    return sampled_generate(gen, ref_params, b.seed), {"checkpoint": reference_cache.checkpoint_identity(b.generator)}


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
        module, identity = model_factory.build(config.model, config.seed)
        params0 = warm_start(ctx, config.warm_start, module, tok, data.sft,
                             model_factory.initial_params(config.model, module, mesh, ctx.rules, config.seed),
                             trainable=trainable)
        sampling_layout = hf.param_shardings(module, mesh, SAMPLING_RULES)
        kw = dict(batch_size=p.eval_batch_size, max_prompt_length=p.max_prompt_length, max_new_tokens=p.max_new_tokens)
        greedy = trainer.policy_generator(module, tok, mesh, sampling_layout, sampling=SamplingConfig("greedy"), **kw)
        sampled = trainer.policy_generator(module, tok, mesh, sampling_layout, sampling=trainer.sampling_config(p),
                                           **kw)
        genrm = rewards.build_genrm(config, ctx, data.tokenizer)
        learned_rm = rewards.build_learned_rm(config, ctx, data.tokenizer, data.sft)
        generate, fingerprint = reference_generator(config, ctx, module, tok, params0, identity)
        references = rewards.build_references(config, ctx, genrm, learned_rm, generate, fingerprint)
        router = rewards.build_router(config.reward, genrm, learned_rm, references)
        logging.info("reward routes: pool %s, held-out %s", router.check(data.pool + data.new_pool),
                     router.check(data.heldout))
        roles = trainer.build_roles(config, ctx, module, trainable)
        pool = select_prompts(ctx, config.pre_ppo, data, sampled, params0, router, config.seed)
        sampler = CurriculumSampler(pool, p.prompts_per_step, curriculum(config.curriculum, config.train.steps),
                                    config.data.seed, encode=trainer.prompt_encoder(tok, p.max_prompt_length))
        result = trainer.train_cycles(ctx, config, roles, tok, params0, router, sampler,
                                      make_eval_fn(config.eval.num_prompts, greedy, data.heldout, router))
        out = {**phase.scalars(result.final), **{f"initial_{k}": v for k, v in phase.scalars(result.initial).items()},
               "steps": config.train.steps, "train_prompts": len(pool), "examples": result.final.get("examples", []),
               # which reward source scores each domain (prompts per source), training pool and held-out
               "reward_routes": {"train": router.check_by_domain(pool), "heldout": router.check_by_domain(data.heldout)}}
        phase.report("ppo", out, ctx.writer)
    return out
