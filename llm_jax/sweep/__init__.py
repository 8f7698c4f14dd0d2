"""Experiments: a grid of config overrides x seeds, run as separate or vectorized training runs,
then aggregated into a table and plots (`llm-jax sweep experiments/<name>`)."""

from llm_jax.sweep.spec import grid  # noqa: F401  (experiment files import it from here)
