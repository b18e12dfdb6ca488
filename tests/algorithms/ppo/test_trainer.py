"""RLTrainer: sharded == single-device cycles, exact resume through checkpoints, config errors."""

import contextlib

import flax.linen as nn
import jax
import numpy as np
import pytest

from mm_rlhf_jax.data.prompts_pool import PromptRecord
from mm_rlhf_jax.data.tokenizer import load_tokenizer
from mm_rlhf_jax.data.curriculum import Curriculum, CurriculumSampler
from mm_rlhf_jax.rewards.router import RewardBatch
from mm_rlhf_jax.sharding import TRAIN_RULES, make_mesh
from mm_rlhf_jax.data.synthetic import reasoning as tasks
from mm_rlhf_jax import config_lib
from mm_rlhf_jax.algorithms.ppo import trainer as rl_trainer
from mm_rlhf_jax.train import checkpoint, loop, metrics as metrics_lib, model_factory, phase


def config(**ppo):
    c = config_lib.schema("ppo")
    c.model = config_lib.model_block(multimodal=False, hidden_size=32, intermediate_size=64, num_layers=1,
                                     num_heads=4, num_kv_heads=2)
    c.train = config_lib.train_block(steps=3, log_every=1)
    c.optim = config_lib.optim_block(name="adam", lr=1e-2, warmup_ratio=0.0, schedule="constant")
    c.critic_optim = config_lib.optim_block(name="adam", lr=1e-2, warmup_ratio=0.0, schedule="constant")
    c.ppo = config_lib.ppo_block(**{**dict(prompts_per_step=4, samples_per_prompt=2, max_prompt_length=24,
                                           max_new_tokens=5, epochs=2, num_minibatches=1, eval_batch_size=8), **ppo})
    return c


def trainer(c, s, tok):
    return rl_trainer.RLTrainer(c.ppo, s.roles, tok, s.params0, env, seed=0, log_every=1)


def env(records, texts):
    """A deterministic reward of the text: distinct words / 5."""
    r = np.array([len(set(t.split())) / 5.0 for t in texts], np.float32)
    return RewardBatch(rewards=r, routes=["test"] * len(r), valid=np.ones(len(r), bool))


RECORDS = [PromptRecord(id=f"p{i}", prompt=f"What is the largest of {i} , {i + 1} and 3 ?", domain="math",
                        ground_truth=str(i + 1)) for i in range(6)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(tasks.build_tokenizer(str(tmp_path_factory.mktemp("tok"))))


class Setup:
    def __init__(self, c, mesh, tok):
        self.c, self.mesh, self.tok = c, mesh, tok
        with self.ctx():
            self.module, _ = model_factory.build(c.model, 0)
            self.params0 = model_factory.initial_params(c.model, self.module, mesh, TRAIN_RULES, 0)
            ctx = phase.RunContext(workdir="", mesh=mesh, rules=TRAIN_RULES, writer=None)
            self.roles = rl_trainer.build_roles(c, ctx, self.module, (".*",))
            self.trainer = trainer(c, self, tok)

    @contextlib.contextmanager
    def ctx(self):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(TRAIN_RULES):
            yield

    def sampler(self):
        return CurriculumSampler(RECORDS, self.c.ppo.prompts_per_step, Curriculum(), 0,
                                 encode=rl_trainer.prompt_encoder(self.tok, self.c.ppo.max_prompt_length))

    def fresh_state(self):
        with self.ctx():
            return rl_trainer.init_rl_state(self.roles, self.params0, 0)


@pytest.fixture(scope="module")
def sharded(tok, devices8):
    return Setup(config(), make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), tok)


@pytest.mark.slow  # two more compilations of every phase (~1 min on 2 CPU cores)
def test_sharded_cycle_equals_single_device(sharded, tok, devices8):
    one = Setup(config(), make_mesh({"fsdp": 1}, devices=devices8[:1]), tok)
    results = []
    for s in (one, sharded):
        state, sampler = s.fresh_state(), s.sampler()
        with s.ctx():
            state, m1 = s.trainer.cycle(state, next(sampler))
            state, m2 = s.trainer.cycle(state, next(sampler))
        results.append((jax.device_get(state.actor.params), jax.device_get(state.critic.params),
                        {k: float(v) for k, v in m2.items() if not k.startswith("time/")}, int(state.step)))
    (pa, ca, ma, sa), (pb, cb, mb, sb) = results
    assert sa == sb == 2
    assert ma["rollout/response_length"] == mb["rollout/response_length"]  # identical samples
    for k in ma:
        np.testing.assert_allclose(ma[k], mb[k], rtol=1e-4, atol=1e-5, err_msg=k)
    # Adam turns float noise in near-zero gradients (unused embedding rows) into updates of up to ~lr * 1e-2.
    for x, y in zip(jax.tree.leaves((pa, ca)), jax.tree.leaves((pb, cb))):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(pa),
                                                          jax.tree.leaves(jax.device_get(one.params0))))
    assert moved > 1e-4  # the updates changed the actor


def test_resume_from_checkpoint_repeats_an_uninterrupted_run(sharded, tmp_path):
    s = sharded

    def run(directory, steps, state=None):
        sampler = s.sampler()
        ckpt = checkpoint.Checkpointer(str(directory / "ckpt"), max_to_keep=2)
        with s.ctx():
            restored = loop.restore_if_any(ckpt, rl_trainer.abstract_rl_state(s.roles, 0), sampler)
            state = restored if restored is not None else s.fresh_state()
            writer = metrics_lib.MetricWriter(str(directory), tensorboard=False)
            state, _ = loop.run_loop(state=state, step_fn=s.trainer.cycle, data_iter=sampler, put_batch=lambda b: b,
                                     total_steps=steps, checkpointer=ckpt, writer=writer, checkpoint_every=1,
                                     progress=False)
        writer.close()
        ckpt.close()
        return state, restored is not None

    straight, _ = run(tmp_path / "a", 2)
    _, resumed_first = run(tmp_path / "b", 1)
    resumed, resumed_second = run(tmp_path / "b", 2)
    assert not resumed_first and resumed_second
    assert int(resumed.step) == 2 and int(resumed.actor.step) == 2 * 2  # epochs x minibatches per cycle
    for x, y in zip(jax.tree.leaves(jax.device_get((straight.actor, straight.critic))),
                    jax.tree.leaves(jax.device_get((resumed.actor, resumed.critic)))):
        np.testing.assert_array_equal(x, y)


def test_trainer_config_errors(sharded, tok):
    s = sharded
    with s.ctx():
        with pytest.raises(ValueError, match="does not split into num_minibatches=3"):
            trainer(config(num_minibatches=3), s, tok)
        with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
            trainer(config(advantage="rloo", samples_per_prompt=1, prompts_per_step=8), s, tok)
        with pytest.raises(ValueError, match=r"rollout batch .* = 6 rows must divide evenly"):
            trainer(config(prompts_per_step=3), s, tok)
        with pytest.raises(ValueError, match=r"ppo.policy_loss='reinforce' is on-policy"):
            trainer(config(advantage="rloo", policy_loss="reinforce"), s, tok)  # epochs=2 in config()


def test_rollout_slots_sample_the_same(sharded, tok):
    """ppo.rollout_slots (continuous batching, 4 of the 8 rollout rows decoding at once) == the lockstep rollout."""
    s = sharded
    cont = trainer(config(rollout_slots=4), s, tok)
    assert cont.generator.slots == 4 and s.trainer.generator.slots is None
    state, batch = s.fresh_state(), next(s.sampler())
    with s.ctx():
        _, want, _, want_texts = s.trainer.rollout(state, batch)
        _, got, _, got_texts = cont.rollout(state, batch)
    assert got_texts == want_texts
    np.testing.assert_array_equal(jax.device_get(got.tokens), jax.device_get(want.tokens))
    np.testing.assert_array_equal(jax.device_get(got.mask), jax.device_get(want.mask))
    np.testing.assert_allclose(jax.device_get(got.logprobs), jax.device_get(want.logprobs), atol=1e-5, rtol=0)


def test_critic_free_presets_build_no_critic(sharded):
    s = sharded
    ctx = phase.RunContext(workdir="", mesh=s.mesh, rules=TRAIN_RULES, writer=None)
    with s.ctx():
        assert s.roles.critic is not None  # gae
        for advantage in ("grpo", "rloo"):
            assert rl_trainer.build_roles(config(advantage=advantage), ctx, s.module, (".*",)).critic is None


@pytest.mark.slow  # the tiny preset end to end: SFT warm start, Pre-PPO, 100 PPO steps (6-13 min)
@pytest.mark.target
def test_tiny_ppo_raises_heldout_verifier_accuracy(tmp_path):
    import json
    import os

    from mm_rlhf_jax.main import get_algorithm

    result = get_algorithm("ppo")(config_lib.preset("ppo", "tiny"), str(tmp_path))
    assert result == json.load(open(tmp_path / "eval.json"))
    assert os.path.exists(tmp_path / "pre_ppo" / "selected.jsonl")
    assert result["verifier_accuracy"] >= result["initial_verifier_accuracy"] + 0.1
