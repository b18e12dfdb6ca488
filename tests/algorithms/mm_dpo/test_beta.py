"""Beta modes name the per-pair field they read; a training file without it fails at its first such line."""

import pytest

from mm_rlhf_jax.algorithms.mm_dpo import beta
from mm_rlhf_jax.config_lib import dpo_block
from mm_rlhf_jax.data.errors import DataError, Where
from mm_rlhf_jax.data.records import parse_pair


def test_check_pairs_names_file_line_field_and_the_way_out():
    pairs = [parse_pair({"id": "q", "prompt": "p", "chosen": "a", "rejected": "b", **f}, Where("pairs.jsonl", i + 1))
             for i, f in enumerate([{"delta": 1.0, "ls_factor": 0.2}, {"delta": 0.5}, {}])]
    assert beta.check_pairs("paper", pairs[:2]) == 2
    with pytest.raises(DataError, match=r"pairs\.jsonl:3: field 'delta': .*score\.input option set to this file.*"
                                        r"--config\.dpo\.beta_mode=constant \| ls_factor \| released") as e:
        beta.check_pairs("paper", pairs)
    assert (e.value.file, e.value.line, e.value.field) == ("pairs.jsonl", 3, "delta")
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: field 'ls_factor'"):
        beta.check_pairs("ls_factor", pairs)
    for mode in ("constant", "released"):  # these read no per-pair field
        assert beta.check_pairs(mode, pairs) == 3
    with pytest.raises(KeyError, match="beta mode"):
        beta.check_pairs("papr", pairs)


def test_describe_says_which_beta_ran():
    d = beta.describe(dpo_block(beta_mode="ls_factor", w=0.1))
    assert d["beta_mode"] == "ls_factor" and d["beta_w"] == 0.1
    assert d["beta_path"].startswith("ls_factor: max(beta * (1 + w * ls_factor), 1e-3)")
    assert set(beta.DESCRIPTIONS) == set(beta.BETA_MODES.names())
