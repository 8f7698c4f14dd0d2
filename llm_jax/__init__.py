"""llm-jax: language models from first principles in JAX/Flax (bigram, encoder-decoder Transformer, GPT)."""

__version__ = "0.1.0"
