"""Host side of PPO-style RL, shared by PPO and Align-Pro.

One rollout + update cycle is one step of train/loop.run_loop:

    prompts (CurriculumSampler) -> rollout_step (jit, actor samples) -> decode ->
    env(records, texts) on the host (hybrid reward router; Align-Pro: frozen model + router) ->
    experience_step (jit: old/ref log-probs, values, advantages) ->
    epochs x minibatches of update_step (jit, state donated)

so checkpointing, SIGTERM, resume and non-finite checks are the loop's. Every
jitted phase has explicit in/out shardings: parameters by their logical axes
(TRAIN_RULES), rollout rows over the batch axes, scalars replicated. Sampling
randomness is fold_in(state.rng, state.step) and minibatch order is seeded by
(seed, step), so a resumed run repeats an uninterrupted one.
"""

import dataclasses
import functools
import json
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mm_rlhf_jax.data.errors import DataError
from mm_rlhf_jax.data.prompts_pool import PromptRecord
from mm_rlhf_jax.data.tokenize import encode_turns
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.models.heads import ModelWithHeads, ValueHead
from mm_rlhf_jax.rewards.router import RewardBatch, reward_metrics
from mm_rlhf_jax.rollout import left_pad
from mm_rlhf_jax.rollout.sampler import SampleOutput
from mm_rlhf_jax.rollout.strategies import SamplingConfig
from mm_rlhf_jax.sharding import replicated, unbox_values
from mm_rlhf_jax.sharding.mesh import BATCH_AXES, batch_size_divisor
from mm_rlhf_jax.train import checkpoint, loop, model_factory, partition, ppo_step, state as state_lib
from mm_rlhf_jax.train.optim import make_optimizer
from mm_rlhf_jax.train.sft import sft_block

# Advantage estimators that read a learned critic's values.
NEEDS_CRITIC = frozenset({"gae"})


def ppo_block(**overrides) -> ml_collections.ConfigDict:
    d = dict(
        prompts_per_step=16,  # prompts per rollout batch (global)
        samples_per_prompt=4,  # responses per prompt; the group size of grpo / rloo
        max_prompt_length=64,  # prompt tokens (left-padded); a longer prompt is an error naming its record
        max_new_tokens=16,
        sampling="temperature",  # a rollout.strategies name; top_k / top_p truncation is not in the PPO ratio
        temperature=1.0,  # also divides the logits of every training log-prob (as TRL)
        top_k=0,
        top_p=1.0,
        epochs=2,  # PPO epochs over each rollout batch
        num_minibatches=2,  # per epoch; rollout rows must split evenly
        advantage="gae",  # gae (critic) | grpo | rloo (losses.advantages.ADVANTAGE_ESTIMATORS)
        gamma=1.0,
        lam=0.95,
        whiten_advantages=True,  # over all response tokens of the rollout batch
        policy_loss="ppo",  # losses.ppo.POLICY_LOSSES
        clip_eps=0.2,
        clip_eps_high=0.0,  # 0 = clip_eps (symmetric); > clip_eps = DAPO-style clip-higher
        value_clip=0.2,  # 0 = unclipped value loss
        vf_coef=1.0,  # the critic has its own optimizer; this scales its loss
        entropy_coef=0.0,
        kl_mode="reward",  # reward (k-estimate in the token reward) | loss (added to the actor loss) | none
        kl_coef=0.05,
        kl_estimator="k1",  # k1 | k2 | k3 (losses.kl); k1 is the usual in-reward choice, k3 as a loss
        missing_stop_penalty=0.0,  # subtracted from the score of a response that hit max_new_tokens
        eval_batch_size=64,
        log_samples=4,  # (prompt, response, reward) rows written to samples.jsonl per logged cycle
    )
    d.update(overrides)
    return ml_collections.ConfigDict(d)


def critic_block(**overrides) -> ml_collections.ConfigDict:
    # The critic's trunk always starts as a copy of the initial actor, with a fresh value head.
    d = dict(
        train_trunk=True,  # False: only the value head trains
    )
    d.update(overrides)
    return ml_collections.ConfigDict(d)


def reward_block() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        # Source order (rewards.router): the paper's hacking-resistance ranking.
        order="verifier,genrm_ground_truth,genrm_reference",
        verifiers={"math": "math", "code": "code"},  # domain -> rewards.verifiers.VERIFIERS name
        transforms={},  # source -> (scale, shift); identity keeps RTV and GenRM on [0, 1]
        num_workers=2,  # verifier threads (sandbox runs are child processes)
    ))


def genrm_block(**overrides) -> ml_collections.ConfigDict:
    d = dict(
        enabled=False,
        init_from="",  # local judge checkpoint ("" + enabled: a tiny judge trained on synthetic verdicts)
        tokenizer="",
        template="default",  # rewards.genrm.JUDGE_TEMPLATES
        max_new_tokens=32,
        max_prompt_length=1024,
        batch_size=16,
        failure_value=0.0,  # reward of an unparsable verdict (logged as reward/invalid_fraction)
        warm_start=sft_block(),  # tiny judge only
    )
    d.update(overrides)
    return ml_collections.ConfigDict(d)


# ------------------------------------------------------------------------------------------ placement


def row_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def put_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array every process holds in full (multi-host safe)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def fetch(x) -> np.ndarray:
    """A (possibly multi-host) global array as a full host array."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def check_batch(n: int, mesh: Mesh, what: str) -> None:
    divisor = batch_size_divisor(mesh)
    if n % divisor:
        raise ValueError(f"{what} = {n} rows must divide evenly over the mesh's batch axes "
                         f"({dict((a, mesh.shape[a]) for a in BATCH_AXES)}, total {divisor})")


# ---------------------------------------------------------------------------------------------- prompts


def encode_prompts(tokenizer, records: Sequence[PromptRecord], texts: Sequence[str], max_length: int) -> list:
    """Chat-templated prompt ids (up to the assistant header) of each text; errors name the record."""
    out = []
    for rec, text in zip(records, texts):
        ids, _ = encode_turns(tokenizer, text, None, max_length=max_length, media=None, where=rec.where)
        out.append(ids.tolist())
    return out


def decode(tokenizer, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
    return [tokenizer.decode(np.asarray(t)[: int(n)].tolist(), skip_special_tokens=True).strip()
            for t, n in zip(tokens, lengths)]


class PolicyGenerator:
    """texts = gen(params, user_texts): a policy's answers through the jitted sampler, fixed shapes.

    Rows are padded with repeats up to batch_size and prompts left-padded to
    max_prompt_length, so one compiled program serves every call.
    """

    def __init__(self, module, tokenizer, mesh: Mesh, param_shardings, *, batch_size: int, max_prompt_length: int,
                 max_new_tokens: int, sampling: SamplingConfig):
        check_batch(batch_size, mesh, "generation batch size")
        self.tokenizer, self.mesh, self.batch_size, self.max_prompt_length = tokenizer, mesh, batch_size, max_prompt_length
        c = ml_collections.ConfigDict(dict(max_new_tokens=max_new_tokens, sampling=sampling.strategy,
                                           temperature=sampling.temperature, top_k=sampling.top_k,
                                           top_p=sampling.top_p))
        rows = row_sharding(mesh, 2)
        out_sh = SampleOutput(tokens=rows, logprobs=rows, mask=rows, lengths=row_sharding(mesh, 1))
        self._sample = jax.jit(
            functools.partial(ppo_step.rollout_step, module=module, c=c, stop_ids=(int(tokenizer.eos_token_id),)),
            in_shardings=(param_shardings, {"prompt_ids": rows, "prompt_mask": rows}, replicated(mesh),
                          replicated(mesh)),
            out_shardings=out_sh)

    def fits(self, text: str) -> bool:
        """Does `text` fit max_prompt_length as a chat-templated prompt?"""
        try:
            encode_turns(self.tokenizer, text, None, max_length=self.max_prompt_length, media=None)
        except DataError:
            return False
        return True

    def __call__(self, params, user_texts: Sequence[str], *, records: Sequence[PromptRecord] | None = None,
                 seed: int = 0) -> list[str]:
        records = records or [PromptRecord(id=str(i), prompt=t, domain="?") for i, t in enumerate(user_texts)]
        encoded = encode_prompts(self.tokenizer, records, user_texts, self.max_prompt_length)
        rows, repl = row_sharding(self.mesh, 2), replicated(self.mesh)
        texts = []
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start:start + self.batch_size]
            n = len(chunk)
            ids, mask = left_pad(chunk + [chunk[0]] * (self.batch_size - n), int(self.tokenizer.pad_token_id),
                                 self.max_prompt_length)
            prompts = {"prompt_ids": put_global(ids, rows), "prompt_mask": put_global(mask, rows)}
            rng = jax.device_put(jax.random.PRNGKey(seed), repl)
            out = self._sample(params, prompts, rng, jax.device_put(jnp.int32(start), repl))
            texts += decode(self.tokenizer, fetch(out.tokens)[:n], fetch(out.lengths)[:n])
        return texts


# ------------------------------------------------------------------------------------------------ roles


@dataclasses.dataclass
class Roles:
    """Modules, optimizers, trainable masks and shardings of the trained roles (actor, critic)."""

    actor_module: object
    critic_module: object | None
    actor_tx: object
    critic_tx: object | None
    actor_mask: object
    critic_mask: object | None
    shardings: ppo_step.RLState  # NamedShardings of every RLState leaf
    actor_param_shardings: object
    critic_param_shardings: object | None


def build_roles(c: ml_collections.ConfigDict, mesh: Mesh, rules, actor_module) -> Roles:
    updates = c.train.steps * c.ppo.epochs * c.ppo.num_minibatches
    actor_tx = make_optimizer(c.optim, updates)
    abstract = hf.abstract_params(actor_module)
    actor_mask = partition.trainable_mask(unbox_values(abstract), model_factory.TRAINABLE.get(c.model.trainable))
    actor_sh = state_lib.state_shardings(abstract, mesh, rules, actor_tx, actor_mask)
    critic_module = critic_tx = critic_mask = critic_sh = None
    if c.ppo.advantage in NEEDS_CRITIC:
        critic_module = ModelWithHeads(trunk=actor_module, value_head=ValueHead())
        critic_abstract = hf.abstract_params(critic_module)
        critic_tx = make_optimizer(c.critic_optim, updates)
        patterns = (".*",) if c.critic.train_trunk else ("value_head/.*",)
        critic_mask = partition.trainable_mask(unbox_values(critic_abstract), patterns)
        critic_sh = state_lib.state_shardings(critic_abstract, mesh, rules, critic_tx, critic_mask)
    shardings = ppo_step.RLState(step=replicated(mesh), actor=actor_sh, critic=critic_sh, rng=replicated(mesh))
    return Roles(actor_module, critic_module, actor_tx, critic_tx, actor_mask, critic_mask, shardings,
                 actor_sh.params, None if critic_sh is None else critic_sh.params)


def copy_params(params, shardings):
    """Fresh buffers (the actor state is donated every update; the reference must not alias it)."""
    return jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings)(params)


def init_rl_state(roles: Roles, actor_params, seed: int) -> ppo_step.RLState:
    sh = roles.shardings
    actor = state_lib.create_state(copy_params(actor_params, roles.actor_param_shardings), roles.actor_tx,
                                   roles.actor_mask, jax.random.PRNGKey(seed + 1), sh.actor)
    critic = None
    if roles.critic_module is not None:
        hidden = hidden_size(roles.actor_module, actor_params)
        head = ValueHead().init(jax.random.PRNGKey(seed + 2), jnp.zeros((1, 1, hidden), jnp.float32))["params"]
        params = {"trunk": actor_params, "value_head": unbox_values(head)}
        critic = state_lib.create_state(copy_params(params, roles.critic_param_shardings), roles.critic_tx,
                                        roles.critic_mask, jax.random.PRNGKey(seed + 3), sh.critic)
    return ppo_step.RLState(step=jax.device_put(jnp.zeros((), jnp.int32), sh.step), actor=actor, critic=critic,
                            rng=jax.device_put(jax.random.PRNGKey(seed + 4), sh.rng))


def hidden_size(module, params) -> int:
    """Hidden size of a policy, read off its LM head w[H, V]."""
    return int(module.lm_head_weight(params).shape[0])


def abstract_rl_state(roles: Roles, seed: int):
    """The RLState as ShapeDtypeStructs with target shardings (the checkpoint restore target)."""
    actor_abs = unbox_values(hf.abstract_params(roles.actor_module))
    fn = lambda p: init_rl_state(roles, p, seed)
    abstract = jax.eval_shape(fn, actor_abs)
    return checkpoint.abstract_like(abstract, roles.shardings)


# ---------------------------------------------------------------------------------------------- trainer


class RLTrainer:
    """cycle(state, batch) -> (state, metrics): one rollout + update cycle (a run_loop step_fn).

    env(records, texts) -> RewardBatch scores each sampled response; records are
    the prompt records (repeated samples_per_prompt times), texts the decoded samples.
    """

    def __init__(self, c: ml_collections.ConfigDict, mesh: Mesh, roles: Roles, tokenizer, ref_params,
                 env: Callable[[list, list], RewardBatch], *, sample_log: str | None = None):
        p = c.ppo
        self.c, self.p, self.mesh, self.roles, self.tokenizer, self.env = c, p, mesh, roles, tokenizer, env
        self.ref_params, self.sample_log = ref_params, sample_log
        self.n = p.prompts_per_step * p.samples_per_prompt
        if p.num_minibatches < 1 or self.n % p.num_minibatches:
            raise ValueError(f"rollout batch of {self.n} rows (prompts_per_step x samples_per_prompt) does not split "
                             f"into num_minibatches={p.num_minibatches}")
        if p.advantage not in NEEDS_CRITIC and p.samples_per_prompt < 2:
            raise ValueError(f"advantage={p.advantage!r} compares samples of a prompt: set samples_per_prompt >= 2")
        check_batch(self.n, mesh, "rollout batch (prompts_per_step x samples_per_prompt)")
        check_batch(self.n // p.num_minibatches, mesh, "minibatch")
        self.stop_ids = (int(tokenizer.eos_token_id),)
        rows2, rows1, repl = row_sharding(mesh, 2), row_sharding(mesh, 1), replicated(mesh)
        prompt_sh = {"prompt_ids": rows2, "prompt_mask": rows2}
        self._sample = jax.jit(
            functools.partial(ppo_step.rollout_step, module=roles.actor_module, c=p, stop_ids=self.stop_ids),
            in_shardings=(roles.actor_param_shardings, prompt_sh, repl, repl),
            out_shardings=SampleOutput(tokens=rows2, logprobs=rows2, mask=rows2, lengths=rows1))
        exp_keys = ("input_ids", "attention_mask", "positions", "response_mask", "old_logp", "ref_logp",
                    "old_values", "advantages", "returns")
        exp_sh = {k: rows2 for k in exp_keys}
        self._experience = jax.jit(
            functools.partial(ppo_step.experience_step, actor_module=roles.actor_module,
                              critic_module=roles.critic_module, c=p),
            in_shardings=(roles.actor_param_shardings, roles.actor_param_shardings, roles.critic_param_shardings,
                          prompt_sh, {"tokens": rows2, "mask": rows2}, rows1),
            out_shardings=(exp_sh, repl))
        self._update = jax.jit(
            functools.partial(ppo_step.update_step, actor_module=roles.actor_module, critic_module=roles.critic_module,
                              actor_tx=roles.actor_tx, critic_tx=roles.critic_tx, actor_mask=roles.actor_mask,
                              critic_mask=roles.critic_mask, c=p),
            in_shardings=(roles.shardings, exp_sh, repl), out_shardings=(roles.shardings, repl),
            donate_argnames=("state",))

    def rollout(self, state, batch) -> tuple[dict, SampleOutput, list, list[str]]:
        """(device prompts, device samples, repeated records, decoded texts) for a prompt batch."""
        g = self.p.samples_per_prompt
        rows2 = row_sharding(self.mesh, 2)
        prompts = {k: put_global(np.repeat(np.asarray(batch[k]), g, axis=0), rows2)
                   for k in ("prompt_ids", "prompt_mask")}
        records = [r for r in batch["records"] for _ in range(g)]
        out = self._sample(state.actor.params, prompts, state.rng, state.step)
        texts = decode(self.tokenizer, fetch(out.tokens), fetch(out.lengths))
        return prompts, out, records, texts

    def cycle(self, state: ppo_step.RLState, batch: dict):
        p = self.p
        t0 = time.perf_counter()
        step = int(fetch(state.step))
        prompts, out, records, texts = self.rollout(state, batch)
        t1 = time.perf_counter()
        rewards = self.env(records, texts)
        t2 = time.perf_counter()
        tokens, lengths = fetch(out.tokens), fetch(out.lengths)
        last = tokens[np.arange(len(tokens)), np.maximum(lengths - 1, 0)]
        stopped = (lengths > 0) & np.isin(last, self.stop_ids)
        scores = rewards.rewards - p.missing_stop_penalty * (~stopped)
        critic_params = None if state.critic is None else state.critic.params
        exp, exp_metrics = self._experience(state.actor.params, self.ref_params, critic_params, prompts,
                                            {"tokens": out.tokens, "mask": out.mask},
                                            put_global(scores.astype(np.float32), row_sharding(self.mesh, 1)))
        order = np.random.default_rng([self.c.seed, step])
        size = self.n // p.num_minibatches
        updates = []
        for _ in range(p.epochs):
            perm = order.permutation(self.n)
            for k in range(p.num_minibatches):
                idx = jax.device_put(perm[k * size:(k + 1) * size].astype(np.int32), replicated(self.mesh))
                state, m = self._update(state, exp, idx)
                updates.append(m)
        metrics = {k: jnp.mean(jnp.stack([u[k] for u in updates])) for k in updates[0]}
        jax.block_until_ready(metrics)
        metrics.update({"time/rollout_s": t1 - t0, "time/reward_s": t2 - t1, "time/update_s": time.perf_counter() - t2})
        metrics.update(exp_metrics)
        metrics.update(reward_metrics(rewards, records))
        metrics["rollout/response_length"] = float(lengths.mean())
        metrics["rollout/stop_fraction"] = float(stopped.mean())
        self._log_samples(step, records, texts, rewards)
        return state.replace(step=state.step + 1), metrics

    def _log_samples(self, step, records, texts, rewards) -> None:
        if not self.sample_log or jax.process_index() != 0 or step % self.c.train.log_every:
            return
        with open(self.sample_log, "a", encoding="utf-8") as f:
            for i in range(min(self.p.log_samples, len(texts))):
                row = {"step": step, "id": records[i].id, "prompt": records[i].prompt, "response": texts[i],
                       "reward": float(rewards.rewards[i])}
                if rewards.details is not None:
                    row["details"] = rewards.details[i]
                f.write(json.dumps(row) + "\n")


def prompt_encoder(tokenizer, max_length: int, text_fn: Callable[[PromptRecord], str] = lambda r: r.prompt):
    """records -> {"prompt_ids", "prompt_mask": int32[B, max_length]} (the CurriculumSampler's encode)."""
    cache: dict[str, list[int]] = {}

    def encode(records: list[PromptRecord]) -> dict:
        seqs = []
        for r in records:
            if r.id not in cache:
                cache[r.id] = encode_prompts(tokenizer, [r], [text_fn(r)], max_length)[0]
            seqs.append(cache[r.id])
        ids, mask = left_pad(seqs, int(tokenizer.pad_token_id), max_length)
        return {"prompt_ids": ids, "prompt_mask": mask}

    return encode


def reward_summary(batch: RewardBatch) -> dict:
    """mean and (population) variance of rewards: Align-Pro's eval statistics."""
    r = np.asarray(batch.rewards, np.float64)
    return {"mean": float(r.mean()), "variance": float(r.var())}


def jsonable(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool))}


def train_cycles(c: ml_collections.ConfigDict, workdir: str, mesh: Mesh, roles: Roles, tokenizer, params0, env,
                 sampler, eval_fn: Callable, writer):
    """The RL run's main phase; returns (final eval, initial eval).

    The state comes from workdir/checkpoints (the prompt sampler is
    repositioned with it) or starts from params0; the starting policy is
    evaluated once (initial_eval.json); then c.train.steps rollout + update
    cycles. params0 is never donated (the state holds copies), so it serves as
    the frozen reference.
    """
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=c.train.max_checkpoints)
    state = loop.restore_if_any(ckpt, abstract_rl_state(roles, c.seed), sampler)
    if state is None:
        state = init_rl_state(roles, params0, c.seed)
    initial = writer.json_once("initial_eval.json", lambda: eval_fn(params0))
    trainer = RLTrainer(c, mesh, roles, tokenizer, params0, env, sample_log=os.path.join(workdir, "samples.jsonl"))
    _, final = loop.run_loop(
        state=state, step_fn=trainer.cycle, data_iter=sampler, put_batch=lambda b: b,
        total_steps=c.train.steps, checkpointer=ckpt, writer=writer,
        eval_fn=lambda s: eval_fn(s.actor.params), log_every=c.train.log_every,
        eval_every=c.train.eval_every, checkpoint_every=c.train.checkpoint_every)
    ckpt.close()
    return final, initial

