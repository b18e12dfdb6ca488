"""The only algorithm-specific code: one folder per `config.algorithm` (main.ALGORITHMS points here).

  mm_dpo/        run (pairs -> warm start -> cached reference -> MM-DPO -> evals), step
  reward_model/  run (train, RewardBench evals, score), step, inference (critique then score), score
  ppo/           run (hybrid rewards, Pre-PPO, curriculum), objectives (PPO / GRPO / RLOO presets), step,
                 trainer (the RL host cycle), rewards, data
  align_pro/     run, env: PPO on a prompter for a frozen model (imports ppo.trainer)
  longpo/        run (rounds), step, data (tasks, self-generated pairs, reference), evaluator

Shared machinery lives in train/ (whose files name no algorithm).
"""
