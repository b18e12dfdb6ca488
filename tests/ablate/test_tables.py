"""Every registered table builds a valid config per cell at both scales, through the command-line flags too.

Cheap: configs only (ml_collections), no training.
"""

import os

import pytest
from absl import flags
from ml_collections import config_flags

from mm_rlhf_jax import config_lib
from mm_rlhf_jax.ablate import run
from mm_rlhf_jax.ablate.spec import OPS, SCALES, Cell, Table, compare
from mm_rlhf_jax.ablate.tables import TABLES

CASES = [(name, cell.label, scale) for name in TABLES.names() for cell in TABLES.get(name).cells for scale in SCALES]


def _preset(table, scale):
    return config_lib.preset(table.algorithm, table.config_spec(scale).split(":")[1])


def _parsed(table, scale, flag_list):
    """The config `main` would build from these flags (its own config_flags parser, a fresh FlagValues)."""
    argv = ["main", f"--config={os.path.join(run.REPO, table.config_spec(scale))}", *flag_list]
    fv = flags.FlagValues()
    # the override flags are found in sys_argv (default: sys.argv, pytest's own)
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    return fv.config


@pytest.mark.parametrize("name,label,scale", CASES)
def test_cell_builds_a_valid_config(name, label, scale):
    table = TABLES.get(name)
    overrides = table.overrides(table.cell(label), scale)
    c = config_lib.override(_preset(table, scale), overrides)  # unknown keys and wrong types raise
    for key, value in overrides.items():
        node = c
        for part in key.split("."):
            node = node[part]
        assert node == value, (key, node, value)
    # The same values through the strings the runner passes on the command line.
    parsed = _parsed(table, scale, run.override_flags(overrides))
    assert parsed.to_dict() == c.to_dict()
    if c.algorithm == "longpo" and c.longpo.nll_side == "rejected":  # the step refuses it otherwise
        assert c.longpo.nll_tokens == "responses" and c.longpo.max_response_tokens > 0


def test_papers_figures_agree_with_their_stated_directions():
    for name in TABLES.names():
        table = TABLES.get(name)
        for cmp in table.comparisons:
            a, b = table.cell(cmp.a.cell).paper.get(cmp.a.metric), table.cell(cmp.b.cell).paper.get(cmp.b.metric)
            if a and b:
                assert OPS[cmp.op](a.value, b.value), (name, str(cmp), a, b)


def test_required_tables_are_registered():
    assert {"mmrlhf_rm", "mm_dpo_beta", "mm_dpo_wk", "pre_ppo", "pre_ppo_fraction", "longpo",
            "align_pro"} <= set(TABLES.names())


def test_table_rejects_comparisons_outside_its_cells_and_metrics():
    cells = (Cell("a", {}), Cell("b", {}))
    with pytest.raises(ValueError, match="not a \\(cell, metric\\)"):
        Table("t", "t", "mm_dpo", "tiny", "llava_ov_7b", "v5p:2x2x1", ("m",), cells, (compare("a:m", ">", "c:m", "x"),))
    with pytest.raises(ValueError, match="duplicate"):
        Table("t", "t", "mm_dpo", "tiny", "llava_ov_7b", "v5p:2x2x1", ("m",), (Cell("a", {}), Cell("a", {})))


def test_pre_ppo_tiny_pool_has_prompts_the_curriculum_does_not_emphasise():
    # Otherwise "math and code first" is a no-op there and the data_scale cell repeats the pre_ppo cell.
    table = TABLES.get("pre_ppo")
    c = _preset(table, "tiny")
    shares = dict(zip(("math", "code", "general"), c.data.synthetic_mix))
    assert any(share > 0 and domain not in c.curriculum.emphasized for domain, share in shares.items()), shares
