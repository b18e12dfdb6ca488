"""Hybrid-reward PPO / GRPO / RLOO (ByteDance RLHF): run.py, objectives.py (ppo.advantage as a whole
algorithm: its KL, whitening, loss and critic), step.py (pure phases), trainer.py (the RL host cycle, roles,
the phase), rewards.py (GenRM + router), data.py (prompt pools). Align-Pro reuses trainer."""
