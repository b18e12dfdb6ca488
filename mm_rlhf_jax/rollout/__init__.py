"""KV-cache sampling shared by critique generation, GenRM, PPO, LongPO data generation and Align-Pro."""

from mm_rlhf_jax.rollout.sampler import SampleOutput, sample, left_pad
