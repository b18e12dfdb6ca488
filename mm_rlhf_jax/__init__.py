"""mm_rlhf_jax: JAX/TPU-first alignment of (multimodal) LLMs.

Sub-packages (dependencies point one way: algorithms -> train -> {losses,
rollout, rewards, data, models, sharding} -> kernels; configs import only
config_lib):

  config_lib.py  every config block, declared once; one schema per algorithm.
  export.py      a run's checkpoint -> a transformers folder (a reward model's head beside it).
  algorithms/    the only algorithm-specific code: mm_dpo, reward_model, ppo, align_pro, longpo.
  train/         shared machinery: state, optimizers, the host loop, checkpoints, the phase runner,
                 the one model loader, the one supervised phase, pair data, reference cache.
  models/        Flax linen modules: decoder LM, SigLIP, LLaVA-OneVision, heads, HF import/export
                 (transformers and LLaVA-NeXT original checkpoints).
  kernels/       attention and token_logprobs (Pallas TPU/GPU, blocked XLA, pure-jnp reference).
  sharding/      named mesh, logical-axis rules tables, placement (the only host <-> device transfers).
  losses/        pure loss functions (DPO family, MM-DPO, LongPO, reward, PPO).
  rollout/       KV-cache sampler and the one host-side generator.
  rewards/       math verifier, code sandbox, generative RM, hybrid routing, Pre-PPO selection.
  data/          record schemas, images/video, tokenization, grain pipelines, curriculum, and
                 synthetic/ (the bundled tiny tasks behind the `tiny` presets).
  evals/         preference accuracy, RewardBench ACC/ACC+, answer checkers.
  testing/       test doubles only.
"""

__version__ = "0.1.0"
