"""Model families. `build_model(model_config, vocab_size)` returns a flax.linen module."""

from llm_jax.models.bigram import Bigram
from llm_jax.models.gpt import GPT

MODELS = {"bigram": Bigram, "gpt": GPT}


def build_model(cfg, vocab_size: int):
  """cfg: the `config.model` ConfigDict (validated). Every model maps tokens (B, T) to logits (B, T, V)."""
  if cfg.name == "bigram":
    return Bigram(vocab_size=vocab_size)
  return GPT(
      vocab_size=vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
      max_len=cfg.max_len or cfg.block_size, dropout=cfg.dropout, norm=cfg.norm, pos=cfg.pos,
      activation=cfg.activation, tie_embeddings=cfg.tie_embeddings, use_bias=cfg.use_bias,
      dtype=cfg.dtype)
