"""LongPO evals: held-out preference accuracy and (synthetic task) greedy long- / short-context accuracy.

    evaluator = Evaluator(ctx, config, tokenizer_path, records, heldout)
    metrics = evaluator(gen_module, logp_module, params)

Preference accuracy: the policy's implicit reward against the cached
short-context reference, on generated samples kept out of training. Task
accuracy: greedy answers to each eval record's question over its long and its
short context, checked by data.synthetic.longdoc.is_correct. Generators and
log-prob functions are built once per module configuration (a RoPE theta).
"""

import functools

import jax
import ml_collections
import numpy as np

from mm_rlhf_jax.algorithms.longpo import data as longpo_data, step as step_lib
from mm_rlhf_jax.data.longpo import prompts
from mm_rlhf_jax.data.longpo.pipeline import SampleSource, padded_batches
from mm_rlhf_jax.data.synthetic import longdoc
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.rollout.strategies import SamplingConfig
from mm_rlhf_jax.sharding import placement
from mm_rlhf_jax.train import phase


class Evaluator:
    """evaluator(module for generation, module for log-probs, params) -> flat metrics."""

    def __init__(self, ctx: phase.RunContext, config: ml_collections.ConfigDict, tokenizer_path: str, records,
                 heldout: SampleSource | None, *, zigzag_shards: int = 0):
        self.ctx, self.config, self.tokenizer_path = ctx, config, tokenizer_path
        self.records, self.heldout = records[: config.eval.num_records], heldout
        self.zigzag_shards = zigzag_shards  # of the log-prob module's attention (step.zigzag_shards)
        self._generators: dict = {}
        self._logps: dict = {}

    def _generator(self, module):
        if module.config not in self._generators:
            e = self.config.eval
            self._generators[module.config] = longpo_data.conversation_generator(
                module, cached_tokenizer(self.tokenizer_path), self.ctx.mesh, max_new_tokens=e.max_new_tokens,
                sampling=SamplingConfig("greedy"), batch_size=e.batch_size)
        return self._generators[module.config]

    def task_accuracy(self, module, params) -> dict:
        if not self.records:
            return {}
        gen = self._generator(module).bind(params)
        out = {}
        for ctx in ("long_context", "short_context"):
            convs = [prompts.answer_prompt(rec[ctx], prompts.PHRASES[0], rec["question"]) for rec in self.records]
            texts = [g.text for g in gen(convs)]
            out[f"{ctx}_accuracy"] = float(np.mean([longdoc.is_correct(t, rec["value"])
                                                    for t, rec in zip(texts, self.records)]))
            out[f"{ctx}_example"] = texts[0]
        return out

    def preference_accuracy(self, module, params, *, zigzag_shards: int | None = None) -> dict:
        if self.heldout is None or not len(self.heldout):
            return {}
        c = self.config
        zz = self.zigzag_shards if zigzag_shards is None else zigzag_shards
        key = (module.config, zz)
        if key not in self._logps:
            self._logps[key] = jax.jit(functools.partial(step_lib.pair_logps_step, module=module, c=c.longpo,
                                                         zigzag_shards=zz))
        fn = self._logps[key]
        margins = []
        for batch, n in padded_batches(self.heldout, self.tokenizer_path, longpo_data.layout(c),
                                       c.data.eval_batch_size):
            ref = batch.pop("ref_logps")[:n]
            batch = {k: v for k, v in batch.items() if not k.startswith("ref_")}
            pol = placement.fetch(fn(params, placement.put_global_batch(batch, self.ctx.mesh)))[:n]
            margins.append((pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1]))
        m = np.concatenate(margins)
        # A pair whose two answers are the same text has a margin of zero up to the float noise of its two
        # branches (which differs with the process count): a tie, left out of the accuracy and counted.
        tied = np.asarray([s["chosens"] == s["rejecteds"] for s in self.heldout.samples])
        decided = m[~tied]
        return {"preference_accuracy": float(np.mean(decided > 0)) if len(decided) else float("nan"),
                "reward_margin": float(c.longpo.beta * m.mean()), "num_heldout_samples": int(len(m)),
                "num_tied_heldout_samples": int(tied.sum())}

    def __call__(self, gen_module, logp_module, params) -> dict:
        return {**self.preference_accuracy(logp_module, params), **self.task_accuracy(gen_module, params)}
