"""Test setup: 8 fake CPU devices (set before jax is imported), offline HF."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent XLA compilation cache per test session: the end-to-end tests run the same
# jitted steps several times (an uninterrupted run, a killed run and its resume), and on a
# 2-core CPU compiling dominates their time. Cached executables are keyed by the full HLO,
# so a hit is the very program a fresh compile would produce.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mm_rlhf_jax_test_xla_cache_")
else:
    _OWN_CACHE = None
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

# grain's multiprocessing workers read absl flags; tests do not go through app.run.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def tiny_tok_dir(tmp_path_factory):
    """The tiny word-level tokenizer (data.synthetic.tiny_tokenizer), built once per session."""
    from mm_rlhf_jax.data.synthetic import tiny_tokenizer

    return tiny_tokenizer.build_tiny_tokenizer(str(tmp_path_factory.mktemp("tiny_tokenizer")))


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """The synthetic MM-RLHF dataset, train (40 queries) and heldout (12) splits; about 230 / 70 pairs."""
    from mm_rlhf_jax.data.synthetic import mmrlhf

    out = str(tmp_path_factory.mktemp("synthetic"))
    mmrlhf.write_dataset(out, mmrlhf.SyntheticConfig(num_train=40, num_heldout=12, seed=3))
    return out


@pytest.fixture(scope="session")
def devices8():
    devs = jax.devices()
    assert len(devs) == 8, f"expected 8 fake CPU devices, got {len(devs)}"
    return devs


@pytest.fixture(scope="session")
def ablation_micro(tmp_path_factory):
    """The cheapest ablation table (align_pro: one cell, both figures in its eval.json) through the real CLI:
    `python -m mm_rlhf_jax.ablate align_pro --seeds 1 --workdir DIR -- <micro settings>`, one `main` child
    process on this process's 8 fake devices. Shared by tests/ablate and the ablations notebook's test.
    -> (DIR, the CLI's CompletedProcess, wall seconds)."""
    import subprocess
    import sys
    import time

    from tests.launch import micro

    root = str(tmp_path_factory.mktemp("ablate"))
    cmd = [sys.executable, "-m", "mm_rlhf_jax.ablate", "align_pro", "--seeds", "1", "--workdir", root, "--",
           *micro.flags("align_pro", root)]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=here, timeout=600)
    return root, proc, time.time() - t0


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        import shutil

        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
