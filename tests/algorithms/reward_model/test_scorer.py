"""The learned RM as a reward source: its scores equal a direct forward of the same RM on the same texts.

The direct forward is written here from the module contract alone: one
sequence [critic prompt(x, y) ; critique?] per response (data.tokenize
encode_turns), ModelWithHeads.apply, the reward at the last token. The scorer
goes through the RM run's own inference (pair records, the example encoder,
padded batches, placement, the jitted score step and, in critique mode, the
Generator).
"""

import json
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

from mm_rlhf_jax import config_lib, export
from mm_rlhf_jax.algorithms.reward_model import spec
from mm_rlhf_jax.algorithms.reward_model.inference import RewardModelInference
from mm_rlhf_jax.algorithms.reward_model.scorer import LearnedRM, pair_layout, pretrained_config, workdir_config
from mm_rlhf_jax.data.synthetic import reasoning as tasks
from mm_rlhf_jax.data.tokenize import critic_content, encode_turns
from mm_rlhf_jax.data.tokenizer import load_tokenizer
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.sharding import SAMPLING_RULES, TRAIN_RULES, make_mesh, placement
from mm_rlhf_jax.train import pair_data

MAX_LENGTH = 112
PROMPTS = ["What sound does a cow make ?", "What sound does a cow make ?", "What is 3 plus 4 ?",
           "What sound does a cow make ?", "What is 3 plus 4 ?", "Write a function f of x that returns x times 3 ."]
RESPONSES = ["The answer is moo .", "The answer is woof .", "The answer is 7 .", "moo", "The answer is 8 .",
             "def f ( x ): return x * 3"]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    return tasks.build_tokenizer(str(tmp_path_factory.mktemp("tok")))


def rm_config():
    c = config_lib.schema("reward_model")
    c.model = config_lib.model_block(multimodal=False, hidden_size=32, intermediate_size=64, num_layers=1,
                                     num_heads=4, num_kv_heads=2)
    return c


def direct_rewards(module, params, tok, users_and_critiques):
    out = []
    for user, critique in users_and_critiques:
        ids, _ = encode_turns(tok, user, critique, max_length=MAX_LENGTH, media=None)
        heads = module.apply({"params": params}, ids[None], attention_mask=np.ones((1, len(ids)), np.int32))
        out.append(float(heads.rewards[0, 0]))
    return np.asarray(out, np.float32)


@pytest.mark.parametrize("critique,sharded", [(False, False), (True, False), (False, True)],
                         ids=["scalar-1dev", "critique-1dev", "scalar-8dev"])
def test_scores_equal_a_direct_forward(tok_path, critique, sharded, devices8):
    mesh = make_mesh({"data": 2, "fsdp": 4}) if sharded else make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    c = rm_config()
    tok = load_tokenizer(tok_path)
    with jax.set_mesh(mesh), nn.logical_axis_rules(TRAIN_RULES):
        module, _ = spec.build_module(c)
        params = hf.init_params(module, jax.random.PRNGKey(3), mesh, TRAIN_RULES)
        # A larger head so rewards differ visibly between responses.
        params["reward_head"]["out_proj"]["kernel"] = params["reward_head"]["out_proj"]["kernel"] * 50.0
        enc = pair_data.encoder_config(c.data, tok_path, module.trunk.config, "",
                                       spec.MODES["critique" if critique else "scalar"], max_length=MAX_LENGTH)
        inference = RewardModelInference(module, enc, tok, mesh, max_new_tokens=4, batch_size=8,
                                         param_shardings=hf.param_shardings(module, mesh, SAMPLING_RULES))
        rm = LearnedRM(inference, params, critique=critique, failure_value=-7.0)
        too_long = " ".join(["moo"] * MAX_LENGTH)
        scores, valid = rm.score(PROMPTS + ["What is 3 plus 4 ?"], RESPONSES + [too_long])
        users = [critic_content(p, y, None) for p, y in zip(PROMPTS, RESPONSES)]
        critiques = rm.critiques[:len(PROMPTS)] if critique else [None] * len(PROMPTS)
        if critique:
            assert all(isinstance(x, str) and x for x in critiques)
    # Outside the mesh: one unsharded sequence at a time, on host copies of the parameters.
    want = direct_rewards(module, placement.fetch_tree(params), tok, list(zip(users, critiques)))
    assert valid.tolist() == [True] * len(PROMPTS) + [False]
    assert scores[-1] == -7.0  # no room within max_length: failure value, flagged invalid
    np.testing.assert_allclose(scores[:-1], want, rtol=1e-5, atol=1e-6)
    assert np.ptp(want) > 1e-3  # the comparison is not between constants


def test_pair_layout_groups_by_prompt():
    assert pair_layout(["a", "b", "a", "a", "b"], [True] * 5) == [(0, 2), (3, 3), (1, 4)]
    assert pair_layout(["a", "a", "a"], [True, False, True]) == [(0, 2)]


def test_workdir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        workdir_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(ValueError, match="a transformers checkpoint: LearnedRM.load / from_pretrained read it"):
        workdir_config(str(tmp_path))
    saved = json.loads(rm_config().to_json_best_effort())
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert workdir_config(str(tmp_path)) == rm_config()


def test_a_transformers_folder_with_a_reward_head_scores_like_the_rm_it_came_from(tok_path, tmp_path, devices8):
    """What export.py writes for a reward_model run (the trunk's transformers folder + reward_head.safetensors
    and reward_head.json + the tokenizer), read back by LearnedRM.load as the PPO router does."""
    mesh = make_mesh({"data": 2, "fsdp": 4})
    c = rm_config()
    c.reward.mode = "scalar"
    with jax.set_mesh(mesh), nn.logical_axis_rules(TRAIN_RULES):
        module, _ = spec.build_module(c)
        params = hf.init_params(module, jax.random.PRNGKey(5), mesh, TRAIN_RULES)
        params["reward_head"]["out_proj"]["kernel"] = params["reward_head"]["out_proj"]["kernel"] * 50.0
    folder = str(tmp_path / "exported")
    hf.save_pretrained(module.trunk, params["trunk"], folder)
    export._write_head(params["reward_head"], folder, c)
    bare = str(tmp_path / "bare")  # the same trunk without its head
    shutil.copytree(folder, bare)
    for name in (hf.REWARD_HEAD_FILE, hf.REWARD_HEAD_INFO):
        (tmp_path / "bare" / name).unlink()
    export._copy_tokenizer(tok_path, folder)

    loaded = LearnedRM.load(folder, c.model, mesh, batch_size=8, max_length=MAX_LENGTH)
    assert not loaded.critique  # the mode reward_head.json names
    enc = pair_data.encoder_config(c.data, tok_path, module.trunk.config, "", spec.MODES["scalar"],
                                   max_length=MAX_LENGTH)
    inference = RewardModelInference(module, enc, load_tokenizer(tok_path), mesh, max_new_tokens=4, batch_size=8,
                                     param_shardings=hf.param_shardings(module, mesh, SAMPLING_RULES))
    want, _ = LearnedRM(inference, params, critique=False).score(PROMPTS, RESPONSES)
    got, valid = loaded.score(PROMPTS, RESPONSES)
    assert valid.all() and np.ptp(want) > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"bare is a transformers checkpoint without a reward head"):
        pretrained_config(bare, c.model)
