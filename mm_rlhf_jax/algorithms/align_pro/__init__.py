"""Align-Pro: PPO (algorithms.ppo.trainer) on a prompter for a frozen model: run.py, env.py."""
