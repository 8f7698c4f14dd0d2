"""Reinforcement learning with verifiable rewards: GRPO and its variants (docs/rl.md).

    losses.py   group advantages and the clipped policy-gradient loss (pure functions)
    tasks.py    prompts and their verifiers (arithmetic, the plays), and how to add one
    rollout.py  prompts -> G sampled completions each, with the sampler's log-probabilities
    loop.py     `llm-jax rl`: rollouts -> rewards -> advantages -> rl_epochs updates, resumable
"""
