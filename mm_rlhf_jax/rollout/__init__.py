"""Rollout: the jitted KV-cache sampler (sampler.py, strategies.py) and the one host-side generator
(generate.py) that critique generation, GenRM, PPO / Align-Pro rollouts, Pre-PPO, LongPO pair generation
and the generation evals all use."""

from mm_rlhf_jax.rollout.sampler import SampleOutput, sample, left_pad
from mm_rlhf_jax.rollout.generate import Generator, generate_tokens
