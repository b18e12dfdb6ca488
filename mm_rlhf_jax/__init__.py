"""mm_rlhf_jax: JAX/TPU-first alignment of (multimodal) LLMs.

Sub-packages (dependencies point one way: train -> {losses, rollout, rewards,
data, models, sharding} -> kernels):

  models/    Flax linen modules: decoder LM, SigLIP, LLaVA-OneVision, heads, HF import/export.
  kernels/   attention and token_logprobs (Pallas TPU/GPU, blocked XLA, pure-jnp reference).
  sharding/  named mesh and the logical-axis rules tables.
  losses/    pure loss functions (DPO family, MM-DPO, LongPO, reward, PPO).
  rollout/   KV-cache sampler.
  rewards/   verifiers, sandbox, generative RM, hybrid routing, prompt selection.
  data/      record schemas, images/video, tokenization, grain pipelines.
  train/     train state, one pure step per algorithm, the host loop, checkpoints.
  evals/     preference accuracy, RewardBench ACC/ACC+, verifier accuracy.
  testing/   tiny configs, tiny tokenizer and synthetic data shared by tests and quickstart.
"""

__version__ = "0.1.0"
