"""The host side of PPO-style RL (PPO, GRPO, RLOO; Align-Pro runs it on a prompter).

One rollout + update cycle is one step of train/loop.run_loop:

    prompts (data.curriculum.CurriculumSampler) -> rollout (rollout.generate.Generator.sample:
    the actor resharded into the sampling layout) -> decode -> env(records, texts) on the host
    (hybrid reward router; Align-Pro: frozen model + router) -> experience_step (jit: old/ref
    log-probs, values, advantages) -> epochs x minibatches of update_step (jit, state donated)

so checkpointing, SIGTERM, resume and non-finite checks are the loop's. Every
jitted phase has explicit out shardings: parameters by their logical axes
(training layout), rollout rows over the batch axes, scalars replicated.
Sampling randomness is fold_in(state.rng, state.step) and minibatch order is
seeded by (seed, step), so a resumed run repeats an uninterrupted one.
"""

import dataclasses
import functools
import json
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mm_rlhf_jax import distributed, storage
from mm_rlhf_jax.algorithms.ppo import objectives, step as step_lib
from mm_rlhf_jax.data.prompts_pool import PromptRecord
from mm_rlhf_jax.data.tokenize import encode_turns
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.models.heads import ModelWithHeads, ValueHead
from mm_rlhf_jax.rewards.router import RewardBatch, reward_metrics
from mm_rlhf_jax.rollout.generate import Generator
from mm_rlhf_jax.rollout.sampler import left_pad
from mm_rlhf_jax.rollout.strategies import SamplingConfig
from mm_rlhf_jax.sharding import SAMPLING_RULES, placement, replicated, unbox_values
from mm_rlhf_jax.train import checkpoint, partition, phase, state as state_lib
from mm_rlhf_jax.train.optim import make_optimizer

def sampling_config(p: ml_collections.ConfigDict) -> SamplingConfig:
    """The rollout sampling of a `ppo` block."""
    return SamplingConfig(strategy=p.sampling, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)


# ---------------------------------------------------------------------------------------------- prompts


def record_encoder(tokenizer, max_length: int):
    """encode((record, text)) -> Prompt: the chat-templated text up to the assistant header; errors name the record."""

    def encode(item) -> dict:
        rec, text = item
        ids, _ = encode_turns(tokenizer, text, None, max_length=max_length, media=None, where=rec.where)
        return {"prompt_ids": ids}

    return encode


def policy_generator(module, tokenizer, mesh, rules_shardings, *, batch_size: int, max_prompt_length: int,
                     max_new_tokens: int, sampling: SamplingConfig) -> Generator:
    """A generator for (record, text) items at a fixed prompt length (one compile per setting)."""
    return Generator(module, tokenizer, mesh, max_new_tokens=max_new_tokens, batch_size=batch_size,
                     encode=record_encoder(tokenizer, max_prompt_length), sampling=sampling,
                     prompt_length=max_prompt_length, param_shardings=rules_shardings)


def prompt_encoder(tokenizer, max_length: int, text_fn: Callable[[PromptRecord], str] = lambda r: r.prompt):
    """records -> {"prompt_ids", "prompt_mask": int32[B, max_length]} (the CurriculumSampler's encode)."""
    cache: dict[str, list[int]] = {}
    encode = record_encoder(tokenizer, max_length)

    def encode_batch(records: list[PromptRecord]) -> dict:
        seqs = []
        for r in records:
            if r.id not in cache:
                cache[r.id] = encode((r, text_fn(r)))["prompt_ids"].tolist()
            seqs.append(cache[r.id])
        ids, mask = left_pad(seqs, int(tokenizer.pad_token_id), max_length)
        return {"prompt_ids": ids, "prompt_mask": mask}

    return encode_batch


def decode(tokenizer, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
    return [tokenizer.decode(np.asarray(t)[: int(n)].tolist(), skip_special_tokens=True).strip()
            for t, n in zip(tokens, lengths)]


# ------------------------------------------------------------------------------------------------ roles


@dataclasses.dataclass(frozen=True)
class Role:
    """A trained model of the RL state: module, optimizer, trainable mask and TrainState shardings."""

    module: object
    tx: object
    mask: object
    shardings: state_lib.TrainState  # NamedShardings of every TrainState leaf

    @property
    def param_shardings(self):
        return self.shardings.params


@dataclasses.dataclass(frozen=True)
class Roles:
    actor: Role
    critic: Role | None  # None for critic-free estimators (grpo, rloo)
    mesh: object

    @property
    def shardings(self) -> step_lib.RLState:
        repl = replicated(self.mesh)
        return step_lib.RLState(step=repl, actor=self.actor.shardings,
                                critic=None if self.critic is None else self.critic.shardings, rng=repl)


def _role(module, tx, patterns, mesh, rules) -> Role:
    abstract = hf.abstract_params(module)
    mask = partition.trainable_mask(unbox_values(abstract), patterns)
    return Role(module, tx, mask, state_lib.state_shardings(abstract, mesh, rules, tx, mask))


def build_roles(config: ml_collections.ConfigDict, ctx: phase.RunContext, actor_module,
                trainable: tuple[str, ...]) -> Roles:
    """The actor (and, for gae, the critic: the actor's trunk + a value head) from the run's config."""
    p = config.ppo
    updates = config.train.steps * p.epochs * p.num_minibatches
    actor = _role(actor_module, make_optimizer(config.optim, updates), trainable, ctx.mesh, ctx.rules)
    critic = None
    if objectives.resolve(p).critic:
        patterns = (".*",) if config.critic.train_trunk else ("value_head/.*",)
        critic = _role(ModelWithHeads(trunk=actor_module, value_head=ValueHead()),
                       make_optimizer(config.critic_optim, updates), patterns, ctx.mesh, ctx.rules)
    return Roles(actor, critic, ctx.mesh)


def copy_params(params, shardings):
    """Fresh buffers (the actor state is donated every update; the reference must not alias it)."""
    return jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings)(params)


def hidden_size(module, params) -> int:
    """Hidden size of a policy, read off its LM head w[H, V]."""
    return int(module.lm_head_weight(params).shape[0])


def init_rl_state(roles: Roles, actor_params, seed: int) -> step_lib.RLState:
    sh = roles.shardings
    a = roles.actor
    actor = state_lib.create_state(copy_params(actor_params, a.param_shardings), a.tx, a.mask,
                                   jax.random.PRNGKey(seed + 1), sh.actor)
    critic = None
    if roles.critic is not None:
        c = roles.critic
        hidden = hidden_size(a.module, actor_params)
        head = ValueHead().init(jax.random.PRNGKey(seed + 2), jnp.zeros((1, 1, hidden), jnp.float32))["params"]
        params = {"trunk": actor_params, "value_head": unbox_values(head)}
        critic = state_lib.create_state(copy_params(params, c.param_shardings), c.tx, c.mask,
                                        jax.random.PRNGKey(seed + 3), sh.critic)
    return step_lib.RLState(step=jax.device_put(jnp.zeros((), jnp.int32), sh.step), actor=actor, critic=critic,
                            rng=jax.device_put(jax.random.PRNGKey(seed + 4), sh.rng))


def abstract_rl_state(roles: Roles, seed: int):
    """The RLState as ShapeDtypeStructs with target shardings (the checkpoint restore target)."""
    actor_abs = unbox_values(hf.abstract_params(roles.actor.module))
    abstract = jax.eval_shape(lambda p: init_rl_state(roles, p, seed), actor_abs)
    return checkpoint.abstract_like(abstract, roles.shardings)


# ------------------------------------------------------------------------------------------- jit phases


def update_jit(p, roles: Roles, microbatches: int = 1):
    """update_step(state, experience, idx) jitted with the RL state donated."""
    a, c = roles.actor, roles.critic
    return jax.jit(
        functools.partial(step_lib.update_step, actor_module=a.module, critic_module=None if c is None else c.module,
                          actor_tx=a.tx, critic_tx=None if c is None else c.tx, actor_mask=a.mask,
                          critic_mask=None if c is None else c.mask, c=p, microbatches=microbatches),
        out_shardings=(roles.shardings, replicated(roles.mesh)), donate_argnames=("state",))


def experience_fn(p, roles: Roles):
    """experience_step over (actor params, reference params, critic params, prompts, rollout, scores)."""
    return functools.partial(step_lib.experience_step, actor_module=roles.actor.module,
                             critic_module=None if roles.critic is None else roles.critic.module, c=p)


def experience_jit(fn, mesh, *args):
    """fn jitted with every output row-sharded and metrics replicated (structure from an abstract call)."""
    exp, metrics = jax.eval_shape(fn, *args)
    rows = lambda x: placement.row_sharding(mesh, x.ndim)
    return jax.jit(fn, out_shardings=(jax.tree.map(rows, exp), jax.tree.map(lambda _: replicated(mesh), metrics)))



# ---------------------------------------------------------------------------------------------- trainer


class RLTrainer:
    """cycle(state, batch) -> (state, metrics): one rollout + update cycle (a run_loop step_fn).

    env(records, texts) -> RewardBatch scores each sampled response; records are
    the prompt records (repeated samples_per_prompt times), texts the decoded samples.
    """

    def __init__(self, p: ml_collections.ConfigDict, roles: Roles, tokenizer, ref_params,
                 env: Callable[[list, list], RewardBatch], *, seed: int, log_every: int,
                 sample_log: str | None = None, microbatches: int = 1):
        self.p, self.roles, self.mesh, self.tokenizer, self.env = p, roles, roles.mesh, tokenizer, env
        self.ref_params, self.seed, self.log_every, self.sample_log = ref_params, seed, log_every, sample_log
        self._samples = None  # the samples.jsonl appender, opened on the first logged step
        self.n = p.prompts_per_step * p.samples_per_prompt
        if p.num_minibatches < 1 or self.n % p.num_minibatches:
            raise ValueError(f"rollout batch of {self.n} rows (prompts_per_step x samples_per_prompt) does not split "
                             f"into num_minibatches={p.num_minibatches}")
        objectives.resolve(p)  # a bad knob combination fails here, before any compile
        placement.check_rows(self.n, self.mesh, "rollout batch (prompts_per_step x samples_per_prompt)")
        placement.check_rows(self.n // p.num_minibatches, self.mesh, "minibatch")
        actor = roles.actor
        self.generator = Generator(actor.module, tokenizer, self.mesh, max_new_tokens=p.max_new_tokens,
                                   batch_size=self.n, sampling=sampling_config(p), prompt_length=p.max_prompt_length,
                                   param_shardings=hf.param_shardings(actor.module, self.mesh, SAMPLING_RULES),
                                   slots=p.rollout_slots or None)
        self.stop_ids = self.generator.stop_ids
        self._experience_fn, self._experience = experience_fn(p, roles), None
        self._update = update_jit(p, roles, microbatches)

    def _experience_jit(self, *args):
        """experience_step jitted with every output row-sharded (built on first use, as spec builds it)."""
        if self._experience is None:
            self._experience = experience_jit(self._experience_fn, self.mesh, *args)
        return self._experience(*args)

    def rollout(self, state, batch) -> tuple[dict, object, list, list[str]]:
        """(device prompts, device samples, repeated records, decoded texts) for a prompt batch."""
        g = self.p.samples_per_prompt
        unique = {k: np.asarray(batch[k]) for k in ("prompt_ids", "prompt_mask")}
        host = {k: np.repeat(v, g, axis=0) for k, v in unique.items()}
        prompts = placement.put_global_batch(host, self.mesh)  # the group's rows, for the experience pass
        records = [r for r in batch["records"] for _ in range(g)]
        params = self.generator.prepare(state.actor.params)
        if self.generator.shares_prefill(g):  # one prefill per prompt, its cache shared by the group
            out = self.generator.sample(params, unique, state.rng, state.step, num_samples=g)
        else:
            out = self.generator.sample(params, prompts, state.rng, state.step)
        texts = decode(self.tokenizer, placement.fetch(out.tokens), placement.fetch(out.lengths))
        return prompts, out, records, texts

    def cycle(self, state: step_lib.RLState, batch: dict):
        p = self.p
        t0 = time.perf_counter()
        step = int(placement.fetch(state.step))
        prompts, out, records, texts = self.rollout(state, batch)
        t1 = time.perf_counter()
        rewards = self.env(records, texts)
        # Every process scored every sample; the update uses process 0's scores, so a reward that differs
        # between hosts (a sandbox timeout) cannot make their states diverge.
        rewards = dataclasses.replace(rewards, rewards=placement.from_primary(rewards.rewards),
                                      valid=placement.from_primary(rewards.valid))
        t2 = time.perf_counter()
        tokens, lengths = placement.fetch(out.tokens), placement.fetch(out.lengths)
        last = tokens[np.arange(len(tokens)), np.maximum(lengths - 1, 0)]
        stopped = (lengths > 0) & np.isin(last, self.stop_ids)
        scores = rewards.rewards - p.missing_stop_penalty * (~stopped)
        critic_params = None if state.critic is None else state.critic.params
        exp, exp_metrics = self._experience_jit(
            state.actor.params, self.ref_params, critic_params, prompts, {"tokens": out.tokens, "mask": out.mask},
            placement.put_global(scores.astype(np.float32), placement.row_sharding(self.mesh, 1)))
        order = np.random.default_rng([self.seed, step])
        size = self.n // p.num_minibatches
        updates = []
        for _ in range(p.epochs):
            perm = order.permutation(self.n)
            for k in range(p.num_minibatches):
                idx = placement.put_replicated(perm[k * size:(k + 1) * size].astype(np.int32), self.mesh)
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
        if not self.sample_log or not distributed.is_primary() or step % self.log_every:
            return
        if self._samples is None:
            self._samples = storage.Appender(self.sample_log)
        for i in range(min(self.p.log_samples, len(texts))):
            row = {"step": step, "id": records[i].id, "domain": records[i].domain, "prompt": records[i].prompt,
                   "response": texts[i], "reward": float(rewards.rewards[i]), "source": rewards.routes[i]}
            if rewards.details is not None:
                row["details"] = rewards.details[i]
            self._samples.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self._samples is not None:
            self._samples.close()
            self._samples = None


def train_cycles(ctx: phase.RunContext, config: ml_collections.ConfigDict, roles: Roles, tokenizer, params0, env,
                 sampler, eval_fn: Callable) -> phase.PhaseResult:
    """The RL run's main phase (through phase.run_phase): returns the final and initial evals.

    The state comes from workdir/checkpoints (the prompt sampler is
    repositioned with it) or starts from params0; the starting policy is
    evaluated once (initial_eval.json); then train.steps rollout + update
    cycles. params0 is never donated (the state holds copies), so it serves as
    the frozen reference. eval_fn(actor params) -> metrics.
    """
    t = config.train
    trainer = RLTrainer(config.ppo, roles, tokenizer, params0, env, seed=config.seed, log_every=t.log_every,
                        sample_log=ctx.path("samples.jsonl"), microbatches=t.microbatches)
    try:
        return phase.run_phase(
            ctx.workdir, ctx, state_fn=lambda: init_rl_state(roles, params0, config.seed),
            abstract_state=abstract_rl_state(roles, config.seed), step_fn=trainer.cycle, data_iter=sampler,
            steps=t.steps, log_every=t.log_every, checkpoint_every=t.checkpoint_every, max_to_keep=t.max_checkpoints,
            eval_fn=lambda s: eval_fn(s.actor.params), eval_every=t.eval_every, initial_eval="initial_eval.json",
            writer=ctx.writer, put=lambda b: b)
    finally:
        trainer.close()


def greedy_eval_texts(gen: Generator, params, records: Sequence[PromptRecord],
                      text_fn: Callable[[PromptRecord], str] = lambda r: r.prompt, seed: int = 0) -> list[str]:
    """The policy's answers to `records` (text_fn(record) as the user turn)."""
    return gen.texts(params, [(r, text_fn(r)) for r in records], seed=seed, progress="eval answers")
