"""The KL ablation of GRPO on arithmetic, as a sweep: `llm-jax sweep experiments/rl/ablation`.

The base config names an rl.task, so each run is an `llm-jax rl` run of the recipe
(configs/rl_arithmetic.py: 300 supervised steps on the answer format, then 60 GRPO steps of 8
prompts x 8 samples): rl.kl_coef=0 (no KL, as DAPO and Dr. GRPO) against 0.05 (GRPO's k3 penalty
to the policy RL starts from, the model after the supervised steps), 3 seeds each. The report
(results.md, reward.png, final_reward.png) gives each point's mean reward over its last 10 steps;
experiments/rl/README.md discusses it.
"""

from llm_jax.sweep import grid


def get_experiment():
  return {
      "base": "../../../configs/rl_arithmetic.py",
      "points": grid({"rl.kl_coef": [0.0, 0.05]}),
      "seeds": [0, 1, 2],
  }
