"""Load and save transformers checkpoints (Qwen2 / Llama / Mistral CausalLM, LLaVA-OneVision).

Also loads LLaVA-NeXT original-format (lmms-lab) LLaVA-OneVision checkpoints, recognised by their
config.json (models/llava_next.py), and the MM-RLHF reward head where a checkpoint has one
(`load_reward_head`). Saving always writes the transformers (llava-hf) layout.

    model, params = load_pretrained("/ckpt/llava-onevision-qwen2-7b-ov-hf", jnp.bfloat16, mesh=mesh)
    out = model.apply({"params": params}, input_ids, attention_mask, pixel_values, image_sizes)
    save_pretrained(model, params, "/out/folder")

Loading streams: the parameter tree is built abstractly (`jax.eval_shape`),
every parameter's sharding comes from its logical axis names
(`sharding.logical_shardings`), and `jax.make_array_from_callback` fills each
device's slice straight from memory-mapped safetensors, so the host never holds
the whole checkpoint (nor, with a mesh, even one whole parameter per device).
Everything is validated before any data is read: missing keys, shape
mismatches and unused checkpoint keys raise errors naming the keys.

Saving streams one tensor at a time into a temporary folder that is renamed
into place at the end, so a crash never leaves a half-written checkpoint.
"""

import json
import os
import re
import shutil
import tempfile
import uuid
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mm_rlhf_jax import storage
from mm_rlhf_jax.models import hf_config, hf_safetensors, hf_weights, llava_next
from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.models.decoder import Decoder
from mm_rlhf_jax.models.vlm import LlavaOnevision, LlavaOnevisionConfig
from mm_rlhf_jax.sharding import placement
from mm_rlhf_jax.sharding.rules import TRAIN_RULES, logical_shardings

SUPPORTED_ARCHITECTURES = tuple(hf_config.ARCHITECTURES.names())
DEFAULT_MAX_SHARD_SIZE = "5GB"
# LLaVA checkpoints name weights three ways: transformers 4.x and real checkpoints
# (vision_tower.vision_model.*, language_model.model.*, language_model.lm_head.*),
# transformers 5.x files (vision_tower.* without vision_model) and 5.x module names
# (model.vision_tower.*, model.language_model.*, lm_head.*). All are read; the 4.x
# form, which both generations load, is the one written.
_LLAVA_CANONICAL = (
    (r"^model\.language_model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
    (r"^model\.(vision_tower|multi_modal_projector|image_newline)", r"\1"),
    (r"^vision_tower\.(?!vision_model\.)", "vision_tower.vision_model."),
)
_IGNORED = (r"\.rotary_emb\.inv_freq$",)  # non-persistent buffers some old checkpoints saved


class CheckpointError(ValueError):
    """A checkpoint does not match the model: missing, mis-shaped or unused weights."""


def _key_prefixes(config) -> tuple[tuple[tuple[str, ...], str], ...]:
    if isinstance(config, LlavaOnevisionConfig):
        return (
            (("language_model", "lm_head"), "language_model.lm_head."), (("language_model",), "language_model.model."),
            (("vision_tower",), "vision_tower.vision_model."), (("multi_modal_projector",), "multi_modal_projector."),
            (("image_newline",), "image_newline"),
        )
    return ((("lm_head",), "lm_head."), ((), "model."))


def _text_config(config) -> DecoderConfig:
    return config.text if isinstance(config, LlavaOnevisionConfig) else config


def build_model(config) -> nn.Module:
    """The Flax module for a DecoderConfig or LlavaOnevisionConfig."""
    builders = {DecoderConfig: Decoder, LlavaOnevisionConfig: LlavaOnevision}
    if type(config) not in builders:
        raise TypeError(f"no model for config type {type(config).__name__}; known: {[c.__name__ for c in builders]}")
    return builders[type(config)](config)


def _for_init(model: nn.Module) -> nn.Module:
    """The same parameters with a plain attention kernel: initialisation runs a 1-token forward, which the
    context-parallel kernels (sequence-sharded, lengths multiples of the shard count) cannot take."""
    if hasattr(model, "trunk"):  # ModelWithHeads
        return model.clone(trunk=_for_init(model.trunk))
    cfg = getattr(model, "config", None)
    text = _text_config(cfg) if isinstance(cfg, (DecoderConfig, LlavaOnevisionConfig)) else None
    if text is None or not text.attention_impl.startswith("context_parallel"):
        return model
    text = text.replace(attention_impl="xla")
    return model.clone(config=cfg.replace(text=text) if isinstance(cfg, LlavaOnevisionConfig) else text)


def abstract_params(model: nn.Module):
    """The parameter tree as ShapeDtypeStructs, boxed with logical axis names (no memory used)."""
    # Every array is created inside the traced function, so this works under any mesh (also a TPU
    # topology mesh on a CPU host, where a concrete array cannot be placed).
    init = _for_init(model).init
    return jax.eval_shape(lambda: init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]


def param_shardings(model: nn.Module, mesh: Mesh, rules=TRAIN_RULES):
    """NamedShardings for every parameter (raises ShardingError on an indivisible dimension)."""
    return logical_shardings(abstract_params(model), mesh, rules)


def init_params(model: nn.Module, rng, mesh: Mesh | None = None, rules=TRAIN_RULES):
    """Random parameters (unboxed), created directly in their shardings when a mesh is given."""
    ids = jnp.zeros((1, 1), jnp.int32)
    init = lambda r: nn.meta.unbox(_for_init(model).init(r, ids)["params"])  # noqa: E731
    if mesh is None:
        return jax.jit(init)(rng)
    return jax.jit(init, out_shardings=param_shardings(model, mesh, rules))(rng)


def _flat(tree) -> dict[tuple[str, ...], Any]:
    return {tuple(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _specs(model: nn.Module, abstract) -> list[hf_weights.WeightSpec]:
    config = model.config
    shapes = {path: leaf.shape for path, leaf in _flat(nn.meta.unbox(abstract)).items()}
    conv = None
    if isinstance(config, LlavaOnevisionConfig):
        v = config.vision
        conv = (v.hidden_size, v.num_channels, v.patch_size, v.patch_size)
    return hf_weights.weight_specs(shapes, _key_prefixes(config), _text_config(config).scan_layers, conv)


def _normalized_keys(reader: hf_safetensors.CheckpointReader, config, original: bool = False) -> dict[str, str]:
    """Our (canonical) key name -> the checkpoint's key name.

    original: a LLaVA-NeXT checkpoint (llava_next.canonical_key renames; its reward head is left out,
    for load_reward_head)."""
    out = {}
    for key in reader.keys():
        new = key
        if original:
            new = llava_next.canonical_key(key)
            if new is None:
                continue
        if isinstance(config, LlavaOnevisionConfig):
            for pattern, repl in _LLAVA_CANONICAL:
                new = re.sub(pattern, repl, new)
        if new in out:
            raise CheckpointError(f"checkpoint {reader.folder} holds both {out[new]!r} and {key!r} for weight {new!r}")
        out[new] = key
    return out


def _validate(specs, reader, keymap: dict[str, str], config) -> None:
    missing, mismatched = [], []
    for spec in specs:
        for key in spec.keys:
            if key not in keymap:
                missing.append(f"{key} (param {spec.path})")
            elif reader.shape(keymap[key]) != spec.torch_shape:
                mismatched.append(f"{key}: expected {spec.torch_shape}, found {reader.shape(keymap[key])}")
    if missing:
        raise CheckpointError(f"checkpoint {reader.folder} is missing {len(missing)} weights: {missing[:20]}")
    if mismatched:
        raise CheckpointError(f"checkpoint {reader.folder} has {len(mismatched)} weights of the wrong shape: "
                         f"{mismatched[:20]}")
    used = {k for spec in specs for k in spec.keys}
    ignored = [re.compile(p) for p in _IGNORED]
    unused = [keymap[k] for k in keymap if k not in used and not any(p.search(k) for p in ignored)
              and not (k.endswith("lm_head.weight") and _text_config(config).tie_word_embeddings)]
    if unused:
        raise CheckpointError(f"checkpoint {reader.folder} has {len(unused)} weights the "
                         f"{type(config).__name__} does not use: {sorted(unused)[:20]}")


def _config_from_file(path: str, dtype, param_dtype, overrides: dict):
    hf = json.loads(storage.read_text(path))
    numerics = {"dtype": dtype, "param_dtype": param_dtype or dtype}
    if llava_next.is_original(hf):  # the format is read off config.json, never assumed
        hf = llava_next.config_to_llava_hf(hf, storage.dirname(path))
    return hf_config.architecture_of(hf).from_hf(hf, {**numerics, **overrides})


def is_original_format(path: str) -> bool:
    """Is the checkpoint folder `path` in the LLaVA-NeXT original (lmms-lab) layout? (reads config.json)"""
    return llava_next.is_original(json.loads(storage.read_text(storage.join(path, "config.json"))))


def load_config(path: str, dtype=jnp.float32, *, param_dtype=None, **config_overrides):
    """The DecoderConfig / LlavaOnevisionConfig of a checkpoint folder, local or URL (reads only config.json)."""
    return _config_from_file(storage.join(path, "config.json"), dtype, param_dtype, config_overrides)


_KNOWN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "known")


def known_architectures() -> list[str]:
    """Names of the bundled architectures of known checkpoints (models/known/README.md)."""
    return sorted(f[:-5] for f in os.listdir(_KNOWN) if f.endswith(".json"))


def known_config(name: str, dtype=jnp.float32, *, param_dtype=None, **config_overrides):
    """The config of a bundled known checkpoint (its config.json's architecture fields), as load_config."""
    if name not in known_architectures():
        raise ValueError(f"unknown bundled architecture {name!r}; known: {known_architectures()}")
    return _config_from_file(os.path.join(_KNOWN, name + ".json"), dtype, param_dtype, config_overrides)


def load_pretrained(path: str, dtype=jnp.float32, *, param_dtype=None, mesh: Mesh | None = None, rules=None,
                    **config_overrides):
    """Loads a transformers checkpoint folder into (model, params).

    Args:
      path: folder with config.json and model.safetensors (or sharded *.safetensors
        with model.safetensors.index.json): a transformers checkpoint, or a LLaVA-NeXT
        original-format one (models/llava_next.py; its reward head, if any, is left for
        `load_reward_head`).
      dtype: compute dtype of the model.
      param_dtype: storage dtype of the parameters (default: `dtype`).
      mesh / rules: place every parameter with `logical_shardings(abstract, mesh, rules)`
        (rules default to TRAIN_RULES); without a mesh, parameters go to the default device.
      **config_overrides: config fields (e.g. scan_layers=True, remat="full",
        attention_impl=...; `vision_<field>` for the SigLIP tower of a VLM).
    Returns:
      (model, params): a Decoder or LlavaOnevision module and its unboxed parameter tree.
    """
    path = storage.local_copy(path)  # a URL is copied once into the local cache (safetensors reads local files)
    model = build_model(load_config(path, dtype, param_dtype=param_dtype, **config_overrides))
    config = model.config
    abstract = abstract_params(model)
    specs = _specs(model, abstract)
    reader = hf_safetensors.CheckpointReader(path)
    keymap = _normalized_keys(reader, config, is_original_format(path))
    _validate(specs, reader, keymap, config)

    get = lambda key: reader.get(keymap[key])  # noqa: E731
    shardings = None if mesh is None else _flat(logical_shardings(abstract, mesh, rules or TRAIN_RULES))
    leaves = _flat(nn.meta.unbox(abstract))
    arrays = {}
    for spec in specs:
        path_t = tuple(spec.path.split("/"))
        leaf = leaves[path_t]

        def read(index, spec=spec, leaf=leaf):
            return spec.read(get, index).astype(leaf.dtype)

        arrays[path_t] = placement.put_from_callback(leaf.shape, None if shardings is None else shardings[path_t],
                                                     read)
    params = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(nn.meta.unbox(abstract)), [arrays[p] for p in leaves]
    )
    return model, params


# The reward head of an exported reward model sits next to the trunk's transformers checkpoint
# (export.py), in the MM-RLHF release's tensor names, so either side can read it.
REWARD_HEAD_FILE = "reward_head.safetensors"
REWARD_HEAD_INFO = "reward_head.json"


def load_reward_head(path: str) -> dict | None:
    """The MM-RLHF reward head of a checkpoint folder as RewardHead params (numpy), or None if it has none.

    Read from `rm_head.*` in a LLaVA-NeXT checkpoint (MM-RLHF-Reward-7B) or from reward_head.safetensors
    beside a transformers checkpoint (what export.py writes). Shapes: dense kernel [E, E], bias [E];
    out_proj kernel [E, L], bias [L].
    """
    path = storage.local_copy(path)
    prefix = llava_next.REWARD_HEAD_PREFIX
    if is_original_format(path):
        reader = hf_safetensors.CheckpointReader(path)
        keys = [k for k in reader.keys() if k.startswith(prefix)]
        where = path
    else:
        head_file = os.path.join(path, REWARD_HEAD_FILE)
        if not os.path.exists(head_file):
            return None
        reader = hf_safetensors.CheckpointReader(path, files=[REWARD_HEAD_FILE])
        keys, where = reader.keys(), head_file
    if not keys:
        return None
    stray = [k for k in keys if not k.startswith(prefix)]
    if stray:
        raise CheckpointError(f"{where}: reward head tensors must be named {prefix}*; found {stray}")
    return llava_next.reward_head_to_flax({k[len(prefix):]: np.array(reader.get(k)) for k in keys}, where)


def _parse_size(size) -> int:
    """5GB / 500MB / 10KB (powers of 10), 5GiB / 500MiB (powers of 2), or an int of bytes."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot parse max_shard_size {size!r}; use e.g. 5GB, 500MB, 2GiB or an int")
    unit = m.group(2).upper()
    base = {"K": 1, "M": 2, "G": 3}[unit[0]]
    return int(float(m.group(1)) * ((1024 if "I" in unit else 1000) ** base))


def save_pretrained(model: nn.Module, params, path: str, *, max_shard_size=DEFAULT_MAX_SHARD_SIZE, dtype=None,
                    base_config: dict | None = None) -> None:
    """Writes a transformers checkpoint folder (config.json + safetensors) that transformers loads back.

    Args:
      model / params: from `load_pretrained` or built from a config (scan_layers models are unstacked).
      path: target folder; replaced atomically if it exists.
      max_shard_size: above this many bytes the weights are split into
        model-0000i-of-0000n.safetensors files with model.safetensors.index.json.
      dtype: cast weights to this dtype (default: keep each parameter's dtype).
      base_config: a config.json dict to start from (e.g. the original, to keep
        token ids); the architecture fields are overwritten from `model.config`.
    On multi-host runs every process must call this (arrays are gathered); process 0 writes.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, (DecoderConfig, LlavaOnevisionConfig)):
        raise TypeError(f"save_pretrained writes a Decoder or LlavaOnevision, not {type(model).__name__} "
                        "(for ModelWithHeads save model.trunk with params['trunk'])")
    hf = {**(base_config or {}), **hf_config.architecture_for(config).to_hf(config)}
    abstract = abstract_params(model)
    specs = _specs(model, abstract)
    flat = _flat(nn.meta.unbox(params))
    expected = {tuple(s.path.split("/")) for s in specs}
    if set(flat) != expected:
        raise ValueError(f"params do not match the model: missing {sorted(expected - set(flat))[:10]}, "
                         f"unexpected {sorted(set(flat) - expected)[:10]}")
    if dtype is not None:
        hf["dtype"] = hf["torch_dtype"] = jnp.dtype(dtype).name
        if "text_config" in hf:
            hf["text_config"]["dtype"] = hf["text_config"]["torch_dtype"] = jnp.dtype(dtype).name
    tensors = []
    for spec in specs:
        leaf = flat[tuple(spec.path.split("/"))]
        out_dtype = np.dtype(dtype or leaf.dtype)
        for i, key in enumerate(spec.keys):
            def fetch(leaf=leaf, spec=spec, i=i, out_dtype=out_dtype):
                value = placement.fetch(leaf[i] if spec.stacked else leaf)
                return spec.to_torch(value).astype(out_dtype)

            tensors.append(hf_safetensors.TensorToWrite(key, spec.torch_shape, out_dtype, fetch))

    if jax.process_index() != 0:
        for t in tensors:  # take part in the gathers, write nothing
            t.fetch()
        return
    if storage.is_url(path):  # written locally, then uploaded file by file
        local = tempfile.mkdtemp(prefix="mm_rlhf_jax_save_")
        try:
            _write_folder(os.path.join(local, "model"), hf, tensors, max_shard_size)
            storage.upload_tree(os.path.join(local, "model"), path)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        return
    _write_folder(path, hf, tensors, max_shard_size)


def _write_folder(path: str, hf: dict, tensors, max_shard_size) -> None:
    """config.json + safetensors into a local folder, replacing it atomically."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf, f, indent=2, sort_keys=True)
        hf_safetensors.write_checkpoint(tmp, tensors, _parse_size(max_shard_size))
        old = None
        if os.path.exists(path):
            old = os.path.join(parent, f".{os.path.basename(path)}.old-{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
        os.rename(tmp, path)
        if old:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

