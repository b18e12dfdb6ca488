"""Every (algorithm, preset) builds, keeps its schema's keys, and every key is read somewhere.

The schema of each algorithm is config_lib.schema(algorithm); presets
(configs/<algo>.py:get_config(arg)) may only change values. "Read somewhere"
is checked statically: each key name must appear as an attribute read (or a
quoted key) in the package outside config_lib.py, and every
`config.<block>.<key>` chain in an algorithm's wiring must name a key of that
algorithm's schema. The micro runs under tests/algorithms exercise the reads
themselves (a missing key is an AttributeError there).
"""

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

from mm_rlhf_jax import config_lib, main

PACKAGE = pathlib.Path(config_lib.__file__).parent
CONFIGS = PACKAGE.parent / "configs"
PRESETS = {
    "mm_dpo": ["tiny", "llava_ov_7b"],
    "reward_model": ["tiny", "llava_ov_7b"],
    "ppo": ["tiny", "tiny_hybrid", "tiny_router", "qwen2_7b"],
    "align_pro": ["tiny", "qwen2_0p5b_for_7b"],
    "longpo": ["tiny", "mistral_7b_128k", "qwen25_7b_128k", "tiny,released", "mistral_7b_128k,released",
               "qwen25_7b_128k,released"],
}
CASES = [(a, p) for a, ps in PRESETS.items() for p in ps]


def leaves(c, prefix=""):
    """{dotted key: value} of a ConfigDict (dicts declared as values, e.g. reward.verifiers, are leaves)."""
    out = {}
    for k, v in c.items():
        if hasattr(v, "items") and not isinstance(v, dict) and type(v).__name__.endswith("ConfigDict"):
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_every_algorithm_has_a_schema_a_config_file_and_a_run():
    assert sorted(config_lib.SCHEMAS) == sorted(main.ALGORITHMS) == sorted(PRESETS)
    for algo in PRESETS:
        assert (CONFIGS / f"{algo}.py").exists()
        assert callable(main.get_algorithm(algo))


@pytest.mark.parametrize("algo,arg", CASES)
def test_preset_builds_with_exactly_the_schema_keys(algo, arg):
    c = config_lib.preset(algo, arg)
    assert c.algorithm == algo
    got, want = leaves(c), leaves(config_lib.schema(algo))
    assert sorted(set(got) - set(want)) == [], "a preset added keys the schema does not declare"
    assert sorted(set(want) - set(got)) == [], "a preset dropped schema keys"
    for k, v in got.items():  # a value keeps its declared type (ints may stand for floats)
        d = want[k]
        ok = isinstance(v, type(d)) or (isinstance(d, float) and isinstance(v, int)) or (
            isinstance(d, (tuple, list)) and isinstance(v, (tuple, list)))
        assert ok, f"{algo}:{arg} {k} = {v!r} ({type(v).__name__}), declared {d!r} ({type(d).__name__})"


@pytest.mark.parametrize("algo", sorted(PRESETS))
def test_unknown_preset_is_an_error(algo):
    with pytest.raises(ValueError, match="unknown preset"):
        config_lib.preset(algo, "no_such_preset")


def _read_names() -> set[str]:
    """Attribute names read and string constants used as keys anywhere in the package but config_lib."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        # ablate/ names knobs as override strings ("pre_ppo.fraction"): naming a key there is not reading it
        if path.name == "config_lib.py" or "ablate" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.update(node.value.split("."))
    return names


def test_every_schema_key_is_read_somewhere():
    read = _read_names()
    unread = sorted({f"{algo}: {k}" for algo in PRESETS for k in leaves(config_lib.schema(algo))
                     if k.split(".")[-1] not in read})
    assert unread == [], f"keys nobody reads: {unread}"


@pytest.mark.parametrize("algo", sorted(PRESETS))
def test_wiring_reads_only_declared_keys(algo):
    keys = set(leaves(config_lib.schema(algo)))
    blocks = {k.split(".")[0] for k in keys}
    missing = []
    for path in (PACKAGE / "algorithms" / algo).glob("*.py"):
        for block, key in re.findall(r"\bconfig\.([a-z_]+)\.([a-z_]+)\b", path.read_text()):
            if block in blocks and f"{block}.{key}" not in keys and not any(
                    k.startswith(f"{block}.{key}.") for k in keys) and key not in ("to_dict", "items"):
                missing.append(f"{path.name}: config.{block}.{key}")
            elif block not in blocks and block not in ("algorithm", "seed"):
                missing.append(f"{path.name}: config.{block}")
    assert missing == []


def test_configs_import_no_training_code():
    code = ("import importlib.util, sys\n"
            f"for name in {sorted(PRESETS)!r}:\n"
            f"    spec = importlib.util.spec_from_file_location(name, {str(CONFIGS)!r} + '/' + name + '.py')\n"
            "    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); m.get_config()\n"
            "heavy = [m for m in sys.modules if m == 'jax' or m.startswith(('mm_rlhf_jax.train', "
            "'mm_rlhf_jax.algorithms', 'mm_rlhf_jax.models', 'mm_rlhf_jax.kernels', 'mm_rlhf_jax.rollout'))]\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert out.stdout.strip() == "[]", out.stdout


def test_no_config_dict_is_built_at_run_time():
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if p.name != "config_lib.py" and re.search(r"ConfigDict\(|copy_and_resolve_references",
                                                            p.read_text())]
    assert offenders == []
