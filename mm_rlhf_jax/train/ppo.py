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

import dataclasses
import logging
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mm_rlhf_jax.data.prompts_pool import PromptRecord, load_prompt_pool
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.data.curriculum import Curriculum, CurriculumSampler
from mm_rlhf_jax.rewards.genrm import GenRM, GenRMConfig
from mm_rlhf_jax.rewards.prompt_selection import pre_ppo_select
from mm_rlhf_jax.rewards.router import RewardContext, RewardRouter, reward_metrics
from mm_rlhf_jax.rollout.strategies import SamplingConfig
from mm_rlhf_jax.sharding import TRAIN_RULES, make_mesh
from mm_rlhf_jax.data.synthetic import reasoning as tasks
from mm_rlhf_jax.train import data_setup, metrics as metrics_lib, model_factory, rl_common, setup, sft
from mm_rlhf_jax.train.rl_common import PolicyGenerator


@dataclasses.dataclass
class RLData:
    tokenizer: str
    sft: list[dict]  # synthetic demonstrations' source records (empty for real data)
    pool: list[PromptRecord]  # the original training prompts
    new_pool: list[PromptRecord]  # newly collected prompts for Pre-PPO ([] = no selection)
    heldout: list[PromptRecord]


def prepare_data(c: ml_collections.ConfigDict, workdir: str) -> RLData:
    d = c.data
    if d.synthetic and not d.pool:
        root = os.path.join(workdir, "data")
        tok = d.tokenizer or data_setup._build_once(os.path.join(root, "tokenizer"), tasks.build_tokenizer)
        mix = tasks.TaskMix(*d.synthetic_mix)
        sizes = {"sft": d.synthetic_sft, "train": d.synthetic_train, "new": d.synthetic_new,
                 "heldout": d.synthetic_heldout}
        splits = tasks.make_splits(d.synthetic_seed, sizes, mix, math_tasks=tuple(d.synthetic_math_tasks))

        def build(folder):
            for name, recs in splits.items():
                tasks.write_pool(os.path.join(folder, f"{name}.jsonl"), recs)

        folder = data_setup._build_once(os.path.join(root, "pools"), build)
        load = lambda name: load_prompt_pool(os.path.join(folder, f"{name}.jsonl"))
        return RLData(tok, splits["sft"], load("train"), load("new") if d.synthetic_new else [], load("heldout"))
    if not d.pool or not d.heldout:
        raise ValueError("set data.pool and data.heldout (prompt-pool jsonl files), or data.synthetic=True")
    tok = d.tokenizer or c.model.init_from
    if not tok:
        raise ValueError("set data.tokenizer or model.init_from")
    return RLData(tok, [], load_prompt_pool(d.pool), load_prompt_pool(d.new_pool) if d.new_pool else [],
                  load_prompt_pool(d.heldout))


def warm_start(c, workdir, module, tok, sft_records, mesh, rules, params, name="warm_start", text_fn=None):
    """SFT on the synthetic demonstrations (tiny presets); a no-op when warm_start.steps == 0."""
    w = c.warm_start
    if not w.steps:
        return params
    if not sft_records:
        raise ValueError("warm_start.steps > 0 needs demonstrations (data.synthetic=True)")
    recs = sft_records[: w.num_examples or None]
    convs = text_fn(recs) if text_fn else tasks.sft_conversations(recs, w.seed, label_noise=w.label_noise)
    arrays = sft.sft_arrays(tok, convs, w.max_length)
    params, _ = sft.run_sft(os.path.join(workdir, name), module, params, arrays, w, mesh, rules,
                            trainable=model_factory.TRAINABLE.get(c.model.trainable))
    return params


def build_genrm(c, workdir, data: RLData, mesh, rules):
    """The GenRM judge (or None): a local checkpoint, or a tiny judge trained on synthetic verdicts."""
    g = c.genrm
    if not g.enabled:
        return None
    cfg = GenRMConfig(template=g.template, max_new_tokens=g.max_new_tokens, max_prompt_length=g.max_prompt_length,
                      batch_size=g.batch_size, failure_value=g.failure_value)
    put = lambda b: {k: rl_common.put_global(v, rl_common.row_sharding(mesh, 2)) for k, v in b.items()}
    if g.init_from:
        from mm_rlhf_jax.models import hf

        module, params = hf.load_pretrained(g.init_from, model_factory.dtype(c.model.dtype), mesh=mesh, rules=rules)
        return GenRM.from_module(module, params, cached_tokenizer(g.tokenizer or g.init_from), cfg, put=put)
    tok = cached_tokenizer(data.tokenizer)
    module, _ = model_factory.build(c.model, c.seed + 7)
    params = model_factory.initial_params(c.model, module, mesh, rules, c.seed + 7)
    convs = tasks.judge_conversations(g.warm_start.num_examples, g.warm_start.seed, g.template)
    arrays = sft.sft_arrays(tok, convs, g.warm_start.max_length)
    params, _ = sft.run_sft(os.path.join(workdir, "genrm"), module, params, arrays, g.warm_start, mesh, rules)
    return GenRM.from_module(module, params, tok, cfg, put=put)


def build_router(c, genrm) -> RewardRouter:
    r = c.reward
    ctx = RewardContext(verifiers=dict(r.verifiers), genrm=genrm, num_workers=r.num_workers)
    order = tuple(s.strip() for s in r.order.split(",") if s.strip())
    order = tuple(s for s in order if s == "verifier" or genrm is not None or not s.startswith("genrm"))
    return RewardRouter(ctx, order, {k: tuple(v) for k, v in r.transforms.items()})


def sampled_generate(gen: PolicyGenerator, params, seed: int):
    """Pre-PPO's generate(records, n) -> n samples per record."""

    def generate(records, n):
        texts = gen(params, [r.prompt for r in records for _ in range(n)],
                    records=[r for r in records for _ in range(n)], seed=seed)
        return [texts[i * n:(i + 1) * n] for i in range(len(records))]

    return generate


def select_prompts(c, workdir, data: RLData, gen: PolicyGenerator, params, router) -> list[PromptRecord]:
    """Pre-PPO: the training pool = original prompts + the hardest fraction of the new pool (cached)."""
    p = c.pre_ppo
    if not p.enabled or not data.new_pool:
        return data.pool
    out_dir = os.path.join(workdir, "pre_ppo")
    selected = os.path.join(out_dir, "selected.jsonl")
    if not os.path.exists(selected):
        logging.info("Pre-PPO: scoring %d new prompts x %d samples", len(data.new_pool), p.num_samples)
        sel = pre_ppo_select(data.pool, data.new_pool, generate=sampled_generate(gen, params, c.seed),
                             reward_fn=router, num_samples=p.num_samples, fraction=p.fraction,
                             normalization=p.normalization, seed=c.seed, output_dir=out_dir)
        logging.info("Pre-PPO: %s", sel.summary())
    return load_prompt_pool(selected)


def curriculum(c) -> Curriculum:
    k = c.curriculum
    if not k.enabled:
        return Curriculum((0,), (-1.0,), tuple(k.emphasized))
    steps = [int(round(a * c.train.steps)) for a in k.at]
    return Curriculum(steps, tuple(k.shares), tuple(k.emphasized))


def make_eval_fn(c, gen: PolicyGenerator, records: list[PromptRecord], router, text_fn=lambda r: r.prompt):
    """eval_fn(params) -> held-out metrics of greedy answers (verifier accuracy, reward per domain/route)."""
    records = records[: c.eval.num_prompts or None]

    def eval_fn(params):
        texts = gen(params, [text_fn(r) for r in records], records=records)
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
    c = config
    os.makedirs(workdir, exist_ok=True)
    mesh, rules = make_mesh(c.mesh.to_dict()), TRAIN_RULES
    writer = metrics_lib.MetricWriter(workdir)
    setup.save_config(c, writer)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        data = prepare_data(c, workdir)
        tok = cached_tokenizer(data.tokenizer)
        module, _ = model_factory.build(c.model, c.seed)
        params0 = warm_start(c, workdir, module, tok, data.sft, mesh, rules,
                             model_factory.initial_params(c.model, module, mesh, rules, c.seed))
        router = build_router(c, build_genrm(c, workdir, data, mesh, rules))
        logging.info("reward routes: pool %s, held-out %s", router.check(data.pool + data.new_pool),
                     router.check(data.heldout))
        roles = rl_common.build_roles(c, mesh, rules, module)
        p = c.ppo
        gen_kw = dict(batch_size=p.eval_batch_size, max_prompt_length=p.max_prompt_length,
                      max_new_tokens=p.max_new_tokens)
        greedy = PolicyGenerator(module, tok, mesh, roles.actor_param_shardings, sampling=SamplingConfig("greedy"),
                                 **gen_kw)
        sampled = PolicyGenerator(module, tok, mesh, roles.actor_param_shardings, **gen_kw,
                                  sampling=SamplingConfig(p.sampling, p.temperature, p.top_k, p.top_p))
        pool = select_prompts(c, workdir, data, sampled, params0, router)
        sampler = CurriculumSampler(pool, p.prompts_per_step, curriculum(c), c.data.seed,
                                    encode=rl_common.prompt_encoder(tok, p.max_prompt_length))
        final, initial = rl_common.train_cycles(c, workdir, mesh, roles, tok, params0, router, sampler,
                                                make_eval_fn(c, greedy, data.heldout, router), writer)
    result = {**rl_common.jsonable(final), **{f"initial_{k}": v for k, v in rl_common.jsonable(initial).items()},
              "steps": c.train.steps, "train_prompts": len(pool), "examples": final.get("examples", [])}
    setup.report("ppo", result, writer)
    writer.close()
    return result

