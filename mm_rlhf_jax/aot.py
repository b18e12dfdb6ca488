"""Ahead-of-time compiles of an algorithm's steps for a TPU topology, on any host (libtpu on a CPU VM).

    python -m mm_rlhf_jax.aot --config configs/mm_dpo.py:llava_ov_7b --topology v5p:2x2x1 [--step train]
    python -m mm_rlhf_jax.aot --config configs/longpo.py:mistral_7b_128k --topology v5p:2x2x4 \\
        --config.train.microbatches=8

Answers "will it fit?" before a TPU is spent: the step is built exactly as the
algorithm's run() builds it (algorithms/<algo>/spec.py: same shardings,
microbatching, remat, kernels), from the config alone (the checkpoint's
config.json when it is on this machine, else the bundled architecture
`model.architecture`, models/known/), and compiled by XLA for the topology's
chips, Pallas kernels through Mosaic (the kernels pick their TPU variants from
the topology mesh). Prints one JSON object: per-chip argument / output /
temporary memory against the chip's HBM, whether it fits, XLA's flops and
estimated step time, the MFU that estimate implies, and tokens per step.

    compiled = compile_train_step(config, "v5p:2x2x1")     # jax.stages.Compiled
    compiled.memory_analysis(), compiled.cost_analysis()

Needs libtpu (`pip install -e ".[tpu]"`); topology names: v4:2x2x1, v5e:2x2,
v5p:2x2x1 (v5p-8), v5p:2x2x4 (v5p-32), v6e:2x4, ... (jax.experimental.topologies).
"""

import dataclasses
import importlib
import json
import os
import sys
import time

import flax.linen as nn
import jax
import numpy as np

from mm_rlhf_jax import config_lib
from mm_rlhf_jax.sharding import TRAIN_RULES, make_mesh

# algorithm -> module with compile_inputs(config, mesh, rules, step) -> (jitted fn, abstract args).
SPECS = {"mm_dpo": "mm_rlhf_jax.algorithms.mm_dpo.spec", "reward_model": "mm_rlhf_jax.algorithms.reward_model.spec",
         "longpo": "mm_rlhf_jax.algorithms.longpo.spec", "ppo": "mm_rlhf_jax.algorithms.ppo.spec",
         "align_pro": "mm_rlhf_jax.algorithms.ppo.spec"}


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm_gib: float  # per chip
    bf16_tflops: float  # peak dense bf16 per chip


# By the TPU generation in jax's device_kind; public spec-sheet figures.
CHIPS = {"v4": Chip(32.0, 275.0), "v5e": Chip(16.0, 197.0), "v5p": Chip(95.74, 459.0), "v6e": Chip(31.25, 918.0)}


def generation(device_kind: str) -> str:
    kind = device_kind.lower().replace(" ", "")
    for key, names in (("v5e", ("v5lite", "v5e")), ("v6e", ("v6lite", "v6e")), ("v5p", ("v5p", "v5")),
                       ("v4", ("v4",))):
        if any(n in kind for n in names):
            return key
    raise ValueError(f"unknown TPU device kind {device_kind!r}")


def topology_devices(topology: str):
    """The (not addressable) devices of a named TPU topology, e.g. "v5p:2x2x1"."""
    # A compile-only use of libtpu: several such processes may share a host (libtpu otherwise takes a
    # host-wide lock meant for processes that drive real chips).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    # v4 topologies otherwise describe each chip's two TensorCores as two devices, which jax's mesh
    # creation refuses ("requires one device per chip"); jax runs v4 (like v5p) in megacore mode, one
    # device per chip, and so does MaxText's AOT path. v5p already describes one device per chip.
    kwargs = {"chip_config_name": "megacore"} if topology.startswith("v4") else {}
    try:
        return topologies.get_topology_desc(platform="tpu", topology_name=topology, **kwargs).devices
    except Exception as e:  # libtpu missing, or an unknown name
        raise RuntimeError(f"cannot describe TPU topology {topology!r} ({e}); install libtpu with "
                           "pip install -e \".[tpu]\" and use a name like v5p:2x2x1 or v5e:2x2") from e


def compile_step(config, topology: str, step: str = "train"):
    """(jax.stages.Compiled, abstract args) of `step` of config.algorithm for the topology's chips."""
    if config.algorithm not in SPECS:
        raise KeyError(f"no ahead-of-time spec for algorithm {config.algorithm!r}; known: {sorted(SPECS)}")
    spec = importlib.import_module(SPECS[config.algorithm])
    mesh = make_mesh(config.mesh.to_dict(), devices=topology_devices(topology))
    with jax.set_mesh(mesh), nn.logical_axis_rules(TRAIN_RULES):
        fn, args = spec.compile_inputs(config, mesh, TRAIN_RULES, step)
        return fn.lower(*args).compile(), args


def compile_train_step(config, topology: str):
    """The algorithm's main train step exactly as its run() jits it, compiled for a TPU topology."""
    return compile_step(config, topology, "train")[0]


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _oom_bytes(message: str) -> tuple[str, float] | None:
    """(what, bytes) an out-of-memory compile error says it needed: ("temporaries", ...) when the program's
    temporaries alone exceed HBM ("... temporaries (2.23T) exceeds ..."), ("total", ...) when the final
    allocation misses by a little ("Used 30.83G of 30.75G hbm")."""
    import re

    m = re.search(r"RESOURCE_EXHAUSTED.*?\(([\d.]+)([KMGT])\) exceeds", message)
    if m:
        return "temporaries", float(m.group(1)) * _UNITS[m.group(2)]
    m = re.search(r"Used ([\d.]+)([KMGT]) of [\d.]+[KMGT] hbm", message)
    return ("total", float(m.group(1)) * _UNITS[m.group(2)]) if m else None


def _tokens(args) -> int:
    """Tokens of one step: the input_ids of the batch argument (the last argument holding them)."""
    for arg in reversed(args):
        if isinstance(arg, dict):
            for key in ("input_ids", "ref_input_ids", "prompt_ids"):
                if key in arg:
                    return int(np.prod(arg[key].shape))
    return 0


def _param_count(args) -> int:
    state = args[0]
    params = getattr(state, "params", getattr(getattr(state, "actor", None), "params", state))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _cost(compiled) -> tuple[float, float]:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)), float(cost.get("optimal_seconds", 0.0))


def cost_estimate(config, topology: str, step: str) -> dict:
    """XLA's flops and step time of the whole step, from two small compiles.

    XLA's cost analysis counts a loop body once, so a step with microbatches
    (lax.scan) and scanned layers is undercounted by their trip counts. Probes
    of one microbatch with 1 and 2 decoder layers give the cost of the rest
    (vision tower, LM head, optimizer) and of one layer; the step is
    microbatches x (rest + layers x layer).
    """
    spec = importlib.import_module(SPECS[config.algorithm])
    layers = _decoder_layers(config)
    base = {**spec.one_microbatch(config, step), "model.scan_layers": False}
    (f1, t1), (f2, t2) = (_cost(compile_step(config_lib.override(config, {**base, "model.num_layers": n}),
                                             topology, step)[0]) for n in (1, 2))
    k = config.train.microbatches if step == "train" else 1
    return {"flops_per_chip": k * (f1 + (layers - 1) * (f2 - f1)),
            "estimated_step_s": k * (t1 + (layers - 1) * (t2 - t1)), "decoder_layers": layers}


def _decoder_layers(config) -> int:
    from mm_rlhf_jax.train import model_factory

    arch = model_factory.architecture(config.model, allow_known=True)
    return getattr(arch, "text", arch).num_layers


def report(config, topology: str, step: str = "train", *, estimate: bool = True) -> dict:
    """The JSON report of the module docstring (estimate=False: XLA's raw cost numbers, loops counted once)."""
    devices = topology_devices(topology)
    gen = generation(devices[0].device_kind)
    chip = CHIPS[gen]
    t0 = time.time()
    gib = lambda b: round(float(b) / 2**30, 3)
    try:
        compiled, args = compile_step(config, topology, step)
    except Exception as e:  # XLA refuses a program that cannot fit: report how much it asked for
        oom = _oom_bytes(str(e))
        if oom is None:
            raise
        what, needed = oom
        return {"config": config.algorithm, "topology": topology, "step": step, "chips": len(devices),
                "chip": devices[0].device_kind, "hbm_per_chip_gib": chip.hbm_gib, "fits": False,
                "per_chip_gib": {f"{what}_needed": gib(needed)}, "error": str(e).splitlines()[0][:300],
                "compile_s": round(time.time() - t0, 1)}
    compile_s = time.time() - t0
    mem = compiled.memory_analysis()
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
             + mem.temp_size_in_bytes)
    flops, seconds = _cost(compiled)
    # Layer probes need a checkpoint architecture (model.num_layers); tiny models report XLA's raw numbers.
    probed = estimate and bool(config.model.init_from or config.model.architecture)
    if probed:
        est = cost_estimate(config, topology, step)
        flops, seconds = est["flops_per_chip"], est["estimated_step_s"]
    spec = importlib.import_module(SPECS[config.algorithm])
    # A spec whose step reads more rows than it trains (PPO: one minibatch of the experience) counts its own.
    tokens = spec.step_tokens(config, step) if hasattr(spec, "step_tokens") else _tokens(args)
    n_params = _param_count(args)
    # 6 N per trained token (forward + backward); the reference pass is 2 N per token.
    model_flops = (6 if step == "train" else 2) * n_params * tokens
    out = {
        "config": f"{config.algorithm}", "topology": topology, "step": step, "chips": len(devices),
        "chip": devices[0].device_kind, "hbm_per_chip_gib": chip.hbm_gib,
        "per_chip_gib": {"arguments": gib(mem.argument_size_in_bytes), "outputs": gib(mem.output_size_in_bytes),
                         "aliased": gib(mem.alias_size_in_bytes), "temporaries": gib(mem.temp_size_in_bytes),
                         "total": gib(total)},
        "fits": bool(total <= chip.hbm_gib * 2**30),
        "flops_per_chip": flops, "estimated_step_s": seconds, "tokens_per_step": tokens, "parameters": n_params,
        "model_flops_per_step": float(model_flops),
        "mfu_at_estimated_time": (round(model_flops / (seconds * len(devices) * chip.bf16_tflops * 1e12), 4)
                                  if seconds else None),
        "cost_from": "1- and 2-layer probes x layers x microbatches" if probed else "XLA (loop bodies counted once)",
        "compile_s": round(compile_s, 1),
    }
    return out


def main(argv):
    from absl import flags

    f = flags.FLAGS
    print(json.dumps(report(f.config, f.topology, f.step, estimate=f.estimate), indent=1))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "configs/<algo>.py:<preset>", lock_config=True)
    flags.DEFINE_string("topology", None, "TPU topology name, e.g. v5p:2x2x1")
    flags.DEFINE_enum("step", "train", ["train", "reference", "rollout"], "which step to compile")
    flags.DEFINE_bool("estimate", True, "step time and flops from 1- and 2-layer probes (XLA counts loops once)")
    flags.mark_flags_as_required(["config", "topology"])
    app.run(main, argv=sys.argv)
