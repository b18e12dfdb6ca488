"""reward.head_init: the reward model starts from a checkpoint's MM-RLHF reward head, or a fresh one, never by
accident: `checkpoint` without a head is an error, `auto` loads the head when the checkpoint has one."""

import numpy as np
import pytest
from flax import traverse_util

from mm_rlhf_jax import config_lib
from mm_rlhf_jax.algorithms.reward_model import run as reward_model
from mm_rlhf_jax.algorithms.reward_model.spec import build_module
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.sharding import TRAIN_RULES, make_mesh

from tests.models.llava_next_files import lmms_tensors, reward_head_tensors, write_lmms


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm_init")
    tensors = lmms_tensors(seed=1)
    return {"with_head": write_lmms(str(root / "rm"), {**tensors, **reward_head_tensors(seed=2)}, is_rm=True),
            "without": write_lmms(str(root / "policy"), tensors)}


def _params(folder: str, head_init: str):
    c = config_lib.preset("reward_model", "tiny")
    c.model.init_from, c.reward.head_init = folder, head_init
    module, _ = build_module(c)
    return c, reward_model.initial_params(c, module, make_mesh(c.mesh.to_dict()), TRAIN_RULES)


def _flat(tree):
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def test_auto_and_checkpoint_load_the_released_head(folders):
    expected = _flat(hf.load_reward_head(folders["with_head"]))
    torch_w = reward_head_tensors(seed=2)["rm_head.dense.weight"]
    np.testing.assert_array_equal(expected[("dense", "kernel")], torch_w.T)  # nn.Linear [out, in] -> [in, out]
    for mode in ("auto", "checkpoint"):
        c, params = _params(folders["with_head"], mode)
        got = _flat(params["reward_head"])
        assert got.keys() == expected.keys()
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k])
        assert reward_model.head_source(c) == "checkpoint"


def test_fresh_head_and_errors(folders):
    c, params = _params(folders["with_head"], "fresh")
    assert reward_model.head_source(c) == "fresh"
    np.testing.assert_array_equal(np.asarray(params["reward_head"]["dense"]["bias"]), 0.0)  # zero-initialised
    c, _ = _params(folders["without"], "auto")
    assert reward_model.head_source(c) == "fresh"
    with pytest.raises(ValueError, match=r"head_init='checkpoint' but model.init_from=.* has no reward head"):
        _params(folders["without"], "checkpoint")
