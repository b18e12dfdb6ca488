"""Align-Pro (AAAI 2025): PPO on a prompter that rewrites prompts for a frozen model.

Tiny (CPU, bundled synthetic math prompts in a paraphrased phrasing; the frozen
model is a tiny model trained only on the canonical phrasing; the prompter is a
tiny model warm-started on imperfect rewrites):
    python -m mm_rlhf_jax.main --config configs/align_pro.py:tiny --workdir runs/align_pro_tiny

Paper scale (the paper names neither its models nor its PPO settings, papers.md §4(b);
a small instruction-tuned prompter for a large frozen model, local paths):
    python -m mm_rlhf_jax.main --config configs/align_pro.py:qwen2_0p5b_for_7b --workdir gs://BUCKET/align_pro \\
      --config.model.init_from=/ckpt/qwen2.5-0.5b-instruct --config.frozen.init_from=/ckpt/qwen2.5-7b-instruct \\
      --config.data.pool=/data/prompts/train.jsonl --config.data.heldout=/data/prompts/heldout.jsonl
"""

import ml_collections

from mm_rlhf_jax import config_lib
from mm_rlhf_jax.data.synthetic.reasoning import PROMPTER_TEMPLATE
from mm_rlhf_jax.data.synthetic.tiny_tokenizer import TINY_VOCAB_SIZE


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    c = config_lib.schema("align_pro")
    if arg == "tiny":
        c.model.tiny.vocab_size = TINY_VOCAB_SIZE
        c.align_pro.prompter_template = PROMPTER_TEMPLATE  # short wording for the tiny word-level tokenizer
        c.train.steps = 60
        c.train.log_every = 5
        c.train.eval_every = 20
        c.train.checkpoint_every = 20
        c.optim = config_lib.optim_block(name="adam", lr=3e-4, warmup_ratio=0.0, schedule="constant", b2=0.98)
        c.critic_optim = config_lib.optim_block(name="adam", lr=1e-3, warmup_ratio=0.0, schedule="constant", b2=0.98)
        c.ppo.prompts_per_step = 16
        c.ppo.samples_per_prompt = 4
        c.ppo.max_prompt_length = 40
        c.ppo.max_new_tokens = 24
        c.ppo.kl_coef = 0.05  # lambda of the Align-Pro objective
    elif arg == "qwen2_0p5b_for_7b":
        c.model.init_from = "/ckpt/qwen2.5-0.5b-instruct"
        c.model.architecture = "Qwen2-0.5B"  # for aot.py without the checkpoint
        c.model.dtype = "bfloat16"
        c.frozen = config_lib.frozen_block(init_from="/ckpt/qwen2.5-7b-instruct", max_prompt_length=1024,
                                           max_new_tokens=512, warm_start=config_lib.sft_block())
        c.warm_start.steps = 0
        c.data.synthetic = False
        c.ppo = config_lib.ppo_block(prompts_per_step=256, samples_per_prompt=2, max_prompt_length=512,
                                     max_new_tokens=256, epochs=1, num_minibatches=4, kl_coef=0.05,
                                     eval_batch_size=128)
        c.optim = config_lib.optim_block(lr=1e-6, warmup_ratio=0.02, schedule="constant")
        c.critic_optim = config_lib.optim_block(lr=5e-6, warmup_ratio=0.02, schedule="constant")
        c.train.steps = 1000
        c.train.eval_every = 100
        c.train.checkpoint_every = 50
    else:
        raise ValueError(f"unknown preset {arg!r}; use tiny or qwen2_0p5b_for_7b")
    return c
