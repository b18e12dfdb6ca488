"""PPO with hybrid rewards (ByteDance Seed, "Exploring Data Scaling Trends and Effects in RLHF").

Tiny (CPU, bundled synthetic math / code tasks, text-only random-init policy,
short SFT warm start, then PPO with the math verifier and the code sandbox):
    python -m mm_rlhf_jax.main --config configs/ppo.py:tiny --workdir runs/ppo_tiny
GRPO or RLOO instead of GAE (no critic; the advantage implies its KL placement and estimator, whitening,
policy loss and loss aggregation: algorithms/ppo/objectives.py):
    ... --config configs/ppo.py:tiny --config.ppo.advantage=grpo      # or rloo
With the "general" domain judged by a tiny GenRM trained on synthetic verdicts:
    python -m mm_rlhf_jax.main --config configs/ppo.py:tiny_hybrid --workdir runs/ppo_hybrid
The full router: half the general prompts come without ground truth ("open": GenRM against a best-of-N
reference of the SFT policy, picked by a tiny learned RM, cached in the workdir); Pre-PPO ranks by the
learned RM; prompts no other source applies to fall through to the learned RM:
    python -m mm_rlhf_jax.main --config configs/ppo.py:tiny_router --workdir runs/ppo_router

Paper scale (local paths; the paper publishes none of its PPO hyperparameters, papers.md §2(b):
the values below are common open-source PPO settings, not the paper's):
    python -m mm_rlhf_jax.main --config configs/ppo.py:qwen2_7b --workdir gs://BUCKET/ppo \\
      --config.model.init_from=/ckpt/qwen2.5-7b-sft --config.genrm.init_from=/ckpt/genrm-7b \\
      --config.data.pool=/data/prompts/original.jsonl --config.data.new_pool=/data/prompts/new.jsonl \\
      --config.data.heldout=/data/prompts/heldout.jsonl
"""

import ml_collections

from mm_rlhf_jax import config_lib
from mm_rlhf_jax.data.synthetic.tiny_tokenizer import TINY_VOCAB_SIZE


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    c = config_lib.schema("ppo")
    if arg in ("tiny", "tiny_hybrid", "tiny_router"):
        c.model.tiny.vocab_size = TINY_VOCAB_SIZE
        # Short SFT on imperfect demonstrations: half of them make a systematic mistake (the first listed
        # non-answer number; a code constant off by one), so the SFT policy is right on ~60% of held-out
        # prompts and RL with the verifiers has something to fix.
        c.warm_start.steps = 200
        c.warm_start.label_noise = 0.5
        c.train.steps = 100
        c.train.log_every = 5
        c.train.eval_every = 25
        c.train.checkpoint_every = 25
        c.optim = config_lib.optim_block(name="adam", lr=3e-4, warmup_ratio=0.0, schedule="constant", b2=0.98,
                                         grad_clip=1.0)  # 1e-3 collapses the policy (entropy up, garbage tokens)
        c.critic_optim = config_lib.optim_block(name="adam", lr=1e-3, warmup_ratio=0.0, schedule="constant", b2=0.98)
        c.ppo.prompts_per_step = 16
        c.ppo.samples_per_prompt = 4
        c.ppo.max_prompt_length = 40
        c.ppo.max_new_tokens = 12
        c.ppo.kl_coef = 0.05
        c.ppo.eval_batch_size = 64
        c.pre_ppo.num_samples = 2
        if arg in ("tiny_hybrid", "tiny_router"):
            c.data.synthetic_mix = (0.4, 0.3, 0.3)
            c.genrm.enabled = True
            c.genrm.template = "tiny"
            c.genrm.max_new_tokens = 6
            c.genrm.max_prompt_length = 64
            c.genrm.batch_size = 64
            # 300 steps give a judge that scores 0.8-0.99 on wrong sounds (it has not learnt to compare with
            # the reference yet); 900 steps: 1.0 on right answers, 0.07 on wrong sounds (all 10 x 10 pairs).
            c.genrm.warm_start = config_lib.sft_block(steps=900, batch_size=32, lr=3e-3, max_length=64,
                                                      num_examples=2048)
        if arg == "tiny_router":
            c.data.synthetic_open = 0.5
            # A scalar RM on (right, wrong) answers to the demonstration prompts, the policy's architecture.
            c.reward.learned_rm.enabled = True
            c.reward.learned_rm.batch_size = 32
            c.reward.learned_rm.warm_start = config_lib.sft_block(steps=300, batch_size=32, lr=1e-3, max_length=128,
                                                                  num_examples=1024)
            c.genrm.best_of_n.enabled = True
            c.genrm.best_of_n.num_candidates = 4
            c.pre_ppo.scorer = "learned_rm"
    elif arg == "qwen2_7b":
        c.model.init_from = "/ckpt/qwen2.5-7b-sft"  # the SFT policy (also the reference and the critic's start)
        c.model.architecture = "Qwen2.5-7B-Instruct"  # for aot.py without the checkpoint
        c.model.dtype = "bfloat16"
        c.model.scan_layers = True
        c.model.remat = "full"
        c.data.synthetic = False
        # Sized for v5p-16 (8 chips; python -m mm_rlhf_jax.aot ... --topology v5p:2x2x2, bench/SCALE.md: the
        # update step 41.7 GiB of 95.7 per chip): fsdp over the 8 chips, each PPO minibatch of 128
        # rollouts in 16 microbatches of one rollout per chip.
        c.mesh = config_lib.mesh_block(fsdp=-1)
        c.train.microbatches = 16
        c.ppo = config_lib.ppo_block(prompts_per_step=512, samples_per_prompt=1, max_prompt_length=1024,
                                     max_new_tokens=1024, epochs=1, num_minibatches=4, kl_coef=0.05,
                                     missing_stop_penalty=1.0, eval_batch_size=256)
        c.optim = config_lib.optim_block(lr=1e-6, warmup_ratio=0.02, schedule="constant")
        c.critic_optim = config_lib.optim_block(lr=5e-6, warmup_ratio=0.02, schedule="constant")
        c.train.steps = 3500  # the paper's best checkpoint of its 6M-prompt run was near 3,500 steps (Fig. 2)
        c.train.eval_every = 100
        c.train.checkpoint_every = 50
        c.genrm = config_lib.genrm_block(enabled=True, init_from="/ckpt/genrm-7b", max_new_tokens=256,
                                         max_prompt_length=4096, batch_size=64)
        c.pre_ppo.num_samples = 4
    else:
        raise ValueError(f"unknown preset {arg!r}; use tiny, tiny_hybrid, tiny_router or qwen2_7b")
    return c
