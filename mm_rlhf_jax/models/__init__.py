"""Flax linen models: decoder LM (Qwen2 / Llama / Mistral), SigLIP, LLaVA-OneVision, reward/value heads,
and transformers checkpoint import/export (`hf.load_pretrained`, `hf.save_pretrained`); `llava_next`
maps LLaVA-NeXT original-format (lmms-lab) checkpoints onto the same tree.

Submodules are imported explicitly (`from mm_rlhf_jax.models import hf`); this
package file stays import-light so `models.anyres` serves data pipelines cheaply.
"""
