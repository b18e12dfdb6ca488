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
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mm_rlhf_jax.data.prompts_pool import PromptRecord, load_prompt_pool
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.data.curriculum import Curriculum, CurriculumSampler
from mm_rlhf_jax.rewards.router import RewardBatch, reward_metrics
from mm_rlhf_jax.rollout.strategies import SamplingConfig
from mm_rlhf_jax.sharding import TRAIN_RULES, make_mesh
from mm_rlhf_jax.data.synthetic import reasoning as tasks
from mm_rlhf_jax.train import data_setup, metrics as metrics_lib, model_factory, rl_common, setup, sft
from mm_rlhf_jax.train.ppo import build_genrm, build_router
from mm_rlhf_jax.train.rl_common import PolicyGenerator


class AlignProEnv:
    """env(records, rewrites) -> RewardBatch: the frozen model answers each rewrite, scored on the original record.

    A rewrite that does not fit the frozen model's prompt length earns
    `overflow_reward` (counted in `overflow_fraction`) instead of crashing the run.
    """

    def __init__(self, frozen: PolicyGenerator, frozen_params, router, *, template: str, overflow_reward: float):
        self.frozen, self.params, self.router = frozen, frozen_params, router
        self.template, self.overflow_reward = template, overflow_reward
        self.calls, self.overflow_fraction = 0, 0.0

    def answers(self, texts: list[str]) -> tuple[list[str | None], np.ndarray]:
        prompts = [self.template.format(prompt=t) for t in texts]
        fits = np.array([self.frozen.fits(p) for p in prompts], bool)
        out: list[str | None] = [None] * len(texts)
        ok = [p for p, f in zip(prompts, fits) if f]
        if ok:
            # A different seed per call (only matters when the frozen model samples).
            answers = iter(self.frozen(self.params, ok, seed=self.calls))
            out = [next(answers) if f else None for f in fits]
        self.calls += 1
        return out, fits

    def __call__(self, records: list[PromptRecord], rewrites: list[str]) -> RewardBatch:
        answers, fits = self.answers(rewrites)
        rewards = np.full(len(records), self.overflow_reward, np.float32)
        routes = ["overflow"] * len(records)
        valid = fits.copy()
        idx = np.nonzero(fits)[0]
        if len(idx):
            batch = self.router([records[i] for i in idx], [answers[i] for i in idx])
            rewards[idx], valid[idx] = batch.rewards, batch.valid
            for j, i in enumerate(idx):
                routes[i] = batch.routes[j]
        self.overflow_fraction = float(1.0 - fits.mean())
        return RewardBatch(rewards=rewards, routes=routes, valid=valid,
                           details=["<too long for the frozen model>" if a is None else a for a in answers])


@dataclasses.dataclass
class AlignProData:
    tokenizer: str
    frozen_demos: list  # (user, assistant) for the tiny frozen model ([] for real data)
    prompter_demos: list  # (prompter user turn, rewrite) for the tiny prompter
    pool: list[PromptRecord]
    heldout: list[PromptRecord]


def prepare_data(c: ml_collections.ConfigDict, workdir: str) -> AlignProData:
    d, a = c.data, c.align_pro
    if d.synthetic and not d.pool:
        root = os.path.join(workdir, "data")
        tok = data_setup._build_once(os.path.join(root, "tokenizer"), tasks.build_tokenizer)
        # Both warm starts draw on the "sft" split (disjoint from train and held-out prompts).
        sizes = {"sft": d.synthetic_sft, "train": d.synthetic_train, "heldout": d.synthetic_heldout}
        splits = tasks.make_splits(d.synthetic_seed, sizes, tasks.TaskMix(1.0, 0.0, 0.0),
                                   math_tasks=tuple(d.synthetic_math_tasks))

        def build(folder):
            for name in ("train", "heldout"):
                tasks.write_pool(os.path.join(folder, f"{name}.jsonl"), tasks.paraphrased(splits[name]))

        folder = data_setup._build_once(os.path.join(root, "pools"), build)
        frozen = tasks.sft_conversations(splits["sft"], c.frozen.warm_start.seed)
        prompter = tasks.rewrite_conversations(tasks.paraphrased(splits["sft"]), c.warm_start.seed,
                                               p_canonical=d.rewrite_p_canonical, p_copy=d.rewrite_p_copy,
                                               template=a.prompter_template)
        load = lambda name: load_prompt_pool(os.path.join(folder, f"{name}.jsonl"))
        return AlignProData(tok, frozen, prompter, load("train"), load("heldout"))
    if not d.pool or not d.heldout:
        raise ValueError("set data.pool and data.heldout (prompt-pool jsonl files), or data.synthetic=True")
    tok = d.tokenizer or c.model.init_from
    if not tok:
        raise ValueError("set data.tokenizer or model.init_from (the prompter's tokenizer)")
    return AlignProData(tok, [], [], load_prompt_pool(d.pool), load_prompt_pool(d.heldout))


def frozen_model(c, workdir, data: AlignProData, mesh, rules):
    """(module, params, tokenizer) of the frozen target model: a local checkpoint, or the tiny one trained here."""
    f = c.frozen
    if f.init_from:
        module, params = hf.load_pretrained(f.init_from, model_factory.dtype(c.model.dtype), mesh=mesh, rules=rules)
        return module, params, cached_tokenizer(f.tokenizer or f.init_from)
    if not data.frozen_demos:
        raise ValueError("set frozen.init_from (the frozen model's checkpoint), or use the synthetic data")
    module, _ = model_factory.build(c.model, c.seed + 11)
    params = model_factory.initial_params(c.model, module, mesh, rules, c.seed + 11)
    tok = cached_tokenizer(data.tokenizer)
    arrays = sft.sft_arrays(tok, data.frozen_demos, f.warm_start.max_length)
    params, _ = sft.run_sft(os.path.join(workdir, "frozen"), module, params, arrays, f.warm_start, mesh, rules)
    return module, params, tok


def make_eval_fn(c, prompter: PolicyGenerator, env: AlignProEnv, records: list[PromptRecord]):
    """eval_fn(params) -> mean/variance of the held-out reward with the (greedy) prompter; the no-prompter
    baseline is computed once (it does not depend on the prompter)."""
    records = records[: c.eval.num_prompts or None]
    template = c.align_pro.prompter_template
    baseline = env(records, [r.prompt for r in records])
    base = rl_common.reward_summary(baseline)

    def eval_fn(params):
        rewrites = prompter(params, [template.format(prompt=r.prompt) for r in records], records=records)
        batch = env(records, rewrites)
        s = rl_common.reward_summary(batch)
        out = {"reward_mean_with_prompter": s["mean"], "reward_variance_with_prompter": s["variance"],
               "reward_mean_without_prompter": base["mean"], "reward_variance_without_prompter": base["variance"],
               "overflow_fraction": env.overflow_fraction, "heldout_prompts": len(records),
               **reward_metrics(batch, records, prefix="heldout_reward")}
        out["examples"] = [{"prompt": r.prompt, "rewrite": x, "answer": y, "reward": float(v)}
                           for r, x, y, v in zip(records[:6], rewrites[:6], batch.details[:6], batch.rewards[:6])]
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
        f_module, f_params, f_tok = frozen_model(c, workdir, data, mesh, rules)
        module, _ = model_factory.build(c.model, c.seed)
        params0 = model_factory.initial_params(c.model, module, mesh, rules, c.seed)
        if c.warm_start.steps:
            arrays = sft.sft_arrays(tok, data.prompter_demos, c.warm_start.max_length)
            params0, _ = sft.run_sft(os.path.join(workdir, "warm_start"), module, params0, arrays, c.warm_start,
                                     mesh, rules, trainable=model_factory.TRAINABLE.get(c.model.trainable))
        router = build_router(c, build_genrm(c, workdir, data, mesh, rules))
        router.check(data.pool + data.heldout)
        roles = rl_common.build_roles(c, mesh, rules, module)
        p, f = c.ppo, c.frozen
        frozen_gen = PolicyGenerator(f_module, f_tok, mesh, hf.param_shardings(f_module, mesh, rules),
                                     batch_size=f.batch_size, max_prompt_length=f.max_prompt_length,
                                     max_new_tokens=f.max_new_tokens,
                                     sampling=SamplingConfig(f.sampling, f.temperature))
        env = AlignProEnv(frozen_gen, f_params, router, template=c.align_pro.frozen_template,
                          overflow_reward=c.align_pro.overflow_reward)
        prompter = PolicyGenerator(module, tok, mesh, roles.actor_param_shardings, batch_size=p.eval_batch_size,
                                   max_prompt_length=p.max_prompt_length, max_new_tokens=p.max_new_tokens,
                                   sampling=SamplingConfig("greedy"))
        text_fn = lambda r: c.align_pro.prompter_template.format(prompt=r.prompt)
        sampler = CurriculumSampler(data.pool, p.prompts_per_step, Curriculum(), c.data.seed,
                                    encode=rl_common.prompt_encoder(tok, p.max_prompt_length, text_fn))
        # The prompter's reference rho_sft is params0.
        final, initial = rl_common.train_cycles(c, workdir, mesh, roles, tok, params0, env, sampler,
                                                make_eval_fn(c, prompter, env, data.heldout), writer)
    result = {**rl_common.jsonable(final), **{f"initial_{k}": v for k, v in rl_common.jsonable(initial).items()
                                              if "without_prompter" not in k},
              "steps": c.train.steps, "examples": final.get("examples", [])}
    setup.report("align_pro", result, writer)
    writer.close()
    return result
