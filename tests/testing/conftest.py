"""Shared tiny artefacts for the data tests: the tiny tokenizer and a small synthetic dataset."""

import pytest

from mm_rlhf_jax.testing import synthetic_mmrlhf, tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_tok_dir(tmp_path_factory):
    return tiny_tokenizer.build_tiny_tokenizer(str(tmp_path_factory.mktemp("tiny_tokenizer")))


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """train (40 queries) and heldout (12) splits; about 230 / 70 pairs."""
    out = str(tmp_path_factory.mktemp("synthetic"))
    synthetic_mmrlhf.write_dataset(out, synthetic_mmrlhf.SyntheticConfig(num_train=40, num_heldout=12, seed=3))
    return out
