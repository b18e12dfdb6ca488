"""Export a run's trained model as a transformers checkpoint folder.

    python -m mm_rlhf_jax.export --workdir runs/quickstart --out exported/ [--step N]

Reads <workdir>/config.json (the run's own config), rebuilds the model and the train state's
shardings exactly as the run did (algorithms/<algo>/spec.py), restores the latest checkpoint (or
`--step`) from <workdir>/checkpoints and writes:

  mm_dpo        config.json + model.safetensors (models.hf.save_pretrained: transformers loads it)
  reward_model  the trunk as above, plus the reward head: reward_head.safetensors in the MM-RLHF
                release's names (rm_head.dense.*, rm_head.out_proj.*; torch Linear layout) and
                reward_head.json saying how to apply it (`HEAD_RECIPE`)

and copies the run's tokenizer files (and an image processor config) when it has them. The starting
checkpoint's config.json seeds the written one (token ids and other non-architecture fields) when it
is a transformers one. The whole train state is restored (the optimizer state too), so the host needs
memory for it; every file goes through the path layer (DIR and --out may be gs:// URLs).
"""

import json

import flax.linen as nn
import jax
from absl import app, flags

from mm_rlhf_jax import config_lib, storage
from mm_rlhf_jax.models import hf, llava_next
from mm_rlhf_jax.sharding import TRAIN_RULES, make_mesh, placement
from mm_rlhf_jax.train import checkpoint

EXPORTABLE = ("mm_dpo", "reward_model")
# Files of a tokenizer / processor folder worth carrying next to the weights.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json", "tokenizer.model",
                   "preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json")
HEAD_RECIPE = {
    "format": "mm_rlhf_reward_head",
    "source": "MM-RLHF RewardHead (llava/model/language_model/llava_qwen.py), rm_head of LlavaQwenForCausalLM",
    "apply": "reward = out_proj.weight @ tanh(dense.weight @ h + dense.bias) + out_proj.bias",
    "h": "the language model's last hidden state, after its final norm (transformers: output_hidden_states=True, "
         "hidden_states[-1])",
    "position": "each sequence's last non-pad token (the highest index with attention_mask == 1)",
    "dropout": "applied before dense and before out_proj in training only; none at inference",
}


def _module_and_abstract_state(config, mesh):
    """(module, abstract TrainState with the run's shardings) as the algorithm's run builds them."""
    if config.algorithm == "mm_dpo":
        from mm_rlhf_jax.algorithms.mm_dpo import spec
        from mm_rlhf_jax.train import model_factory

        module, _ = model_factory.build(config.model, config.seed)
    else:
        from mm_rlhf_jax.algorithms.reward_model import spec

        module, _ = spec.build_module(config)
    return module, spec.train_step(config, module, mesh, TRAIN_RULES).abstract_state


def restore_params(workdir: str, abstract_state, step: int | None = None):
    """The parameters of checkpoint `step` (default: the latest) under <workdir>/checkpoints."""
    ckpt = checkpoint.Checkpointer(storage.join(workdir, "checkpoints"), max_to_keep=1)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{workdir}: no checkpoint under checkpoints/ (has the run saved one?)")
        state, _ = ckpt.restore(step, abstract_state)
    finally:
        ckpt.close()
    return state.params, step


def _base_config(init_from: str) -> dict | None:
    """The starting checkpoint's transformers config.json (None for random init or a LLaVA-NeXT original)."""
    if not init_from or hf.is_original_format(init_from):
        return None
    return json.loads(storage.read_text(storage.join(init_from, "config.json")))


def _tokenizer_folder(config, workdir: str) -> str | None:
    """Where the run's tokenizer came from (data.tokenizer.resolve_tokenizer's order), if it exists."""
    for folder in (config.data.tokenizer, config.model.init_from, storage.join(workdir, "tokenizer")):
        if folder and storage.exists(storage.join(folder, "tokenizer_config.json")):
            return folder
    return None


def _copy_tokenizer(folder: str | None, out: str) -> None:
    for name in TOKENIZER_FILES if folder else ():
        src = storage.join(folder, name)
        if storage.exists(src):
            storage.write_atomic(storage.join(out, name), storage.read_bytes(src))


def _write_head(head_params, out: str, config) -> None:
    """reward_head.safetensors (rm_head.* names, torch layout) + reward_head.json (how to apply it)."""
    from safetensors.numpy import save

    host = jax.tree.map(placement.fetch, nn.meta.unbox(head_params))  # every process takes part in the gathers
    tensors = {llava_next.REWARD_HEAD_PREFIX + k: v for k, v in llava_next.reward_head_to_torch(host).items()}
    if jax.process_index() != 0:
        return
    info = {**HEAD_RECIPE, "file": hf.REWARD_HEAD_FILE, "mode": config.reward.mode,
            "hidden_size": int(tensors["rm_head.dense.weight"].shape[1]),
            "num_labels": int(tensors["rm_head.out_proj.weight"].shape[0]),
            "tensors": {k: list(v.shape) for k, v in tensors.items()}}
    storage.write_atomic(storage.join(out, hf.REWARD_HEAD_FILE), save(tensors, metadata={"format": "pt"}))
    storage.write_atomic(storage.join(out, hf.REWARD_HEAD_INFO), json.dumps(info, indent=2, sort_keys=True))


def export(workdir: str, out: str, *, step: int | None = None) -> dict:
    """Writes the transformers folder `out` from run `workdir`; returns a summary (step, files)."""
    config = config_lib.from_saved(json.loads(storage.read_text(storage.join(workdir, "config.json"))))
    if config.algorithm not in EXPORTABLE:
        raise ValueError(f"{workdir}: export supports {EXPORTABLE} runs, not {config.algorithm!r}")
    mesh = make_mesh(config.mesh.to_dict())
    module, abstract_state = _module_and_abstract_state(config, mesh)
    params, step = restore_params(workdir, abstract_state, step)
    # Outside any mesh context: save_pretrained traces the model abstractly, and activation constraints
    # under a set mesh would demand concrete shardings there.
    trunk, trunk_params = (module.trunk, params["trunk"]) if config.algorithm == "reward_model" else (module, params)
    hf.save_pretrained(trunk, trunk_params, out, base_config=_base_config(config.model.init_from))
    if config.algorithm == "reward_model":
        _write_head(params["reward_head"], out, config)
    if jax.process_index() == 0:
        _copy_tokenizer(_tokenizer_folder(config, workdir), out)
    return {"algorithm": config.algorithm, "step": int(step), "out": out, "files": sorted(storage.listdir(out))}


def main(argv):
    del argv
    print(json.dumps(export(flags.FLAGS.workdir, flags.FLAGS.out, step=flags.FLAGS.step)), flush=True)


if __name__ == "__main__":
    # Flags are defined only when run as a command: importing this module (tests, notebooks) next to
    # main.py, which defines --workdir too, must not clash.
    flags.DEFINE_string("workdir", None, "the run's folder (config.json + checkpoints/)")
    flags.DEFINE_string("out", None, "the transformers folder to write (replaced if it exists)")
    flags.DEFINE_integer("step", None, "checkpoint step to export (default: the latest)")
    flags.mark_flags_as_required(["workdir", "out"])
    app.run(main)
