"""Decoding: autoregressive generation, jitted, with a KV cache.

lm.py: the language models (sampling: greedy, temperature, top-k, top-p).
"""

from llm_jax.decoding.lm import generate, generate_uncached, init_cache, sample_next  # noqa: F401
