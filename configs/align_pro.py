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

from mm_rlhf_jax.data.synthetic.reasoning import PROMPTER_TEMPLATE
from mm_rlhf_jax.data.synthetic.tiny_tokenizer import TINY_VOCAB_SIZE
from mm_rlhf_jax.train import config_lib, model_factory, rl_common, sft

PAPER_PROMPTER_TEMPLATE = (
    "Rewrite the following request so that an assistant answers it as helpfully, correctly and safely as "
    "possible. Keep its meaning; output only the rewritten request.\n\nRequest: {prompt}")


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    c = config_lib.base("align_pro")
    c.model = model_factory.model_block(multimodal=False, vocab_size=TINY_VOCAB_SIZE)  # the prompter rho
    c.data = ml_collections.ConfigDict(dict(
        pool="",  # training prompts (prompt-pool jsonl with ground_truth / unit_tests / reference)
        heldout="",
        tokenizer="",  # the prompter's ("" = model.init_from, or the tiny tokenizer)
        synthetic=True,
        synthetic_seed=0,
        synthetic_math_tasks=("largest", "smallest"),
        synthetic_sft=896,  # prompts of the tiny frozen model's (canonical) and the prompter's (rewrite) demos
        synthetic_train=256,
        synthetic_heldout=128,
        # Prompter demos: canonical rewrite / unchanged copy / harmful rewrite (the rest). Copy is the
        # most common, so the greedy warm-started prompter mostly copies (reward = the no-prompter
        # baseline) and RL has to find the canonical rewrite among its samples.
        rewrite_p_canonical=0.25,
        rewrite_p_copy=0.6,
        seed=0,
    ))
    c.align_pro = ml_collections.ConfigDict(dict(
        prompter_template=PROMPTER_TEMPLATE,  # the prompter's user turn; {prompt} = the user prompt x
        frozen_template="{prompt}",  # the frozen model's user turn; {prompt} = the rewrite x'
        overflow_reward=0.0,  # reward of a rewrite longer than frozen.max_prompt_length
    ))
    c.frozen = ml_collections.ConfigDict(dict(
        init_from="",  # local checkpoint of the frozen model ("" = the tiny one trained on canonical prompts)
        tokenizer="",
        max_prompt_length=48,
        max_new_tokens=8,
        sampling="greedy",  # greedy: R(x, x') is the reward of the frozen model's mode; temperature: a sample
        temperature=1.0,
        batch_size=64,
        warm_start=sft.sft_block(steps=300, batch_size=32, lr=3e-3, max_length=40),  # tiny frozen model only
    ))
    c.warm_start = sft.sft_block(steps=150, batch_size=32, lr=3e-3, max_length=56)  # tiny prompter only
    c.ppo = rl_common.ppo_block()
    c.critic = rl_common.critic_block()
    c.critic_optim = config_lib.optim_block()
    c.reward = rl_common.reward_block()
    c.genrm = rl_common.genrm_block()
    c.eval = ml_collections.ConfigDict(dict(num_prompts=0))
    if arg == "tiny":
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
        c.model.dtype = "bfloat16"
        c.frozen = ml_collections.ConfigDict(dict(
            init_from="/ckpt/qwen2.5-7b-instruct", tokenizer="", max_prompt_length=1024, max_new_tokens=512,
            sampling="greedy", temperature=1.0, batch_size=64, warm_start=sft.sft_block()))
        c.warm_start.steps = 0
        c.data.synthetic = False
        c.align_pro.prompter_template = PAPER_PROMPTER_TEMPLATE
        c.reward.order = "verifier,genrm_ground_truth,genrm_reference"
        c.ppo = rl_common.ppo_block(prompts_per_step=256, samples_per_prompt=2, max_prompt_length=512,
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
