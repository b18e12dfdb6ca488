"""Named trainable-parameter sets select the same parts of a policy and of a reward model's trunk."""

import pytest

from mm_rlhf_jax import config_lib
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.sharding import unbox_values
from mm_rlhf_jax.algorithms.reward_model import run as reward_model
from mm_rlhf_jax.train import model_factory, partition


def paths_by_flag(params, name):
    mask = partition.trainable_mask(params, model_factory.TRAINABLE.get(name))
    import jax

    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    return {partition.param_path(p): bool(v) for p, v in flat}


@pytest.fixture(scope="module")
def policy_and_rm():
    c = config_lib.schema("reward_model")
    policy, _ = model_factory.build(c.model, 0)
    rm, _ = reward_model.build_module(c)
    return unbox_values(hf.abstract_params(policy)), unbox_values(hf.abstract_params(rm))


@pytest.mark.parametrize("name,vision,projector,llm", [("projector_and_llm", False, True, True),
                                                        ("projector", False, True, False),
                                                        ("llm", False, False, True), ("all", True, True, True)])
def test_trainable_sets_on_policy_and_reward_model(policy_and_rm, name, vision, projector, llm):
    for params, prefix in zip(policy_and_rm, ("", "trunk/")):
        flags = paths_by_flag(params, name)
        for path, trainable in flags.items():
            part = path[len(prefix):]
            if path.startswith("reward_head/"):
                assert trainable, path  # a fresh head always trains
            elif part.startswith("vision_tower/"):
                assert trainable == vision, path
            elif part.startswith(("multi_modal_projector/", "image_newline")):
                assert trainable == projector, path
            elif part.startswith("language_model/"):
                assert trainable == llm, path
        assert any(p.startswith(prefix + "vision_tower/") for p in flags)
